"""LangBridge transfer across LLMs on real models, offline: EfficientNet-Lite0 vision, easy-vqa captions.

Three models with the demo's budget (960 train images, --steps x 16, lr 1e-3, 9 visual tokens, frozen-feature cache):
  1. LangBridge trained on SmolLM2-135M-Instruct (its vocabulary subset restricted to strings Gemma 3 also has),
  2. the same bridge moved to Gemma 3 270M with `vlap transfer` (no training),
  3. a LangBridge trained directly on Gemma 3 270M,
evaluated side by side on easy-vqa test (caption metrics, captions naming colour and shape, zero-shot VQA,
zero-shot classification, relevance-aware retrieval R@1).

    python bench/langbridge_transfer.py [--steps 60] [--out outputs/langbridge] [--json results/langbridge.json]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vlap.assets import cache_root, efficientnet_lite0, gemma3_270m, smollm2_135m  # noqa: E402
from vlap.demo import banner, encode_test_split, evaluate_model, train  # noqa: E402
from vlap.easy_vqa import easy_vqa_dataset  # noqa: E402
from vlap.evaluation import markdown_table  # noqa: E402
from vlap.langbridge import transfer  # noqa: E402

SHOWN = ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "test: caption_colour_shape", "test: vqa", "test: classification_feature",
         "test: image_to_text_class_R@1")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/langbridge")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-images", type=int, default=960)
    parser.add_argument("--test-images", type=int, default=150)
    parser.add_argument("--vqa-questions", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    start, out = time.time(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    vision, smollm2, gemma = efficientnet_lite0(), smollm2_135m(), gemma3_270m()
    splits = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))
    train_data = out / "easy-vqa-train"
    if not (train_data / "state.json").exists():
        splits["train"].shuffle(seed=0).select(range(args.train_images)).save_to_disk(str(train_data))
    test = splits["test"].select(range(args.test_images))
    langbridge = {"bridge_type": "langbridge", "langbridge_transfer_llms": str(gemma), "learning_rate": args.learning_rate}

    timings = {}
    banner("1. LangBridge on SmolLM2-135M")
    t = time.time()
    runs = {"SmolLM2 (trained)": train("langbridge_smollm2", out, train_data, vision, smollm2, args, **langbridge)}
    timings["train_smollm2_s"] = time.time() - t
    banner("2. moved to Gemma 3 270M without training")
    moved = out / "langbridge_smollm2_to_gemma3"
    if not (moved / "config.json").exists():
        report = transfer(str(runs["SmolLM2 (trained)"]), str(gemma), moved)
        print(f"{report['found']} of {report['strings']} strings found in Gemma 3 ({report['coverage']:.0%})")
    runs["Gemma 3 (transferred, no training)"] = moved
    banner("3. LangBridge trained directly on Gemma 3 270M")
    t = time.time()
    runs["Gemma 3 (trained)"] = train("langbridge_gemma3", out, train_data, vision, gemma, args, **langbridge)
    timings["train_gemma3_s"] = time.time() - t

    banner("4. evaluation on easy-vqa test")
    vision_states, questions = encode_test_split(test, args.vqa_questions)
    sets = {"test": {"vision_hidden_states": vision_states, "colours": test["colour"], "shapes": test["shape"],
                     "questions": questions}}  # fmt: skip
    results = {name: evaluate_model(folder, sets, test["caption"]) for name, folder in runs.items()}
    table = markdown_table({name: {k: r["scores"][k] for k in SHOWN if k in r["scores"]} for name, r in results.items()})
    print(table)
    for name, result in results.items():
        print(f"{name}: " + "; ".join(repr(c) for c in result["examples"]["test"]["caption_examples"][:3]))
    summary = {
        "setup": {"steps": args.steps, "batch_size": 16, "learning_rate": args.learning_rate,
                  "train_images": args.train_images, "test_images": args.test_images, "vqa_questions": len(questions),
                  "command": "python bench/langbridge_transfer.py " + " ".join(argv or sys.argv[1:])},
        "timings": timings, "seconds": round(time.time() - start, 1), "table": table,
        "results": {name: {"scores": r["scores"], "examples": r["examples"]} for name, r in results.items()},
    }  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
