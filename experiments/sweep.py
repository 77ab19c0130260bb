"""Choose the demo's budget and method variant on a validation slice of easy-vqa's train split (never its test split).

    python -m experiments.sweep [--out outputs/sweep] [--seeds 0 1 2] [--variant name=field=value,...]
                                [--test vlap caption_only]

Every run goes through train.py (checkpoints every `--eval-every` steps); every checkpoint is evaluated on the
validation slice and on out-of-distribution renders (experiments.shapes, a seed of their own) with
`evaluate_shape_world`. Variants are `experiments/configs/variants.yaml` over `budget_base.yaml` unless `--variant`
names others. Writes sweep.json, a median/spread table (sweep.md) and the validation curves (sweep.png).
"""

import argparse
import json
import statistics
from pathlib import Path

import datasets
import torch
import yaml
from safetensors.torch import load_file

from experiments.assets import cache_root, efficientnet_lite0, smollm2_135m
from experiments.easy_vqa import easy_vqa_dataset
from experiments.runs import BASE_BUDGET, VARIANTS, difference, median_and_spread, merged, run_train
from experiments.shape_world import (
    RENDER_SEED_REPORTED,
    RENDER_SEED_VALIDATION,
    TRAIN_RENDERS_PER_CLASS,
    evaluate_shape_world,
    evaluation_sets,
    majority_answers,
    split_train,
    training_set,
    vqa_baselines,
)
from vlap.tasks import load, save_figure

ONE_SEED = ("sif_pooled", "tokens_balanced", "tokens_row_softmax")  # side variants: the first seed only


def train_run(out: Path, name: str, train_data: Path, seed: int, overrides: dict, eval_every: int) -> Path:
    run = out / f"{name}-seed{seed}"
    if (run / "final" / "config.json").exists():
        return run
    config = {
        "vision_model": str(efficientnet_lite0()),
        "text_model": str(smollm2_135m()),
        "train_data": str(train_data),
        "cache_features": str(out / "features"),
        "checkpointing_steps": eval_every,
        "checkpoints_total_limit": 0,
        "eval_steps": 0,
        "num_eval_images": 0,
        "seed": seed,
        "overwrite_output_dir": True,
        "cpu": not torch.cuda.is_available(),
    }
    return run_train(run, merged(BASE_BUDGET, config, overrides))


def model_settings(overrides: dict) -> dict:
    """A variant's model settings, applied at load: they equal the saved ones, except a field training never read,
    such as the text representation of a caption-only run."""
    return overrides.get("model", {})


def evaluate_run(run: Path, sets: dict, overrides: dict) -> dict:
    """Scores of every checkpoint of a run on every evaluation set: {step: {set: scores}}."""
    model, processor = load(run / "final", device="cpu", **model_settings(overrides))
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
    """ "name=field=value,field=value" -> (name, train.py config) with YAML-typed values; VLAPConfig fields go into
    its `model:` section."""
    from modeling_vlap import VLAPConfig

    name, _, fields = text.partition("=")
    overrides = {}
    for item in filter(None, fields.split(",")):
        field, _, value = item.partition("=")
        section = overrides.setdefault("model", {}) if field in VLAPConfig.__annotations__ else overrides
        section[field] = yaml.safe_load(value)
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
    save_figure(figure, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='"name=field=value,..." (train.py and VLAPConfig fields over the base budget); repeatable; default: '
        "experiments/configs/variants.yaml",
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
    variants = dict(map(parse_variant, args.variant)) or {name: {"model": fields} for name, fields in VARIANTS.items()}

    pool, validation = split_train(out)
    train_data = training_set(out, datasets.load_from_disk(str(pool)), args.train_renders_per_class)
    validation = validation.select(range(args.validation_images))
    sets = evaluation_sets("validation", validation, args.questions, args.renders_per_class, RENDER_SEED_VALIDATION)
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
        first = next(out.glob("*-seed*/final"))
        majority = majority_answers(datasets.load_from_disk(str(pool)))
        results["vqa_baselines"] = vqa_baselines(
            *load(first, device="cpu"),
            sets["validation"]["questions"],
            majority,
            validation["colour"],
            validation["shape"],
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
    sets = evaluation_sets("test", test, args.test_questions, args.test_renders_per_class, RENDER_SEED_REPORTED)
    path = out / "test.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name, overrides in variants.items():
        for seed in args.seeds:
            run = out / f"{name}-seed{seed}"
            if str(seed) in results.get(name, {}) or not (run / "final" / "config.json").exists():
                continue
            model, processor = load(run / "final", device="cpu", **model_settings(overrides))
            scores = {set_name: evaluate_shape_world(model, processor, **data) for set_name, data in sets.items()}
            results.setdefault(name, {})[str(seed)] = {"final": scores}
            path.write_text(json.dumps(results, indent=1))
    if "vqa_baselines" not in results:
        majority = majority_answers(datasets.load_from_disk(str(out / "train-pool")))
        first = next(out / f"{name}-seed{seed}" / "final" for name in variants for seed in args.seeds)
        results["vqa_baselines"] = vqa_baselines(
            *load(first, device="cpu"), sets["test"]["questions"], majority, test["colour"], test["shape"]
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
    """Which differences exceed the seed spread (`runs.difference`), per evaluation set and metric."""
    lines = []
    for set_name in next(iter(results[first].values()))["final"]:
        for metric in metrics:
            a = [seed["final"][set_name].get(metric) for seed in results[first].values()]
            b = [seed["final"][set_name].get(metric) for seed in results[second].values()]
            if None not in a and None not in b:
                lines.append(f"- {set_name} {metric}: {first} - {second} = {difference(a, b)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
