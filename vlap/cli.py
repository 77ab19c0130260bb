"""`vlap`: caption, answer, retrieve, read images as words, visual arithmetic and evaluate, from the command line.

MODEL is a saved VLAP folder or a Hub id, loaded with the installed VLAP code (a folder's .py files are never run).
--batch-size and --json. Bad input ends with a one-line error on stderr and exit status 1.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from vlap.inputs import (
    InputError,
    add_serve_arguments,
    comma_separated,
    expand_images,
    fraction,
    output_file,
    parse_terms,
    positive_int,
    read_lines,
)

# How retrieve and classify score an image against a text (vlap.tasks.SCORE_METHODS, spelled out: --help stays
# torch-free).
SCORE_METHOD = {
    "choices": ("code", "feature"),
    "default": "code",
    "help": "code: VLAP's word space, as the zero-shot pipeline (default); feature: CLIP-style cosine of features",
}


def open_images(paths: list[Path], keep_going: bool = False) -> tuple[list[Path], list, list[str]]:
    """Decode every image before any model work (the processor's `open_image`: one conversion for every route).

    Returns (the readable paths, their images, one message per unreadable file). A bad file is an error at once,
    or with `keep_going` (folders and globs: the good files still get their answer) is reported after the results;
    no readable image at all is an error.
    """
    from modeling_vlap.processing_vlap import open_image

    kept, images, failures = [], [], []
    for path in paths:
        try:
            images.append(open_image(path))
            kept.append(path)
        except ValueError as error:
            if not keep_going:
                raise InputError(str(error)) from None
            failures.append(str(error))
    if not images:
        raise InputError("; ".join(failures))
    return kept, images, failures


def report_failures(failures: list[str], total: int) -> None:
    """After the readable images' results: each unreadable file, and exit status 1."""
    if failures:
        raise InputError(f"{len(failures)} of {total} images could not be read: " + "; ".join(failures))


def one_image(spec: str) -> Path:
    paths = expand_images([spec])
    if len(paths) != 1:
        raise InputError(f"{spec}: give one image ({len(paths)} found)")
    return paths[0]


def emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# ---------------------------------------------------------------------------------------------------- commands
def cmd_caption(args) -> None:
    from vlap.tasks import caption, load

    found = expand_images(args.images)
    paths, images, failures = open_images(found, keep_going=True)
    model, processor = load(args.model, device=args.device)
    captions = caption(
        model,
        processor,
        images,
        prompt=args.prompt,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=True,
    )
    data = [{"image": str(path), "caption": text} for path, text in zip(paths, captions)]
    emit(args, data, "\n".join(f"{row['image']}: {row['caption']}" for row in data))
    report_failures(failures, len(found))


def cmd_vqa(args) -> None:
    from vlap.tasks import VQA_TEMPLATE, answer, load

    found = expand_images([args.image])
    paths, images, failures = open_images(found, keep_going=True)
    model, processor = load(args.model, device=args.device)
    answers = answer(
        model,
        processor,
        images,
        [args.question] * len(images),
        template=args.template or VQA_TEMPLATE,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=True,
    )
    data = [{"image": str(path), "question": args.question, "answer": text} for path, text in zip(paths, answers)]
    emit(args, data, "\n".join(f"{row['image']}: {row['answer']}" for row in data))
    report_failures(failures, len(found))


def cmd_retrieve(args) -> None:
    from vlap.tasks import image_features, image_text_scores, load, rank

    found = expand_images([args.images])
    candidates = read_lines(args.texts) if args.texts else []
    queries = candidates + list(args.query or [])
    if not queries:
        raise InputError("give texts to rank: --texts FILE and/or --query TEXT")
    paths, images, failures = open_images(found, keep_going=True)
    model, processor = load(args.model, device=args.device)
    image_vectors = image_features(model, processor, images, batch_size=args.batch_size)
    # [images, texts]: candidates first, then queries
    similarity = image_text_scores(model, processor, image_vectors, queries, args.method, args.batch_size)
    data = {"image_to_text": [], "text_to_image": []}
    if candidates:
        for path, ranked in zip(paths, rank(similarity[:, : len(candidates)], args.top_k)):
            data["image_to_text"].append(
                {"image": str(path), "texts": [{"text": candidates[i], "score": s} for i, s in ranked]}
            )
    for text, ranked in zip(queries, rank(similarity.T, args.top_k)):
        data["text_to_image"].append(
            {"text": text, "images": [{"image": str(paths[i]), "score": s} for i, s in ranked]}
        )
    lines = []
    for row in data["image_to_text"]:
        lines += [f"{row['image']}:"] + [f"  {hit['score']:+.3f}  {hit['text']}" for hit in row["texts"]]
    for row in data["text_to_image"]:
        lines += [f"{row['text']!r}:"] + [f"  {hit['score']:+.3f}  {hit['image']}" for hit in row["images"]]
    emit(args, data, "\n".join(lines))
    report_failures(failures, len(found))


def cmd_classify(args) -> None:
    from vlap.tasks import classify, load

    labels = comma_separated(args.labels)
    found = expand_images(args.images)
    paths, images, failures = open_images(found, keep_going=True)
    model, processor = load(args.model, device=args.device)
    ranked = classify(
        model, processor, images, labels, template=args.template, method=args.method, batch_size=args.batch_size
    )
    data = [
        {"image": str(path), "labels": [{"label": label, "score": score} for label, score in scores]}
        for path, scores in zip(paths, ranked)
    ]
    emit(
        args,
        data,
        "\n".join(
            f"{row['image']}: " + ", ".join(f"{hit['label']} {hit['score']:.3f}" for hit in row["labels"][: args.top_k])
            for row in data
        ),
    )
    report_failures(failures, len(found))


def cmd_words(args) -> None:
    from vlap.tasks import load, plot_words, read_words, token_words

    path = one_image(args.image)
    plot = output_file(args.plot, [args.image, args.model], args.overwrite, "--plot") if args.plot else None
    _, images, _ = open_images([path])
    model, processor = load(args.model, device=args.device)
    words = read_words(model, processor, images, top_k=args.top_k)[0]
    if plot is not None:
        try:
            plot_words(words, path.name, plot)
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install matplotlib)") from None
    data = {"image": str(path), "words": [{"word": word, "weight": weight} for word, weight in words]}
    lines = [f"{weight:.4f}  {word}" for word, weight in words]
    if args.per_token:
        said = token_words(model, processor, images, top_k=args.top_k)[0]
        data["visual_tokens"] = [[{"word": word, "coefficient": c} for word, c in token] for token in said]
        lines += ["per visual token:"] + [
            f"  {index:3d}  " + ", ".join(f"{word.strip() or repr(word)} {c:.3f}" for word, c in token)
            for index, token in enumerate(said)
        ]
    emit(args, data, "\n".join(lines))


