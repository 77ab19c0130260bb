"""LangBridge transfer measured as compute saved, on real models, offline (EfficientNet-Lite0 vision, easy-vqa).

Per seed, from the frozen-feature cache, with the vocabulary train.py gives by default: the most frequent English
words (wordfreq) that SmolLM2 and Gemma 3 both spell as one token:
  1. source: LangBridge trained on SmolLM2-135M with the full budget (--steps x 16 captions),
  2. moved to Gemma 3 270M by re-indexing its words (`vlap transfer`, no training), then fine-tuned from there on
     5 / 10 / 25 % of the budget (that share of the steps and of the training images),
  3. direct: LangBridge trained on Gemma 3 270M from scratch with the full budget,
  4. reverse: (3) moved to SmolLM2 without training,
  5. control: LangBridge trained on Gemma 3 from scratch with the same 5 / 10 / 25 % as the fine-tuning in (2).
Each is scored by the share of easy-vqa test captions that name the image's colour AND shape (`--eval-split
validation`: the validation slice of the train split that experiments.sweep chooses on; `--stages source` trains
and scores only (1), to choose the budget).

    python -m bench.langbridge_transfer [--seeds 0 1 2] [--steps 200] [--learning-rate 3e-4] [--json FILE] [--plot PNG]
        [--coefficients softmax] [--assignment-loss-weight 0.1] [--bf16]

The JSON holds, per figure, the median over the seeds run and their count ("seeds"), and every seed's value.
"""

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from experiments.assets import efficientnet_lite0, gemma3_270m, smollm2_135m, vision_states
from experiments.demo import banner, train
from experiments.easy_vqa import TEMPLATES
from experiments.runs import BASE_BUDGET, VLAP_METHOD
from experiments.shape_world import RENDER_SEED_REPORTED, questions_of, split_train, training_set, vqa_by_type
from experiments.shapes import COLOURS, SHAPES, caption_is_right, named, question_type, render_shapes
from modeling_vlap.configuration_vlap import WORD_BRIDGE_LAYOUT
from modeling_vlap.processing_vlap import word_bridge_ids
from vlap.evaluation import answer_without_image
from vlap.langbridge import english_vocabulary, transfer
from vlap.tasks import VQA_TEMPLATE, answer, caption, load, save_figure, token_words

FRACTIONS = (0.05, 0.1, 0.25)
STAGES = ("source", "moved", "finetune", "direct", "reverse", "control", "words")  # the default: all of them
CHOICE_STAGES = ("word_choices", "word_source", "word_renders")  # not in the default run
RENDERS_PER_CLASS = 5  # as make demo scores its held-out renders


def colour_shape_accuracy(folder: Path, states, colours, shapes, **overrides) -> tuple[float, dict]:
    """Share of captions naming the image's colour and shape (and no other), and what explains it: the shares naming
    the right colour, the right shape, the first captions, and the top words each visual token of the first image
    says (the LangBridge read-out; a word bridge: the words of the first four images). `overrides`: VLAPConfig
    fields set at load."""
    model, processor = load(str(folder), **overrides)
    captions = caption(model, processor, vision_hidden_states=states, max_new_tokens=12, batch_size=32, progress=True)
    right = [caption_is_right(text, colour, shape) for text, colour, shape in zip(captions, colours, shapes)]
    colour_right = [named(text, COLOURS) == [colour] for text, colour in zip(captions, colours)]
    shape_right = [named(text, SHAPES) == [shape] for text, shape in zip(captions, shapes)]
    detail = {
        "colour": sum(colour_right) / len(right),
        "shape": sum(shape_right) / len(right),
        "examples": captions[:4],
    }
    if model.config.bridge_type == "words":  # its words, and how often they already name colour and shape alone
        said = [
            word_list
            for chunk in states.split(64)
            for word_list in model.get_image_words(vision_hidden_states=chunk.to(model.device))
        ]
        detail["words"] = said[:4]
        right_words = [caption_is_right(" ".join(w), c, s) for w, c, s in zip(said, colours, shapes)]
        detail["words_name_colour_shape"] = sum(right_words) / len(right_words)
    else:
        detail["first_image_words"] = [
            [word for word, _ in said]
            for said in token_words(model, processor, vision_hidden_states=states[:1], top_k=3)[0]
        ]
    return sum(right) / len(right), detail


