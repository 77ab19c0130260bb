"""`make demo`: VLAP end to end on real frozen models, offline.

EfficientNet-Lite0 (ImageNet) + SmolLM2-135M-Instruct, bridged on easy-vqa captions derived from each image's own
answers and on rendered shapes. Trains VLAP (caption + assignment) from the frozen-feature cache with the budget
chosen on a validation slice by `python -m experiments.sweep` (`experiments/configs/budget_demo.yaml`), evaluates it
on easy-vqa test and on out-of-distribution renders (captions naming colour and shape, caption metrics, zero-shot VQA
per question type, zero-shot classification, relevance-aware retrieval, top words, visual arithmetic), shows captions
and top words through `pipeline("image-to-text")`, and writes results.json, results.md and PNG plots. `--baseline`
also trains the caption-only baseline (LiMBeR-style, assignment weight 0) with the same budget and reports it beside
VLAP (the 3-seed comparison is `python -m experiments.sweep`'s).

    python -m experiments.demo [--out outputs/demo] [--train-images 960] [--steps 600] [--seed 0] [--baseline]

`--dataset fashion-mnist` runs the same on real product photos (Debian's dataset-fashion-mnist): VLAP and
caption-only trained on captions naming the class, evaluated by `evaluate_classification` (the code behind
`vlap eval --task classification`): the class named by the caption and zero-shot classification among the 10 names,
per class, with confusion matrices. `--held-out sandal,bag` removes those classes from training (images and captions)
and reports how often each model names them anyway.

    python -m experiments.demo --dataset fashion-mnist [--held-out sandal,bag] [--eval-split validation]

`--dataset open-vocabulary` trains VLAP (and with `--baseline` caption-only) with the demo's budget on drawings with
captions people wrote (experiments.open_vocabulary) and scores held-out drawings of seen concepts (`--eval-split`),
held-out concepts and Tux Paint photographs; the models are exported to OUT/vlap/final and OUT/caption_only/final.

    python -m experiments.demo --dataset open-vocabulary [--eval-split validation] [--baseline] [--seeds 0 1 2]
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import datasets
import torch

from experiments.assets import cache_root, efficientnet_lite0, smollm2_135m, vision_states
from experiments.easy_vqa import easy_vqa_dataset
from experiments.runs import (
    BASE_BUDGET,
    CAPTION_ONLY,
    DEMO_BUDGET,
    VLAP_METHOD,
    difference,
    median_and_spread,
    merged,
    run_train,
)
from experiments.shape_world import (
    DEMO_RENDERS_PER_CLASS,
    RENDER_SEED_REPORTED,
    evaluate_shape_world,
    evaluation_sets,
    majority_answers,
    split_train,
    training_set,
    vqa_baselines,
)
from vlap.evaluation import (
    evaluate_captioning,
    evaluate_classification,
    evaluate_retrieval,
    markdown_table,
    plot_confusion,
)
from vlap.inputs import comma_separated
from vlap.metrics import load_metric
from vlap.tasks import classify, first_line, load, plot_words, read_words, save_figure


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def train(name: str, out: Path, train_data: Path, vision: Path, llm: Path, budget: dict, args, **overrides) -> Path:
    """Train `name` under `out` with train.py: `budget` (a train.py config), then `overrides` (one, `model=`, is the
    method's settings)."""
    config = {
        "vision_model": str(vision),
        "text_model": str(llm),
        "train_data": str(train_data),
        "max_steps": args.steps,
        "warmup_steps": max(args.steps // 10, 1),
        "cache_features": str(out / "features"),
        "checkpointing_steps": args.steps,
        "checkpoints_total_limit": 1,
        "eval_steps": 0,
        "num_eval_images": 4,
        "overwrite_output_dir": True,
        "seed": args.seed,
        "cpu": not torch.cuda.is_available(),
    }
    return run_train(out / name, merged(budget, config, overrides)) / "final"


def evaluate_model(folder: Path, sets: dict, test_captions: list) -> dict:
    """Caption metrics on the test images and `evaluate_shape_world` on every set, for one exported model."""
    model, processor = load(folder, device="cpu")
    test_states = sets["test"]["vision_hidden_states"]
    caption = evaluate_captioning(
        model, processor, references=test_captions, vision_hidden_states=test_states, max_new_tokens=12, batch_size=32
    )
    worlds = {
        name: evaluate_shape_world(model, processor, **data, other_vqa_layouts=False) for name, data in sets.items()
    }
    scores = {**caption["scores"]}
    for name, world in worlds.items():
        scores.update({f"{name}: {k}": v for k, v in world.items() if isinstance(v, float)})
    examples = {name: {k: v for k, v in world.items() if not isinstance(v, float)} for name, world in worlds.items()}
    return {"scores": scores, "unavailable": caption["unavailable"], "examples": examples}


DIAGNOSTICS = (
    "text_target_entropy",
    "image_target_entropy",
    "text_target_content_mass",
    "image_target_content_mass",
    "top1_agreement",
)  # vlap.diagnostics, logged by train.py every step


def plot_losses(out: Path, runs: dict) -> None:
    """loss_curves.png: caption loss and both halves of L_map per run; L_map's target diagnostics of the VLAP run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, diagnostics) = plt.subplots(1, 2, figsize=(13, 4))
    for name, folder in runs.items():
        records = [
            r for r in map(json.loads, (folder.parent / "metrics.jsonl").read_text().splitlines()) if "loss" in r
        ]
        steps = [r["step"] for r in records]
        losses.plot(steps, [r["caption_loss"] for r in records], label=f"{name}: caption loss")
        for half in ("image_predicts_text", "text_predicts_image"):
            if half in records[0]:
                losses.plot(steps, [r[half] for r in records], linestyle="--", label=f"{name}: L_map {half}")
        for key in DIAGNOSTICS:
            if key in records[0]:
                diagnostics.plot(steps, [r[key] for r in records], label=f"{name}: {key}")
    losses.set(xlabel="step", ylabel="loss", yscale="log", title="losses")
    diagnostics.set(xlabel="step", ylim=(0, 1.02), title="assignment targets (entropy as a fraction of log V)")
    losses.legend(fontsize=7)
    diagnostics.legend(fontsize=7)
    save_figure(figure, out / "loss_curves.png", dpi=120)


def show(folder: Path, test: datasets.Dataset) -> list[dict]:
    """Captions and top words through pipeline("image-to-text") loaded from the exported folder (remote code)."""
    from PIL import Image
    from skimage import data as skimage_data
    from transformers import AutoModel, AutoProcessor, pipeline

    captioner = pipeline("image-to-text", model=str(folder), trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    shown = [(f"easy-vqa test #{test[i]['image_id']} ({test[i]['caption'][0]})", test[i]["image"]) for i in range(4)]
    shown += [(f"scikit-image {name}", Image.fromarray(getattr(skimage_data, name)())) for name in ("cat", "coffee")]
    rows = []
    for label, image in shown:
        caption = first_line(captioner(image, max_new_tokens=12)[0]["generated_text"])
        words = read_words(model, processor, [image], top_k=8)[0]
        rows.append({"image": label, "caption": caption, "top_words": words})
        print(f"{label}\n    caption: {caption!r}\n    top words: " + ", ".join(f"{w!r} {p:.2f}" for w, p in words))
    return rows


FASHION_VALIDATION_ROWS = 1000  # carved from the shuffled train split to choose on; the rest is the training pool


def fashion_mnist(args, out: Path, start: float) -> None:
    """The Fashion-MNIST run: train both models on captioned product photos, evaluate by class on test (or on the
    validation slice), write results.json, results.md, confusion_{run}.png and loss_curves.png."""
    from experiments.fashion_mnist import CLASSES, fashion_mnist_dataset, without_classes

    held_out = args.held_out
    banner(f"1. assets (cached under {cache_root()})")
    vision, llm = efficientnet_lite0(), smollm2_135m()
    splits = datasets.load_from_disk(str(fashion_mnist_dataset(cache_root())))
    shuffled = splits["train"].shuffle(seed=0)
    validation = shuffled.select(range(FASHION_VALIDATION_ROWS))
    pool = without_classes(shuffled.select(range(FASHION_VALIDATION_ROWS, len(shuffled))), held_out)
    train_rows = pool.select(range(min(args.train_images, len(pool))))
    train_data = out / (f"train-{len(train_rows)}" + ("-without-" + "-".join(held_out) if held_out else ""))
    if not (train_data / "state.json").exists():
        train_rows.save_to_disk(str(train_data))
    evaluated = validation if args.eval_split == "validation" else splits["test"]
    evaluated = evaluated.select(range(min(args.test_images, len(evaluated))))
    print(
        f"vision {vision}\nLLM {llm}\nFashion-MNIST: {len(train_rows)} training images"
        + (f" without {', '.join(held_out)}" if held_out else "")
        + f", {len(evaluated)} {args.eval_split} images"
    )

    banner("2. VLAP: caption + assignment prediction (frozen-feature cache)")
    runs = {"vlap": train("vlap", out, train_data, vision, llm, BASE_BUDGET, args, model=VLAP_METHOD)}
    banner("3. caption-only baseline (assignment weight 0), same budget")
    runs["caption_only"] = train("caption_only", out, train_data, vision, llm, BASE_BUDGET, args, model=CAPTION_ONLY)

    banner(f"4. evaluation on {len(evaluated)} {args.eval_split} images, by class")
    states = vision_states(evaluated["image"], f"fashion-mnist-{args.eval_split}-{len(evaluated)}")
    results = {}
    for name, folder in runs.items():
        model, processor = load(folder, device="cpu")
        results[name] = evaluate_classification(
            model,
            processor,
            labels=evaluated["label"],
            class_names=CLASSES,
            vision_hidden_states=states,
            held_out=held_out,
            batch_size=32,
        )
        plot_confusion(results[name], out / f"confusion_{name}.png")
        print(
            f"{name} captions: " + "; ".join(f"{e['caption']!r} ({e['class']})" for e in results[name]["examples"][:4])
        )
    markdown = markdown_table(
        {
            "VLAP (caption + assignment)": results["vlap"]["scores"],
            "caption-only baseline": results["caption_only"]["scores"],
        }
    )
    print(markdown)
    finish(
        out,
        start,
        results,
        markdown,
        runs,
        {
            "dataset": "fashion-mnist",
            "held_out": held_out,
            "eval_split": args.eval_split,
            "train_images": len(train_rows),
            "evaluated_images": len(evaluated),
            **BASE_BUDGET,
            "max_steps": args.steps,
            "seed": args.seed,
            "vlap_method": VLAP_METHOD,
        },
    )


def open_vocabulary_scores(model, processor, rows, names: list[str], name: str, states: torch.Tensor) -> dict:
    """What a model of the open vocabulary should get right on `rows` (an open-vocabulary split, `states` the frozen
    vision output of its images), among `names`:
    `caption_names_class` (its caption names the image's concept or a longer name holding it),
    `classification_code` / `classification` (zero-shot among `names` in VLAP's word space / by feature cosine) and
    `classification_code_top5` (the concept among the five best names), image<->text R@1/R@5 among the rows' own
    captions (`_code`: word space); CIDEr, BLEU-4 and METEOR against them. The examples are every row's caption."""
    labels = [names.index(concept) for concept in rows["concept"]]
    classes = evaluate_classification(
        model, processor, labels=labels, class_names=names, vision_hidden_states=states, batch_size=32
    )
    wanted = ("caption_names_class", "classification", "classification_code")
    scores = {key: value for key, value in classes["scores"].items() if key in wanted}
    ranked = classify(model, processor, labels=names, vision_hidden_states=states, method="code", batch_size=32)
    top5 = [[label for label, _ in ranking[:5]] for ranking in ranked]
    scores["classification_code_top5"] = sum(names[t] in top for t, top in zip(labels, top5)) / len(labels)
    retrieval = evaluate_retrieval(model, processor, references=rows["captions"], vision_hidden_states=states)
    scores.update({k: v for k, v in retrieval["scores"].items() if "@10" not in k})
    captions = load_metric("caption_metrics").compute(predictions=classes["predictions"], references=rows["captions"])
    scores.update({k: captions[k] for k in ("CIDEr", "BLEU-4", "METEOR") if k in captions})
    examples = [
        {"path": path, "captions": list(truth), "caption": caption, "top5_code": top}
        for path, truth, caption, top in zip(rows["path"], rows["captions"], classes["predictions"], top5)
    ]
    return {"scores": {f"{name}: {k}": v for k, v in scores.items()}, "examples": examples}


def open_vocabulary_training_folder(splits, out: Path, caption_form: str) -> Path:
    """The open-vocabulary training split as train.py reads it (image, captions), captions as phrases after the
    prompt ("a dog on leash") or as people wrote them (`caption_form`), saved once under `out`."""
    from experiments.open_vocabulary import as_phrase

    train_data = out / "train"
    if not (train_data / "state.json").exists():
        rows = splits["train"].select_columns(["image", "captions"])
        if caption_form == "phrase":
            rows = rows.map(lambda row: {"captions": [as_phrase(c) for c in row["captions"]]})
        rows.save_to_disk(str(train_data))
    return train_data


def open_vocabulary(args, out: Path, start: float) -> None:
    """The open-vocabulary run: VLAP and caption-only trained with train.py on the clip-art training split, evaluated
    on held-out drawings of seen concepts (`--eval-split`), on held-out concepts and on Tux Paint photographs."""
    from experiments.open_vocabulary import gallery, open_vocabulary_dataset

    banner(f"1. assets and data (cached under {cache_root()})")
    vision, llm = efficientnet_lite0(), smollm2_135m()
    splits = datasets.load_from_disk(str(open_vocabulary_dataset(cache_root())))
    train_data = open_vocabulary_training_folder(splits, out, args.caption_form)
    seen = sorted({c for split in ("train", "validation", "test") for c in splits[split]["concept"]})
    sets = {
        args.eval_split: (splits[args.eval_split], seen),
        "held_out_concepts": (splits["held_out_concepts"], sorted(set(splits["held_out_concepts"]["concept"]))),
        "photos": (splits["photos"], sorted(set(splits["photos"]["concept"]))),
    }
    print(
        f"open vocabulary: {len(splits['train'])} training drawings; "
        + ", ".join(f"{name} {len(rows)} images among {len(names)} names" for name, (rows, names) in sets.items())
    )
    banner("2. VLAP and the caption-only baseline, same budget (train.py)")
    methods = (("vlap", VLAP_METHOD), ("caption_only", CAPTION_ONLY))[: 2 if args.baseline else 1]
    runs = {
        name: train(name, out, train_data, vision, llm, DEMO_BUDGET, args, caption_column="captions", model=method)
        for name, method in methods
    }
    banner("3. evaluation")
    states = {
        name: vision_states(rows["image"], f"open-vocabulary-{name}-{len(rows)}") for name, (rows, _) in sets.items()
    }
    results = {}
    for run, folder in runs.items():
        model, processor = load(folder, device="cpu")
        parts = [
            open_vocabulary_scores(model, processor, rows, names, name, states[name])
            for name, (rows, names) in sets.items()
        ]
        results[run] = {"scores": {k: v for part in parts for k, v in part["scores"].items()}}
        results[run]["examples"] = {name: part["examples"] for name, part in zip(sets, parts)}
        print(f"{run}: " + "; ".join(f"{e['caption']!r} ({e['captions'][0]})" for e in parts[-1]["examples"][:4]))
    titles = {"vlap": "VLAP (caption + assignment)", "caption_only": "caption-only"}
    markdown = markdown_table({titles[run]: results[run]["scores"] for run in runs})
    print(markdown)
    setup = {
        "dataset": "open-vocabulary",
        "eval_split": args.eval_split,
        "caption_form": args.caption_form,
        "train_images": len(splits["train"]),
        "train_config": json.loads((runs["vlap"].parent / "train_config.json").read_text()),
        "seed": args.seed,
    }
    finish(out, start, results, markdown, runs, setup)
    print(f"wrote {gallery(out, out / 'gallery.png')}")


def finish(out: Path, start: float, results: dict, markdown: str, runs: dict, setup: dict) -> None:
    """results.json (with the setup, wall time and peak RSS), results.md and loss_curves.png."""
    seconds = time.time() - start
    processes = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    peak_rss_mb = max(resource.getrusage(who).ru_maxrss for who in processes) / 1024
    results["setup"] = {
        **setup,
        "command": "python -m experiments.demo " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown + "\n")
    plot_losses(out, runs)
    plots = ", ".join(sorted(str(path) for path in out.glob("*.png")))
    print(f"wrote {plots}, {out / 'results.json'}, {out / 'results.md'}")
    print(
        f"demo done in {seconds:.0f} s (easy-vqa target <= 600 s, Fashion-MNIST <= 900 s), "
        f"peak RSS {peak_rss_mb:.0f} MB (target <= 4096 MB)"
    )


def summarise_seeds(folders: list[Path]) -> str:
    """VLAP and caption-only, median [min, max] over the runs in `folders` (one seed each, their results.json), and
    whether VLAP - caption-only exceeds the seed spread (`runs.difference`)."""
    runs = [json.loads((folder / "results.json").read_text()) for folder in folders]
    lines = [
        f"{len(runs)} seeds ({', '.join(str(run['setup']['seed']) for run in runs)}): median [min, max]",
        "",
        "| metric | VLAP (caption + assignment) | caption-only | VLAP - caption-only |",
        "|---|---|---|---|",
    ]
    for metric, value in runs[0]["vlap"]["scores"].items():
        if not isinstance(value, float) or metric not in runs[0]["caption_only"]["scores"]:
            continue
        a, b = ([run[name]["scores"][metric] for run in runs] for name in ("vlap", "caption_only"))
        lines.append(f"| {metric} | {median_and_spread(a)} | {median_and_spread(b)} | {difference(a, b)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["easy-vqa", "fashion-mnist", "open-vocabulary"], default="easy-vqa")
    parser.add_argument("--out", default=None, help="default: outputs/demo (easy-vqa), outputs/fashion-mnist")
    parser.add_argument("--train-images", type=int, default=None, help="default: 960 (easy-vqa), 2000")
    parser.add_argument("--test-images", type=int, default=None, help="default: 120 (easy-vqa), 1000")
    parser.add_argument("--vqa-questions", type=int, default=90)
    parser.add_argument("--renders-per-class", type=int, default=5)
    parser.add_argument("--held-out", default=None, help="fashion-mnist: comma-separated classes left out of training")
    parser.add_argument(
        "--eval-split",
        choices=["test", "validation"],
        default="test",
        help="fashion-mnist, open-vocabulary: evaluate on test or on the validation split",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default: {DEMO_BUDGET['max_steps']} for easy-vqa, {BASE_BUDGET['max_steps']} for "
        "fashion-mnist); warmup is a tenth",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="easy-vqa, open-vocabulary: also train and evaluate the caption-only baseline with the same budget "
        "(fashion-mnist and --seeds always do)",
    )
    parser.add_argument(
        "--caption-form",
        choices=["as-written", "phrase"],
        default="phrase",
        help="open-vocabulary: train on captions as phrases after the prompt (default, chosen on validation: "
        '"a dog on leash"; experiments.open_vocabulary.as_phrase) or as people wrote them',
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="fashion-mnist: one run per seed into OUT/seed{S}, then "
        "OUT/summary.md (median and spread, which differences exceed it)",
    )
    args = parser.parse_args(argv)
    fashion, open_world = args.dataset == "fashion-mnist", args.dataset == "open-vocabulary"
    if args.held_out and not fashion:
        parser.error("--held-out needs --dataset fashion-mnist")
    if args.seeds and not (fashion or open_world):
        parser.error("--seeds needs --dataset fashion-mnist or open-vocabulary")
    args.baseline = args.baseline or bool(args.seeds)  # a seed summary compares VLAP with caption-only
    args.held_out = comma_separated(args.held_out or "")
    if args.held_out:
        from experiments.fashion_mnist import CLASSES

        unknown = [name for name in args.held_out if name not in CLASSES]
        if unknown:  # before anything is built or trained
            parser.error(f"--held-out {', '.join(unknown)}: not a Fashion-MNIST class ({', '.join(CLASSES)})")
    args.out = args.out or {"fashion-mnist": "outputs/fashion-mnist", "open-vocabulary": "outputs/open-vocabulary"}.get(
        args.dataset, "outputs/demo"
    )
    args.train_images = args.train_images or (2000 if fashion else 960)
    args.test_images = args.test_images or (1000 if fashion else 120)
    args.steps = args.steps or (BASE_BUDGET if fashion else DEMO_BUDGET)["max_steps"]
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = fashion_mnist if fashion else open_vocabulary
    if args.seeds:
        folders = [out / f"seed{seed}" for seed in args.seeds]
        for seed, folder in zip(args.seeds, folders):
            folder.mkdir(parents=True, exist_ok=True)
            run(argparse.Namespace(**{**vars(args), "seed": seed}), folder, time.time())
        summary = summarise_seeds(folders)
        (out / "summary.md").write_text(summary + "\n")
        return print(summary)
    if fashion or open_world:
        return run(args, out, start)

    banner(f"1. assets (cached under {cache_root()})")
    vision, llm = efficientnet_lite0(), smollm2_135m()
    pool_folder, _ = split_train(out)  # the validation slice experiments.sweep chooses on is left out of training
    pool = datasets.load_from_disk(str(pool_folder))
    train_split = pool.select(range(min(args.train_images, len(pool))))
    splits = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))
    test = splits["test"].select(range(min(args.test_images, len(splits["test"]))))
    train_data = training_set(out, train_split, DEMO_RENDERS_PER_CLASS)
    print(
        f"vision {vision}\nLLM {llm}\neasy-vqa: {len(train_split)} train images (of {len(pool)} in the training "
        f"pool) + {DEMO_RENDERS_PER_CLASS} renders of each of the 24 classes, {len(test)} test images"
    )

    banner("2. VLAP: caption + assignment prediction (frozen-feature cache)")
    runs = {"vlap": train("vlap", out, train_data, vision, llm, DEMO_BUDGET, args, model=VLAP_METHOD)}
    if args.baseline:
        banner("2b. caption-only baseline (assignment weight 0), same budget")
        runs["caption_only"] = train(
            "caption_only", out, train_data, vision, llm, DEMO_BUDGET, args, model=CAPTION_ONLY
        )

    banner("3. evaluation on easy-vqa test and on out-of-distribution renders")
    sets = evaluation_sets("test", test, args.vqa_questions, args.renders_per_class, RENDER_SEED_REPORTED)
    questions = sets["test"]["questions"]
    results = {name: evaluate_model(folder, sets, test["caption"]) for name, folder in runs.items()}
    baselines = vqa_baselines(
        *load(runs["vlap"], device="cpu"), questions, majority_answers(train_split), test["colour"], test["shape"]
    )
    results["vqa_baselines"] = baselines
    names = {"vlap": "VLAP (caption + assignment)", "caption_only": "caption-only baseline"}
    markdown = markdown_table(
        {names[run]: results[run]["scores"] for run in runs} | {"majority answer / bare LLM (no image)": baselines}
    )
    print(markdown)

    banner("4. captions and top words through pipeline('image-to-text') from the exported folder")
    shown = show(runs["vlap"], test)
    results["shown"] = shown

    banner("5. results")
    plot_words(shown[0]["top_words"], shown[0]["image"], out / "top_words.png")
    finish(
        out,
        start,
        results,
        markdown,
        runs,
        {
            "dataset": "easy-vqa",
            "vision": "EfficientNet-Lite0 (ImageNet), 7x7x1280 map pooled to 9 tokens",
            "llm": "SmolLM2-135M-Instruct",
            "train_images": len(train_split),
            "test_images": len(test),
            "vqa_questions": len(questions),
            "renders": len(sets["renders"]["colours"]),
            "train_renders_per_class": DEMO_RENDERS_PER_CLASS,
            **DEMO_BUDGET,
            "max_steps": args.steps,
            "seed": args.seed,
            "vlap_method": VLAP_METHOD,
        },
    )


if __name__ == "__main__":
    main()
