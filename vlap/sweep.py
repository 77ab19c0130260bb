"""Choose the demo's budget and method variant on a validation slice of easy-vqa's train split (never its test split).

    python -m vlap.sweep [--out outputs/sweep] [--seeds 0 1 2] [--variant name=field=value,...]
                         [--test vlap caption_only]

Every run goes through train.py (checkpoints every `--eval-every` steps); every checkpoint is evaluated on the
validation slice and on out-of-distribution renders (vlap.shapes, a seed of their own) with
`evaluate_shape_world`. Writes sweep.json, a median/spread table (sweep.md) and the validation curves (sweep.png).
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import datasets
import torch
import yaml
from safetensors.torch import load_file, save_file

from vlap.assets import cache_root, efficientnet_lite0, smollm2_135m
from vlap.easy_vqa import easy_vqa_dataset
from vlap.shapes import render_dataset, render_shapes

REPO = Path(__file__).resolve().parent.parent
VALIDATION_ROWS = 500  # carved from the (shuffled) train split; the rest is the training pool
RENDER_SEED_TRAIN = 0  # renders mixed into training (TRAIN_RENDERS_PER_CLASS of each of the 24 classes)
TRAIN_RENDERS_PER_CLASS = 20
RENDER_SEED_VALIDATION = 1  # renders used to choose; the README's held-out renders use another seed
RENDER_SEED_REPORTED = 2
# The budget the sweep's variants start from: where the method was chosen (200 steps of 16, under one epoch of the
# pool), and Fashion-MNIST's demo budget.
BASE_BUDGET = {
    "num_visual_tokens": 9,
    "batch_size": 16,
    "max_steps": 200,
    "learning_rate": 1e-2,
    "warmup_steps": 20,
    "max_caption_length": 16,
}
# `make demo`'s, chosen on validation (README, "A longer budget"): 600 steps with 60 renders of each class in
# training, under bfloat16 autocast, whose steps take 0.56 s on 2 cores against 1.0 s in float32 (the word codes,
# divided by 0.01, stay float32: VLAPForConditionalGeneration.word_codes).
DEMO_BUDGET = {**BASE_BUDGET, "max_steps": 600, "warmup_steps": 60, "mixed_precision": "bf16"}
DEMO_RENDERS_PER_CLASS = 60
VLAP_METHOD = {"text_representation": "word_assignments", "word_marginal_weight": 0.01}
# The baseline: no L_map, and VLAP's text side (so retrieval and classification compare the same text features).
CAPTION_ONLY = {"assignment_loss_weight": 0.0, "text_representation": VLAP_METHOD["text_representation"]}
# What the sweep compares (issue 14's variants): every method field is spelled out, so defaults never leak in.
VARIANTS = {
    "caption_only": CAPTION_ONLY,
    "vlap": VLAP_METHOD,
    "paper": {"text_representation": "hidden_states", "word_marginal_weight": None},  # LLM states, balanced plan
    "sif_pooled": {"text_representation": "word_embeddings", "word_marginal_weight": 0.01},
    "tokens_balanced": {"text_representation": "word_assignments", "word_marginal_weight": None},
    "tokens_row_softmax": {"text_representation": "word_assignments", "word_marginal_weight": 0.0},
}
ONE_SEED = ("sif_pooled", "tokens_balanced", "tokens_row_softmax")  # side variants: the first seed only


def split_train(out: Path) -> tuple[Path, datasets.Dataset]:
    """(training-pool folder, validation slice): a fixed split of easy-vqa's captioned train images."""
    train = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["train"].shuffle(seed=0)
    pool, validation = train.select(range(VALIDATION_ROWS, len(train))), train.select(range(VALIDATION_ROWS))
    folder = out / "train-pool"
    if not (folder / "state.json").exists():
        pool.save_to_disk(str(folder))
    return folder, validation


def training_set(out: Path, easy_vqa_rows: datasets.Dataset, renders_per_class: int = TRAIN_RENDERS_PER_CLASS) -> Path:
    """The folder train.py reads: `easy_vqa_rows` (of the training pool) plus `renders_per_class` renders of every
    class (seed RENDER_SEED_TRAIN), in the columns both share."""
    folder = out / f"train-{len(easy_vqa_rows)}-renders{renders_per_class}"
    if not (folder / "state.json").exists():
        renders = render_dataset(renders_per_class, RENDER_SEED_TRAIN)
        rows = easy_vqa_rows.select_columns(list(renders.features)).cast(renders.features)
        datasets.concatenate_datasets([rows, renders]).save_to_disk(str(folder))
    return folder