def cmd_arithmetic(args) -> None:
    from vlap.tasks import arithmetic, load

    terms = parse_terms(args.terms)
    path = one_image(args.image)
    candidate_paths = expand_images([args.images]) if args.images else []
    _, (image, *candidates), _ = open_images([path] + candidate_paths)
    model, processor = load(args.model, device=args.device)
    result = arithmetic(model, processor, image, terms, top_k=args.top_k, images=candidates)
    expression = " ".join([str(path)] + [f"{sign} {word}" for sign, word in terms])
    data = {"expression": expression, "words": [{"word": w, "score": s} for w, s in result["words"]]}
    if "images" in result:
        data["images"] = [{"image": str(candidate_paths[i]), "score": s} for i, s in result["images"]]
    lines = [expression] + [f"  {row['score']:+.3f}  {row['word']}" for row in data["words"]]
    if "images" in data:
        lines += ["nearest images:"] + [f"  {row['score']:+.3f}  {row['image']}" for row in data["images"]]
    emit(args, data, "\n".join(lines))


def cmd_eval(args) -> None:
    from vlap.evaluation import evaluate_task, load_eval_data, markdown_table, plot_confusion

    classification = args.task == "classification"
    if not classification and (args.labels or args.held_out or args.plot):
        raise InputError("--labels, --held-out and --plot are for --task classification")
    labels = comma_separated(args.labels) if args.labels else None
    inputs = [args.data, args.model]
    out = output_file(args.out, inputs, args.overwrite) if args.out else None
    if out is not None and out.suffix == ".md":
        raise InputError(f"--out {args.out}: --out names the JSON report; its table is written beside it as FILE.md")
    table_path = output_file(str(out.with_suffix(".md")), inputs, args.overwrite) if out is not None else None
    written = [str(path) for path in (out, table_path) if path is not None]
    plot = output_file(args.plot, inputs + written, args.overwrite, "--plot") if args.plot else None
    data = load_eval_data(
        args.data,
        args.task,
        args.format,
        args.split,
        args.image_column,
        args.caption_column,
        args.limit,
        args.label_column,
        labels,
    )
    from vlap.tasks import load

    model, processor = load(args.model, device=args.device)
    generation = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    if args.template is not None:
        if args.task not in ("vqa", "classification"):
            raise InputError(
                "--template is the VQA prompt or the class label template: it needs --task vqa or classification"
            )
        generation["template"] = args.template
    if args.held_out:
        generation["held_out"] = comma_separated(args.held_out)
    result = evaluate_task(
        model, processor, data, args.task, batch_size=args.batch_size, progress=not classification, **generation
    )
    full = {
        "model": args.model,
        "task": args.task,
        "data": args.data,
        "command": "vlap " + shlex.join(args.argv),
        "num_images": len(data["images"]),
        "skipped_images": data["skipped"],
        **result,
    }
    report = {key: value for key, value in full.items() if key != "predictions"}
    table = markdown_table({args.model: result["scores"]})
    if result.get("unavailable"):
        table += "\n\n" + "\n".join(f"- {metric}: unavailable ({why})" for metric, why in result["unavailable"].items())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(full, indent=2))
        table_path.write_text(table + "\n")
    if plot is not None:
        try:
            plot_confusion(result, plot)
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install matplotlib)") from None
    emit(args, report, table)


