"""The word bridge on the open-vocabulary drawings (experiments.open_vocabulary): does a caption that names a drawing's
concept on SmolLM2-135M still name it once the bridge is moved to Gemma 3 270M without training?

Per seed: a word bridge trained with train.py on the clip-art training split (captions as phrases, the demo's form;
its words: the captions' most frequent content words), read by SmolLM2 (source) and moved to Gemma 3 by re-tokenising
its words (`vlap transfer`, no training; moved); each scored by the share of held-out drawings of seen concepts whose
caption names the concept (`vlap.evaluation.named_class`, as the open-vocabulary demo scores captions).

    python -m bench.word_bridge_open_vocabulary [--seeds 0 1 2] [--eval-split test|validation] [--json FILE]
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import datasets

from bench.langbridge_transfer import WORD_BRIDGE_PROMPT
from experiments.assets import cache_root, efficientnet_lite0, gemma3_270m, smollm2_135m, vision_states
from experiments.demo import banner, open_vocabulary_training_folder, train
from experiments.open_vocabulary import open_vocabulary_dataset
from experiments.runs import DEMO_BUDGET
from vlap.evaluation import named_class
from vlap.langbridge import transfer
from vlap.tasks import caption, load


def names_concept(folder: Path, rows, names: list[str], states) -> tuple[float, list[dict]]:
    """Share of `rows` whose caption names its concept (among `names`), and the first captions with their words."""
    model, processor = load(str(folder))
    captions = caption(model, processor, vision_hidden_states=states, max_new_tokens=12, batch_size=32, progress=True)
    right = [named_class(text, names) == names.index(concept) for text, concept in zip(captions, rows["concept"])]
    words = model.get_image_words(vision_hidden_states=states[:6].to(model.device))
    examples = [
        {"concept": concept, "words": said, "caption": text}
        for concept, said, text in zip(rows["concept"][:6], words, captions[:6])
    ]
    return sum(right) / len(right), examples


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/word-bridge-open-vocabulary")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1000, help="the word bridge's steps of 16 (no LLM in them)")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--eval-split", choices=("test", "validation"), default="test")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    start, out = time.time(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    splits = datasets.load_from_disk(str(open_vocabulary_dataset(cache_root())))
    train_data = open_vocabulary_training_folder(splits, out, "phrase")
    names = sorted({c for split in ("train", "validation", "test") for c in splits[split]["concept"]})
    rows = splits[args.eval_split]
    states = vision_states(rows["image"], f"open-vocabulary-{args.eval_split}-{len(rows)}")
    budget = {
        "learning_rate": args.learning_rate,
        "mixed_precision": "no",
        "model": {"bridge_type": "words", "assignment_loss_weight": 0.0, "prompt": WORD_BRIDGE_PROMPT},
    }
    per_seed = {}
    for seed in args.seeds:
        banner(f"seed {seed}: word bridge on the open-vocabulary drawings, SmolLM2-135M (source)")
        plan = SimpleNamespace(steps=args.steps, seed=seed)
        vision, llm = efficientnet_lite0(), smollm2_135m()
        source = train(
            f"seed{seed}-words", out, train_data, vision, llm, DEMO_BUDGET, plan, caption_column="captions", **budget
        )
        moved = out / f"seed{seed}-words-to-gemma3"
        shutil.rmtree(moved, ignore_errors=True)
        transfer(str(source), str(gemma3_270m()), moved)
        figures, examples = {}, {}
        for name, folder in (("source", source), ("moved", moved)):
            figures[name], examples[name] = names_concept(folder, rows, names, states)
            print(f"seed {seed}, {name}: caption names the concept {figures[name]:.3f}; {examples[name][:3]}")
        figures["moved_over_source"] = figures["moved"] / figures["source"] if figures["source"] else None
        per_seed[str(seed)] = {"caption_names_concept": figures, "examples": examples}

    def median(key: str) -> float | None:
        values = [run["caption_names_concept"][key] for run in per_seed.values()]
        values = [value for value in values if value is not None]
        return round(statistics.median(values), 4) if values else None

    result = {
        "eval_split": args.eval_split,
        "images": len(rows),
        "concepts": len(names),
        "seeds": len(per_seed),
        "source_caption_names_concept": median("source"),
        "moved_caption_names_concept": median("moved"),
        "moved_over_source": median("moved_over_source"),
        "per_seed": per_seed,
        "command": "python -m bench.word_bridge_open_vocabulary " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