@torch.no_grad()
def vision_states(images, name: str) -> torch.Tensor:
    """The frozen EfficientNet-Lite0 output of `images`, computed once and kept under the asset cache (keyed by the
    images' pixels, so other images under the same name are never served stale features)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.convert("RGB").tobytes())
    path = cache_root() / "eval-features" / f"{name}-{digest.hexdigest()[:16]}.safetensors"
    if path.exists():
        return load_file(path)["states"]
    from transformers import AutoImageProcessor

    from modeling_vlap.efficientnet_lite import EfficientNetLiteModel

    folder = efficientnet_lite0()
    model, processor = EfficientNetLiteModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    states = torch.cat(
        [
            model(
                pixel_values=processor([im.convert("RGB") for im in images[s : s + 32]], return_tensors="pt")[
                    "pixel_values"
                ]
            ).last_hidden_state
            for s in range(0, len(images), 32)
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": states.contiguous()}, path)
    return states


def questions_of(dataset, limit: int, seed: int = 0) -> list[tuple]:
    """(row, question, [answer]) triples, a fixed random subset of `limit`."""
    triples = [
        (row, q, [a])
        for row, (qs, ans) in enumerate(zip(dataset["questions"], dataset["answers"]))
        for q, a in zip(qs, ans)
    ]
    order = torch.randperm(len(triples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [triples[i] for i in order[:limit]]


def majority_answers(dataset) -> dict:
    """The most frequent training answer of each question type (the majority baseline)."""
    from collections import Counter

    from vlap.shapes import question_type

    counts = {}
    for qs, ans in zip(dataset["questions"], dataset["answers"]):
        for q, a in zip(qs, ans):
            counts.setdefault(question_type(q), Counter())[a] += 1
    return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


def train_run(out: Path, name: str, train_data: Path, seed: int, overrides: dict, eval_every: int) -> Path:
    run = out / f"{name}-seed{seed}"
    if (run / "final" / "config.json").exists():
        return run
    config = {
        "vision_model": str(efficientnet_lite0()),
        "text_model": str(smollm2_135m()),
        "train_data": str(train_data),
        **BASE_BUDGET,
        "cache_features": str(out / "features"),
        "checkpointing_steps": eval_every,
        "checkpoints_total_limit": 0,
        "eval_steps": 0,
        "num_eval_images": 0,
        "output_dir": str(run),
        "seed": seed,
        "overwrite_output_dir": True,
        "cpu": not torch.cuda.is_available(),
        **overrides,
    }
    path = out / f"{name}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(path)], check=True, cwd=REPO)
    return run


def median_and_spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def load_model(folder: Path, overrides: dict | None = None):
    """An exported model (in eval mode) and its processor. The VLAPConfig fields among `overrides` (a variant's) are
    applied at load: they equal the saved ones, except a field training never read, such as the text representation
    of a caption-only run."""
    from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration, VLAPProcessor

    fields = {k: v for k, v in (overrides or {}).items() if k in VLAPConfig.__annotations__}
    model = VLAPForConditionalGeneration.from_pretrained(folder, **fields).eval()
    return model, VLAPProcessor.from_pretrained(folder)


def evaluate_run(run: Path, sets: dict, overrides: dict) -> dict:
    """Scores of every checkpoint of a run on every evaluation set: {step: {set: scores}}."""
    from vlap.evaluation import evaluate_shape_world

    model, processor = load_model(run / "final", overrides)
    curve = {}
    for checkpoint in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        step = int(checkpoint.name.split("-")[1])
        curve[step] = {name: evaluate_shape_world(model, processor, **data) for name, data in sets.items()}
        print(
            f"{run.name} step {step}: "
            + json.dumps(
                {n: {k: round(v, 3) for k, v in s.items() if isinstance(v, float)} for n, s in curve[step].items()}
            ),
            flush=True,
        )
    return curve


def parse_variant(text: str) -> tuple[str, dict]:
    """ "name=field=value,field=value" -> (name, {field: value}) with YAML-typed values."""
    name, _, fields = text.partition("=")
    overrides = {}
    for item in filter(None, fields.split(",")):
        field, _, value = item.partition("=")
        overrides[field] = yaml.safe_load(value)
    return name, overrides


def summarise(results: dict, metrics: list[str]) -> str:
    """Median [min, max] over seeds of the last checkpoint, per variant and evaluation set."""
    lines = ["| variant | set | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for variant, seeds in results.items():
        finals = [curve[max(curve, key=lambda step: int(step) if step.isdigit() else 0)] for curve in seeds.values()]
        for set_name in finals[0]:
            cells = [
                median_and_spread([f[set_name][m] for f in finals]) if m in finals[0][set_name] else "-"
                for m in metrics
            ]
            lines.append(f"| {variant} | {set_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(results: dict, path: Path, metrics=("caption_colour_shape", "classification_feature", "vqa")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for axis, metric in zip(axes, metrics):
        for variant, seeds in results.items():
            steps = sorted({int(s) for curve in seeds.values() for s in curve})
            values = [
                [curve[str(s)]["validation"].get(metric) for curve in seeds.values() if str(s) in curve] for s in steps
            ]
            medians = [statistics.median(v) if v and None not in v else float("nan") for v in values]
            (line,) = axis.plot(steps, medians, marker="o", label=variant)
            axis.fill_between(
                steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=line.get_color()
            )
        axis.set_title(f"{metric} (validation)")
        axis.set_xlabel("step")
        axis.set_ylim(0, 1.02)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='"name=field=value,..." (TrainConfig fields over BASE_BUDGET); repeatable; default: VARIANTS',
    )
    parser.add_argument("--one-seed", nargs="*", default=list(ONE_SEED), help="variants run with the first seed only")
    parser.add_argument(
        "--train-renders-per-class",
        type=int,
        default=TRAIN_RENDERS_PER_CLASS,
        help="renders of each class mixed into training (0: easy-vqa images only)",
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--validation-images", type=int, default=200)
    parser.add_argument("--renders-per-class", type=int, default=5)
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument(
        "--test",
        nargs="*",
        default=None,
        metavar="VARIANT",
        help="after choosing: evaluate these variants' final models (every seed) once on all of "
        "easy-vqa test and on held-out renders (seed 2); writes test.json / test.md",
    )
    parser.add_argument("--test-questions", type=int, default=300)
    parser.add_argument("--test-renders-per-class", type=int, default=10)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = dict(map(parse_variant, args.variant)) or VARIANTS

    pool, validation = split_train(out)
    train_data = training_set(out, datasets.load_from_disk(str(pool)), args.train_renders_per_class)
    validation = validation.select(range(args.validation_images))
    renders, render_colours, render_shapes_ = render_shapes(args.renders_per_class, RENDER_SEED_VALIDATION)
    sets = {
        "validation": {
            "vision_hidden_states": vision_states(validation["image"], f"validation-{len(validation)}"),
            "colours": validation["colour"],
            "shapes": validation["shape"],
            "questions": questions_of(validation, args.questions),
        },
        "renders": {
            "vision_hidden_states": vision_states(renders, f"renders-seed{RENDER_SEED_VALIDATION}-{len(renders)}"),
            "colours": render_colours,
            "shapes": render_shapes_,
        },
    }
    results_path = out / "sweep.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for seed in args.seeds:  # seeds outermost: an interrupted sweep still compares every variant
        for name, overrides in variants.items():
            if str(seed) in results.get(name, {}) or (seed != args.seeds[0] and name in args.one_seed):
                continue
            run = train_run(out, name, train_data, seed, overrides, args.eval_every)
            curve = evaluate_run(run, sets, overrides)
            results.setdefault(name, {})[str(seed)] = {str(step): scores for step, scores in curve.items()}
            results_path.write_text(json.dumps(results, indent=1))
    if "vqa_baselines" not in results:
        from vlap.evaluation import vqa_baselines

        first = next(out.glob("*-seed*/final"))
        majority = majority_answers(datasets.load_from_disk(str(pool)))
        results["vqa_baselines"] = vqa_baselines(
            *load_model(first), sets["validation"]["questions"], majority, validation["colour"], validation["shape"]
        )
        results_path.write_text(json.dumps(results, indent=1))
    print("VQA baselines on the validation questions: " + json.dumps(results["vqa_baselines"]))
    results = {name: seeds for name, seeds in results.items() if name != "vqa_baselines"}
    metrics = [
        "caption_colour_shape",
        "classification_feature",
        "classification_code",
        "image_to_text_class_R@1",
        "top5_colour_and_shape",
        "arithmetic_hit_rate",
        "vqa",
        "vqa_colour",
        "vqa_shape",
        "vqa_yes/no",
    ]
    table = summarise(results, metrics)
    (out / "sweep.md").write_text(table + "\n")
    plot_curves(results, out / "sweep.png")
    print(table)
    if args.test:
        test_report(out, {name: variants[name] for name in args.test}, args)


def test_report(out: Path, variants: dict, args) -> None:
    """The chosen variants' final models, every seed, on all captioned easy-vqa test images and held-out renders."""
    test = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["test"]
    renders, colours, shapes = render_shapes(args.test_renders_per_class, RENDER_SEED_REPORTED)
    sets = {
        "test": {
            "vision_hidden_states": vision_states(test["image"], f"test-{len(test)}"),
            "colours": test["colour"],
            "shapes": test["shape"],
            "questions": questions_of(test, args.test_questions),
        },
        "renders": {
            "vision_hidden_states": vision_states(renders, f"renders-{RENDER_SEED_REPORTED}-{len(renders)}"),
            "colours": colours,
            "shapes": shapes,
        },
    }
    path = out / "test.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name, overrides in variants.items():
        for seed in args.seeds:
            run = out / f"{name}-seed{seed}"
            if str(seed) in results.get(name, {}) or not (run / "final" / "config.json").exists():
                continue
            from vlap.evaluation import evaluate_shape_world

            model, processor = load_model(run / "final", overrides)
            scores = {set_name: evaluate_shape_world(model, processor, **data) for set_name, data in sets.items()}
            results.setdefault(name, {})[str(seed)] = {"final": scores}
            path.write_text(json.dumps(results, indent=1))
    if "vqa_baselines" not in results:
        from vlap.evaluation import vqa_baselines

        majority = majority_answers(datasets.load_from_disk(str(out / "train-pool")))
        first = next(out / f"{name}-seed{seed}" / "final" for name in variants for seed in args.seeds)
        results["vqa_baselines"] = vqa_baselines(
            *load_model(first), sets["test"]["questions"], majority, test["colour"], test["shape"]
        )
        path.write_text(json.dumps(results, indent=1))
    baselines = results["vqa_baselines"]
    results = {name: results[name] for name in variants if name in results}  # test.json may hold other variants
    metrics = [
        "caption_colour_shape",
        "classification_feature",
        "classification_code",
        "image_to_text_class_R@1",
        "text_to_image_class_R@1",
        "image_to_text_class_R@1_code",
        "text_to_image_class_R@1_code",
        "top5_colour_and_shape",
        "arithmetic_hit_rate",
        "vqa",
        "vqa_colour",
        "vqa_shape",
        "vqa_yes/no",
        "vqa_paper_layout",
        "closed_set_vqa_colour",
        "closed_set_vqa_shape",
        "closed_set_vqa_yes/no",
    ]
    table = summarise(results, metrics)
    table += "\n\nVQA baselines on the same test questions: " + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items())
    names = list(results)
    if len(names) == 2:
        table += "\n\n" + separation(results, *names, metrics)
    (out / "test.md").write_text(table + "\n")
    print(table)


def separation(results: dict, first: str, second: str, metrics: list[str]) -> str:
    """Which differences exceed the seed spread: the two variants' [min, max] ranges over seeds do not overlap."""
    lines = []
    for set_name in next(iter(results[first].values()))["final"]:
        for metric in metrics:
            a = [seed["final"][set_name].get(metric) for seed in results[first].values()]
            b = [seed["final"][set_name].get(metric) for seed in results[second].values()]
            if None in a or None in b:
                continue
            verdict = "exceeds the spread" if min(a) > max(b) or min(b) > max(a) else "within the spread"
            diff = statistics.median(a) - statistics.median(b)
            lines.append(f"- {set_name} {metric}: {first} - {second} = {diff:+.3f} ({verdict})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