def report(seed: int, name: str, figure: float, detail: dict) -> None:
    """One line per scored model: its figure, what explains it, and what its bridge says (`colour_shape_accuracy`)."""
    said = (
        f"the first images' words: {detail['words']}"
        if "words" in detail
        else f"the first image's visual tokens say {detail['first_image_words']}"
    )
    print(
        f"seed {seed}, {name}: colour+shape {figure:.3f} (colour {detail['colour']:.3f}, shape {detail['shape']:.3f}); "
        f"e.g. {detail['examples'][:2]}; {said}",
        flush=True,
    )


def training_rows(pool, count: int, out: Path) -> Path:
    """The first `count` images of the training pool as a folder train.py reads."""
    folder = out / f"train-{count}"
    if not (folder / "state.json").exists():
        pool.select(range(count)).save_to_disk(str(folder))
    return folder


def run_seed(seed: int, args, out: Path, models: dict, pool_folder: Path, evaluation: tuple) -> dict:
    import datasets

    pool = datasets.load_from_disk(str(pool_folder))
    budget = {
        "learning_rate": args.learning_rate,
        **({"mixed_precision": "bf16"} if args.bf16 else {}),
        "model": {
            "bridge_type": "langbridge",
            "langbridge_coefficients": args.coefficients,
            "langbridge_activation_before_words": args.gelu_before_words,
            **(VLAP_METHOD if args.assignment_loss_weight else {}),
            "assignment_loss_weight": args.assignment_loss_weight,
        },
    }
    full = SimpleNamespace(steps=args.steps, seed=seed)
    data = training_rows(pool, args.train_images, out)
    figures, details, seconds = {}, {}, {}

    def measure(name: str, folder: Path) -> None:
        figures[name], details[name] = colour_shape_accuracy(folder, *evaluation)
        report(seed, name, figures[name], details[name])

    def timed_train(name: str, llm: Path, plan, train_data: Path, **overrides) -> Path:
        start = time.time()
        folder = train(
            f"seed{seed}-{name}", out, train_data, models["vision"], llm, BASE_BUDGET, plan, **budget, **overrides
        )
        seconds[name] = round(time.time() - start, 1)
        return folder

    def share_of_budget(fraction: float) -> tuple[SimpleNamespace, Path]:
        """That share of the steps and of the training images (at least one batch)."""
        plan = SimpleNamespace(steps=max(round(fraction * args.steps), 1), seed=seed)
        return plan, training_rows(pool, max(round(fraction * args.train_images), BASE_BUDGET["batch_size"]), out)

    for fraction in FRACTIONS if "control" in args.stages else ():
        banner(f"seed {seed}: control: LangBridge on Gemma 3 270M from scratch with {fraction:.0%} of the budget")
        measure(
            f"scratch_{fraction}",
            timed_train(
                f"scratch{fraction}",
                models["gemma3"],
                *share_of_budget(fraction),
                langbridge_transfer_llms=str(models["smollm2"]),
            ),
        )
    if {"source", "moved", "finetune"} & set(args.stages):
        banner(f"seed {seed}: 1. LangBridge on SmolLM2-135M (source)")
        source = timed_train("source", models["smollm2"], full, data, langbridge_transfer_llms=str(models["gemma3"]))
        measure("source", source)
    if "moved" in args.stages or "finetune" in args.stages:
        banner(f"seed {seed}: 2. moved to Gemma 3 270M without training, then fine-tuned")
        moved = move(source, models["gemma3"], out / f"seed{seed}-source-to-gemma3")
        measure("moved", moved)
        for fraction in FRACTIONS if "finetune" in args.stages else ():
            measure(
                f"finetune_{fraction}",
                timed_train(
                    f"finetune{fraction}", models["gemma3"], *share_of_budget(fraction), init_bridge=str(moved)
                ),
            )
    if "direct" in args.stages or "reverse" in args.stages:
        banner(f"seed {seed}: 3. LangBridge on Gemma 3 270M from scratch (direct)")
        direct = timed_train("direct", models["gemma3"], full, data, langbridge_transfer_llms=str(models["smollm2"]))
        measure("direct", direct)
        if "reverse" in args.stages:
            banner(f"seed {seed}: 4. the Gemma 3 bridge moved to SmolLM2 without training (reverse)")
            measure("reverse", move(direct, models["smollm2"], out / f"seed{seed}-direct-to-smollm2"))
    return {"colour_shape": figures, "train_seconds": seconds, "detail": details}