def cmd_transfer(args) -> None:
    from vlap.langbridge import transfer

    out = Path(args.out or f"{Path(args.model).name}-to-{Path(args.to_llm).name}")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: the output folder exists and is not empty")
    report = transfer(args.model, args.to_llm, out, min_coverage=args.min_coverage)
    emit(
        args,
        report,
        f"{report['found']} of {report['strings']} bridge strings found in {args.to_llm} "
        f"({report['coverage']:.1%}); saved {report['out']}",
    )


def cmd_serve(args) -> None:
    try:
        from vlap.app import serve
    except ImportError as error:
        raise InputError(f"vlap serve needs the web demo's extra: pip install 'vlap[app]' ({error})") from None
    device = "cpu" if args.device == "auto" else args.device
    serve(args.model, args.host, args.port, args.gallery, device=device)


# ------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    common.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="vlap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, function, help_text, epilog=None):
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("model", metavar="MODEL", help="a saved VLAP folder or a Hub id")
        sub.set_defaults(function=function)
        return sub

    sub = command("caption", cmd_caption, "one caption per image")
    sub.add_argument("images", metavar="IMAGE", nargs="+", help="image files, globs or folders")
    sub.add_argument(
        "--prompt", default=None, help="text after the visual prefix (default: the model's, 'A picture of')"
    )
    sub.add_argument("--max-new-tokens", type=positive_int, default=20)

    sub = command("vqa", cmd_vqa, "answer a question about an image (zero-shot, prompted)")
    sub.add_argument("image", metavar="IMAGE", help="an image file (or a folder/glob: the question for each)")
    sub.add_argument("question", metavar="QUESTION")
    sub.add_argument(
        "--template",
        default=None,
        help="prompt template with {question}, optionally {caption} (the model's caption of the image) "
        "and {prompt} (the model's caption prompt); default: vlap.tasks.VQA_TEMPLATE",
    )
    sub.add_argument("--max-new-tokens", type=positive_int, default=10)

    sub = command("retrieve", cmd_retrieve, "rank texts for each image and images for each text")
    sub.add_argument("--images", required=True, metavar="DIR", help="folder (or glob) of images")
    sub.add_argument("--texts", metavar="FILE", help="candidate texts, one per line")
    sub.add_argument("--query", action="append", metavar="TEXT", help="a text to rank the images for (repeatable)")
    sub.add_argument("--method", **SCORE_METHOD)
    sub.add_argument("--top-k", type=positive_int, default=5)

    sub = command("classify", cmd_classify, "zero-shot classification among labels (as the zero-shot pipeline)")
    sub.add_argument("images", metavar="IMAGE", nargs="+", help="image files, globs or folders")
    sub.add_argument("--labels", required=True, help="comma-separated candidate labels, e.g. 'cat,dog,car'")
    sub.add_argument("--method", **SCORE_METHOD)
    sub.add_argument(
        "--template",
        default="a {}",
        help="label text template with {} (as the pipeline's hypothesis_template; "
        "default 'a {}', the form of the training captions)",
    )
    sub.add_argument("--top-k", type=positive_int, default=5)

    sub = command("words", cmd_words, "read an image as words: the top of its assignment over the vocabulary")
    sub.add_argument("image", metavar="IMAGE")
    sub.add_argument("--top-k", type=positive_int, default=10)
    sub.add_argument("--plot", metavar="PNG", help="also draw the words as a bar chart into this file")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    sub.add_argument(
        "--per-token",
        action="store_true",
        help="LangBridge: also the top words each visual token says (its coefficients)",
    )

    sub = command(
        "arithmetic",
        cmd_arithmetic,
        "visual semantic arithmetic: IMAGE - word + word -> nearest words",
        epilog="example: vlap arithmetic MODEL red_circle.png - red + blue --images shapes/",
    )
    sub.add_argument("image", metavar="IMAGE")
    sub.add_argument("terms", metavar="TERM", nargs="+", help="'-' or '+' followed by a word, repeated")
    sub.add_argument("--images", metavar="DIR", help="also rank these images by the result")
    sub.add_argument("--top-k", type=positive_int, default=10)

    sub = command("eval", cmd_eval, "evaluate on a dataset: metrics as a markdown table (or --json)")
    sub.add_argument("--task", required=True, choices=["caption", "vqa", "retrieval", "classification"])
    sub.add_argument(
        "--data", required=True, help="imagefolder, .jsonl/.csv, save_to_disk folder, Hub id or .tar shards"
    )
    sub.add_argument("--format", default="auto", help="data format (default: detected)")
    sub.add_argument("--split", default=None, help="default: test, or train when there is no test split")
    sub.add_argument("--image-column", default="image")
    sub.add_argument("--caption-column", default="caption")
    sub.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    sub.add_argument("--max-new-tokens", type=positive_int, default=None, help="caption: 20, vqa: 10 (default)")
    sub.add_argument(
        "--template",
        default=None,
        help="vqa: the prompt template (as `vlap vqa --template`); "
        "classification: the label template (as `vlap classify --template`)",
    )
    sub.add_argument("--label-column", default="label", help="classification: class index or name per image")
    sub.add_argument(
        "--labels",
        help="classification: comma-separated class names (default: the label column's datasets.ClassLabel names)",
    )
    sub.add_argument(
        "--held-out",
        metavar="NAMES",
        help="classification: comma-separated classes left out of training; adds held-out and seen figures",
    )
    sub.add_argument("--plot", metavar="PNG", help="classification: draw the confusion matrices into this file")
    sub.add_argument("--out", metavar="FILE.json", help="also write the report (with predictions) and FILE.md")
    sub.add_argument("--overwrite", action="store_true", help="replace existing --out / --plot files")

    sub = command("serve", cmd_serve, "serve the web demo (Gradio): caption, ask, words, arithmetic, retrieve")
    add_serve_arguments(sub)

    sub = command(
        "transfer", cmd_transfer, "move a LangBridge or word bridge to another LLM without training (re-index words)"
    )
    sub.add_argument(
        "--to-llm", required=True, metavar="LLM", help="the new LLM (Hub id or folder, with its tokenizer)"
    )
    sub.add_argument("--out", metavar="DIR", help="where to save (default: MODEL-to-LLM)")
    sub.add_argument(
        "--min-coverage", type=fraction, default=0.9, help="refuse below this share of strings found, 0-1 (0.9)"
    )
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.function(args)
    except (InputError, ValueError, OSError, ImportError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"vlap {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
