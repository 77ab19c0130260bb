"""`make demo`: VLAP end to end on real frozen models, offline.

EfficientNet-Lite0 (ImageNet) + SmolLM2-135M-Instruct, bridged on easy-vqa captions derived from each image's own
answers. Trains VLAP (caption + assignment) and the caption-only baseline (LiMBeR-style) with the same budget from
the frozen-feature cache, evaluates both on easy-vqa test (captioning, zero-shot VQA, retrieval), shows captions and
top words through `pipeline("image-to-text")`, and writes results.json, results.md and PNG plots.

    python -m vlap.demo [--out outputs/demo] [--train-images 960] [--steps 60]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import torch
import yaml

from vlap.assets import cache_root, efficientnet_lite0, smollm2_135m
from vlap.easy_vqa import easy_vqa_dataset
from vlap.evaluation import evaluate_captioning, evaluate_retrieval, evaluate_vqa, markdown_table
from vlap.tasks import first_line, plot_words, read_words

REPO = Path(__file__).resolve().parent.parent


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def train(name: str, out: Path, train_data: Path, vision: Path, llm: Path, args, **overrides) -> Path:
    config = {
        "vision_model": str(vision), "text_model": str(llm), "train_data": str(train_data),
        "num_visual_tokens": 9, "batch_size": 16, "max_steps": args.steps, "learning_rate": args.learning_rate,
        "warmup_steps": max(args.steps // 10, 1), "max_caption_length": 16, "cache_features": str(out / "features"),
        "checkpointing_steps": args.steps, "checkpoints_total_limit": 1, "eval_steps": 0, "num_eval_images": 4,
        "output_dir": str(out / name), "seed": 0, "cpu": not torch.cuda.is_available(), **overrides,
    }  # fmt: skip
    config_path = out / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(config_path)], check=True, cwd=REPO)
    return out / name / "final"


def evaluate_model(folder: Path, test: datasets.Dataset, vision_states: torch.Tensor, questions: list[tuple], batch: int):
    """Captioning, zero-shot VQA and retrieval of one exported model on the test images (vision run once)."""
    from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor

    model = VLAPForConditionalGeneration.from_pretrained(folder).eval()
    processor = VLAPProcessor.from_pretrained(folder)
    shared = {"vision_hidden_states": vision_states, "batch_size": batch}
    caption = evaluate_captioning(model, processor, references=test["caption"], max_new_tokens=12, **shared)
    vqa = evaluate_vqa(model, processor, questions=questions, max_new_tokens=4, **shared)
    retrieval = evaluate_retrieval(model, processor, references=test["caption"], **shared)
    return {
        "scores": {**caption["scores"], **vqa["scores"], **retrieval["scores"]},
        "unavailable": caption["unavailable"], "examples": caption["examples"], "vqa_examples": vqa["examples"],
    }  # fmt: skip


@torch.no_grad()
def encode_test_split(folder: Path, test: datasets.Dataset, max_questions: int) -> tuple[torch.Tensor, list[tuple]]:
    """The frozen vision output of the test images, computed once with `folder`'s vision model and shared by every
    model with the same vision tower, and the (image row, question, [answer]) VQA triples (easy-vqa: one answer)."""
    from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor

    model = VLAPForConditionalGeneration.from_pretrained(folder).eval()
    processor = VLAPProcessor.from_pretrained(folder)
    vision_states = torch.cat([model.get_vision_hidden_states(processor(images=test[s : s + 32]["image"])["pixel_values"])
                               for s in range(0, len(test), 32)])  # fmt: skip
    questions = [(row, question, [answer])
                 for row, (qs, ans) in enumerate(zip(test["questions"], test["answers"])) for question, answer in zip(qs, ans)]  # fmt: skip
    return vision_states, questions[:max_questions]


def plot_losses(out: Path, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, folder in runs.items():
        records = [json.loads(line) for line in (folder.parent / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if "caption_loss" in r]
        axis.plot(steps, [r["caption_loss"] for r in records if "caption_loss" in r], label=f"{name}: caption loss")
        if any("assignment_loss" in r for r in records):
            axis.plot(steps, [r["assignment_loss"] * 0.1 for r in records if "assignment_loss" in r],
                      label=f"{name}: 0.1 x assignment loss", linestyle="--")  # fmt: skip
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "loss_curves.png", dpi=120)


def show(folder: Path, test: datasets.Dataset) -> list[dict]:
    """Captions and top words through pipeline("image-to-text") loaded from the exported folder (remote code)."""
    from skimage import data as skimage_data
    from PIL import Image
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--train-images", type=int, default=960)
    parser.add_argument("--test-images", type=int, default=150)
    parser.add_argument("--vqa-questions", type=int, default=300)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    banner(f"1. assets (cached under {cache_root()})")
    vision, llm = efficientnet_lite0(), smollm2_135m()
    splits = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))
    train_split = splits["train"].shuffle(seed=0).select(range(min(args.train_images, len(splits["train"]))))
    test = splits["test"].select(range(min(args.test_images, len(splits["test"]))))
    train_data = out / "easy-vqa-train"
    if not (train_data / "state.json").exists():
        train_split.save_to_disk(str(train_data))
    print(f"vision {vision}\nLLM {llm}\neasy-vqa: {len(train_split)} train images (of {len(splits['train'])} "
          f"captioned), {len(test)} test images")  # fmt: skip

    banner("2. VLAP: caption + assignment prediction (frozen-feature cache)")
    runs = {"vlap": train("vlap", out, train_data, vision, llm, args)}
    banner("3. caption-only baseline (assignment weight 0), same budget")
    runs["caption_only"] = train("caption_only", out, train_data, vision, llm, args, assignment_loss_weight=0.0)

    banner("4. evaluation on easy-vqa test")
    vision_states, questions = encode_test_split(runs["vlap"], test, args.vqa_questions)
    results = {name: evaluate_model(folder, test, vision_states, questions, batch=32) for name, folder in runs.items()}
    markdown = markdown_table({"VLAP (caption + assignment)": results["vlap"]["scores"],
                               "caption-only baseline": results["caption_only"]["scores"]})  # fmt: skip
    print(markdown)

    banner("5. captions and top words through pipeline('image-to-text') from the exported folder")
    shown = show(runs["vlap"], test)
    results["shown"] = shown

    banner("6. results")
    results["setup"] = {
        "vision": "EfficientNet-Lite0 (ImageNet), 7x7x1280 map pooled to 9 tokens", "llm": "SmolLM2-135M-Instruct",
        "train_images": len(train_split), "test_images": len(test), "vqa_questions": len(questions),
        "steps": args.steps, "batch_size": 16, "learning_rate": args.learning_rate,
        "command": "make demo", "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown + "\n")
    plot_losses(out, runs)
    plot_words(shown[0]["top_words"], shown[0]["image"], out / "top_words.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'loss_curves.png'}, {out / 'top_words.png'}")
    print(f"demo done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