WORD_BRIDGE_PROMPT = "Caption:"
WORD_VQA_TEMPLATE = "Question: {question}\nAnswer:"  # after the image's words: no caption in between
# Layouts tried on validation (`--stages word_choices`): examples of objects and a colour (three, two, the colour after
# the noun once, four with that), or two coloured shapes (easy-vqa's own world).
WORD_LAYOUTS = {
    "three_examples": "Words: dog, grass.\nCaption: a dog on the grass.\n\nWords: red, car.\nCaption: a red car.\n\n"
    "Words: cup, table.\nCaption: a cup on a table.\n\nWords:{words}.\n",
    "two_examples": "Words: dog, grass.\nCaption: a dog on the grass.\n\nWords: cup, table.\nCaption: a cup on a "
    "table.\n\nWords:{words}.\n",
    "shapes": "Words: purple, star.\nCaption: a purple star.\n\nWords: orange, square.\nCaption: an orange "
    "square.\n\nWords:{words}.\n",
    # the thing before its colour in one example (the bridge lists its surest word first, often the shape)
    "noun_first": "Words: dog, grass.\nCaption: a dog on the grass.\n\nWords: car, red.\nCaption: a red car.\n\n"
    "Words: cup, table.\nCaption: a cup on a table.\n\nWords:{words}.\n",
    "noun_first_four": WORD_BRIDGE_LAYOUT,  # the default
}
WORD_CHOICES = {"layout": list(WORD_LAYOUTS), "threshold": [0.3, 0.5, 0.7], "top_k": [3, 5]}  # --word-choices


def layout_fields(folder: Path, layout: str) -> dict:
    """VLAPConfig overrides that make the saved word bridge at `folder` read `layout` (tokenised for its LLM)."""
    from transformers import AutoTokenizer

    ids = word_bridge_ids(AutoTokenizer.from_pretrained(str(folder)), [], layout)
    return {"word_bridge_layout": layout, "word_bridge_layout_ids": ids["word_bridge_layout_ids"]}


def word_vqa(folder: Path, rows, states, questions) -> dict:
    """Per question type, VQA through the word bridge at `folder` (the question right after the image's words) and
    describe-then-answer (its caption, then the question: `tasks.VQA_TEMPLATE`), beside the same LLM reading in the
    same layout the image's true caption ("a red circle") and its true words ("red, circle") in the words' place."""
    model, processor = load(str(folder))
    texts = [question for _, question, _ in questions]
    types = [question_type(q) for q in texts]
    picked_rows = [row for row, _, _ in questions]
    picked = states[picked_rows]
    through_words = answer(model, processor, questions=texts, vision_hidden_states=picked, template=WORD_VQA_TEMPLATE)
    described = answer(model, processor, questions=texts, vision_hidden_states=picked, template=VQA_TEMPLATE)
    layout = model.config.word_bridge_layout.replace("{words}", " {caption}") + WORD_VQA_TEMPLATE
    truths = {
        "true_caption": [TEMPLATES[0].format(colour=rows["colour"][r], shape=rows["shape"][r]) for r in picked_rows],
        "true_words": [f"{rows['colour'][r]}, {rows['shape'][r]}" for r in picked_rows],
    }
    scores = {
        "words": vqa_by_type(through_words, questions, types),
        "describe_then_answer": vqa_by_type(described, questions, types),
    }
    for name, descriptions in truths.items():
        read = answer_without_image(model, processor, texts, descriptions, template=layout, max_new_tokens=4)
        scores[name] = vqa_by_type(read, questions, types)
    return scores


def move(folder: Path, llm: Path, out: Path) -> Path:
    """`vlap transfer` of the bridge at `folder` to `llm` (no training), into a fresh `out` (its source may have just
    been retrained)."""
    shutil.rmtree(out, ignore_errors=True)
    transfer(str(folder), str(llm), out)
    return out


def held_out_renders() -> tuple:
    """The demo's held-out renders (`RENDERS_PER_CLASS` of each class, the reported seed): states, colours, shapes."""
    images, colours, shapes = render_shapes(RENDERS_PER_CLASS, RENDER_SEED_REPORTED)
    return vision_states(images, f"renders-{RENDER_SEED_REPORTED}-{len(images)}"), colours, shapes


def run_word_bridge(seed: int, args, out: Path, models: dict, pool_folder: Path, evaluation: tuple, vqa_set) -> dict:
    """The word bridge (docs/langbridge.md): trained with SmolLM2's tokenisation of the captions, read by SmolLM2
    (source), moved to Gemma 3 without training (moved); trained with Gemma 3's and moved to SmolLM2 (reverse); VQA
    through the words on the source. `--stages word_choices` instead scores the source under every choice of layout,
    threshold and top-k, `--stages word_source` the source alone (both to choose, on validation)."""
    import datasets

    budget = {
        "learning_rate": args.word_learning_rate,
        "model": {"bridge_type": "words", "assignment_loss_weight": 0.0, "prompt": WORD_BRIDGE_PROMPT},
    }
    plan = SimpleNamespace(steps=args.word_steps, seed=seed)
    rows = datasets.load_from_disk(str(pool_folder)).select(range(args.train_images))
    data = (
        training_set(out, rows, args.word_train_renders)
        if args.word_train_renders
        else training_rows(rows, len(rows), out)
    )
    figures, details, seconds = {}, {}, {}

    def measure(name: str, folder: Path, images: tuple = evaluation, **overrides) -> None:
        figures[name], details[name] = colour_shape_accuracy(folder, *images, **overrides)
        report(seed, name, figures[name], details[name])

    def timed_train(name: str, llm: Path) -> Path:
        start = time.time()
        folder = train(f"seed{seed}-{name}", out, data, models["vision"], llm, BASE_BUDGET, plan, **budget)
        seconds[name] = round(time.time() - start, 1)
        return folder

    renders = held_out_renders() if "word_renders" in args.stages else None
    banner(f"seed {seed}: word bridge trained with SmolLM2-135M's tokens (source)")
    source = timed_train("words-smollm2", models["smollm2"])
    if "word_choices" in args.stages:
        for layout, threshold, top_k in itertools.product(*args.word_choices.values()):
            fields = layout_fields(source, WORD_LAYOUTS[layout])
            name = f"words_{layout}_threshold{threshold}_top{top_k}"
            measure(name, source, word_bridge_threshold=threshold, word_bridge_top_k=top_k, **fields)
        return {"colour_shape": figures, "train_seconds": seconds, "detail": details}
    if "word_renders" in args.stages:  # renders of the 24 classes, unlike easy-vqa's images (sizes, backgrounds)
        moved = move(source, models["gemma3"], out / f"seed{seed}-words-smollm2-to-gemma3")
        for name, folder in (("words_source_renders", source), ("words_moved_renders", moved)):
            measure(name, folder, renders)
        return {"colour_shape": figures, "train_seconds": seconds, "detail": details}
    measure("words_source", source)
    if "words" not in args.stages:  # word_source: the source alone (to choose the learning rate)
        return {"colour_shape": figures, "train_seconds": seconds, "detail": details}
    moved = move(source, models["gemma3"], out / f"seed{seed}-words-smollm2-to-gemma3")
    measure("words_moved", moved)
    banner(f"seed {seed}: word bridge trained with Gemma 3 270M's tokens, moved to SmolLM2 (reverse)")
    direct = timed_train("words-gemma3", models["gemma3"])
    measure("words_direct", direct)
    measure("words_reverse", move(direct, models["smollm2"], out / f"seed{seed}-words-gemma3-to-smollm2"))
    result = {"colour_shape": figures, "train_seconds": seconds, "detail": details}
    if vqa_set is not None:
        rows, questions = vqa_set
        folders = {"source": source, "moved": moved}
        result["vqa"] = {name: word_vqa(folder, rows, evaluation[0], questions) for name, folder in folders.items()}
        print(f"seed {seed}, VQA through the words: {json.dumps(result['vqa'])}", flush=True)
    return result


def summary(per_seed: dict, vocabulary: dict, args, seconds: float) -> dict:
    """The issue's keys: medians over the seeds run (colour+shape caption accuracy), with every seed's values."""

    def median(name: str) -> float | None:
        values = [run["colour_shape"][name] for run in per_seed.values() if name in run["colour_shape"]]
        return round(statistics.median(values), 4) if values else None

    return {
        "vocabulary_size": vocabulary["vocabulary_size"],
        "coverage": round(vocabulary["coverage"], 4),
        "words_examined": vocabulary["words_examined"],
        "seeds": len(per_seed),
        "eval_split": args.eval_split,
        "source_colour_shape": median("source"),
        "target_direct_colour_shape": median("direct"),
        "target_zero_train_colour_shape": median("moved"),
        "target_finetune_colour_shape": {str(f): median(f"finetune_{f}") for f in FRACTIONS},
        "reverse_zero_train_colour_shape": median("reverse"),
        "target_scratch_colour_shape": {str(f): median(f"scratch_{f}") for f in FRACTIONS},
        "word_bridge_source_colour_shape": median("words_source"),
        "word_bridge_moved_colour_shape": median("words_moved"),
        "word_bridge_direct_colour_shape": median("words_direct"),
        "word_bridge_reverse_colour_shape": median("words_reverse"),
        "word_bridge_source_renders_colour_shape": median("words_source_renders"),
        "word_bridge_moved_renders_colour_shape": median("words_moved_renders"),
        "per_seed": per_seed,
        "setup": {
            "steps": args.steps,
            "batch_size": BASE_BUDGET["batch_size"],
            "learning_rate": args.learning_rate,
            "word_learning_rate": args.word_learning_rate,
            "word_steps": args.word_steps,
            "word_train_renders": args.word_train_renders,
            "coefficients": args.coefficients,
            "gelu_before_words": args.gelu_before_words,
            "assignment_loss_weight": args.assignment_loss_weight,
            "bf16": args.bf16,
            "train_images": args.train_images,
            "eval_images": args.eval_images,
            "stages": args.stages,
            "command": "python -m bench.langbridge_transfer " + " ".join(sys.argv[1:]),
        },
        "seconds": round(seconds, 1),
    }


def plot(result: dict, path: Path) -> None:
    """Gemma 3 quality against the share of the from-scratch compute: the moved LangBridge fine-tuned 0-25 %, and the
    moved word bridge (no fine-tuning)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [0.0, *FRACTIONS]
    moved = [result["target_zero_train_colour_shape"], *result["target_finetune_colour_shape"].values()]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(shares, moved, "o-", label="LangBridge moved from SmolLM2, then fine-tuned")
    scratch = result.get("target_scratch_colour_shape") or {}
    if any(value is not None for value in scratch.values()):
        axis.plot(FRACTIONS, list(scratch.values()), "s--", label="LangBridge from scratch, same compute (control)")
    axis.axhline(
        result["target_direct_colour_shape"], color="gray", linestyle="--", label="LangBridge from scratch (100 %)"
    )
    if result.get("word_bridge_moved_colour_shape") is not None:
        axis.plot([0.0], [result["word_bridge_moved_colour_shape"]], "*", markersize=14, label="word bridge, moved")
    axis.set_xlabel("fine-tuning compute, share of the from-scratch budget")
    axis.set_ylabel(f"captions naming colour and shape ({result['eval_split']})")
    axis.set_title(f"Bridges moved to Gemma 3 270M, median of {result['seeds']} seed(s)")
    axis.set_ylim(0, 1)
    axis.legend()
    save_figure(figure, path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/langbridge")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--coefficients", choices=("softmax", "linear"), default="linear")
    parser.add_argument("--gelu-before-words", action="store_true", help="our MLP (default: the released code's)")
    parser.add_argument(
        "--assignment-loss-weight", type=float, default=0.0, help="L_map's weight (VLAP's method; 0: captioning only)"
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast, as make demo trains")
    parser.add_argument("--train-images", type=int, default=3042, help="of the 3,042-image training pool")
    parser.add_argument("--eval-images", type=int, default=300)
    parser.add_argument("--eval-split", choices=("test", "validation"), default="test")
    parser.add_argument(
        "--stages",
        type=lambda text: text.split(","),
        default=list(STAGES),
        help="comma-separated, of " + ",".join(STAGES + CHOICE_STAGES),
    )
    parser.add_argument("--word-learning-rate", type=float, default=1e-2, help="the word bridge's")
    parser.add_argument("--word-steps", type=int, default=1000, help="the word bridge's steps of 16 (no LLM in them)")
    parser.add_argument(
        "--word-train-renders",
        type=int,
        default=0,
        help="the word bridge also trains on this many renders of each class (make demo's training set: 60)",
    )
    parser.add_argument(
        "--word-choices",
        type=json.loads,
        default=WORD_CHOICES,
        help="word_choices stage: a JSON object of the layouts, thresholds and top-k tried (default: %(default)s)",
    )
    parser.add_argument("--vqa-questions", type=int, default=300, help="VQA through the word bridge (0: none)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="PNG of the transfer curve")
    args = parser.parse_args(argv)
    start, out = time.time(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import datasets
    from transformers import AutoTokenizer

    from experiments.assets import cache_root
    from experiments.easy_vqa import easy_vqa_dataset

    models = {"vision": efficientnet_lite0(), "smollm2": smollm2_135m(), "gemma3": gemma3_270m()}
    pool_folder, validation = split_train(out)
    rows = (
        validation
        if args.eval_split == "validation"
        else datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["test"]
    )
    rows = rows.select(range(min(args.eval_images, len(rows))))
    evaluation = (vision_states(rows["image"], f"{args.eval_split}-{len(rows)}"), rows["colour"], rows["shape"])
    *_, vocabulary = english_vocabulary(
        [AutoTokenizer.from_pretrained(str(models[n])) for n in ("smollm2", "gemma3")], 19_200
    )
    questions = questions_of(rows, args.vqa_questions) if args.vqa_questions else None
    vqa_set = (rows, questions) if questions else None
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = run_seed(seed, args, out, models, pool_folder, evaluation)
        if {"words", *CHOICE_STAGES} & set(args.stages):
            words = run_word_bridge(seed, args, out, models, pool_folder, evaluation, vqa_set)
            per_seed[str(seed)]["colour_shape"].update(words.pop("colour_shape"))
            per_seed[str(seed)]["train_seconds"].update(words.pop("train_seconds"))
            per_seed[str(seed)]["detail"].update(words.pop("detail"))
            per_seed[str(seed)].update(words)
    result = summary(per_seed, vocabulary, args, time.time() - start)
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot and result["target_direct_colour_shape"] is not None:
        plot(result, Path(args.plot))
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
