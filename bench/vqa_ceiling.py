"""The describe-then-answer VQA ceiling of each offline LLM, no bridge involved: the bare frozen LLM answering easy-vqa
test questions from each image's true caption in the layout VLAP answers in (`tasks.VQA_TEMPLATE`, the model's BOS
first), beside the same LLM with no description and the majority answer of each question type.

    python bench/vqa_ceiling.py [--llms smollm2-135m gemma3-270m] [--questions 300] [--json FILE]

The questions are the 300 the sweep's test report uses (`vlap.sweep.questions_of`, seed 0); the majority answers come
from the sweep's training pool.
"""

import argparse
import json
from pathlib import Path

import datasets

from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor
from vlap.assets import cache_root, efficientnet_lite0, gemma3_270m, smollm2_135m
from vlap.easy_vqa import easy_vqa_dataset
from vlap.evaluation import vqa_baselines
from vlap.sweep import majority_answers, questions_of, split_train

LLMS = {"smollm2-135m": smollm2_135m, "gemma3-270m": gemma3_270m}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llms", nargs="+", choices=sorted(LLMS), default=sorted(LLMS))
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--out", default="outputs/vqa-ceiling", help="where the training pool is kept")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    test = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["test"]
    questions = questions_of(test, args.questions)
    pool, _ = split_train(Path(args.out))
    majority = majority_answers(datasets.load_from_disk(str(pool)))
    results = {}
    for name in args.llms:  # an untrained bridge: only its LLM, tokenizer and layout are used
        vision, llm = str(efficientnet_lite0()), str(LLMS[name]())
        model = VLAPForConditionalGeneration.from_vision_text_pretrained(vision, llm).eval()
        processor = VLAPProcessor.from_vision_text_pretrained(vision, llm)
        scores = vqa_baselines(model, processor, questions, majority, test["colour"], test["shape"])
        results[name] = {key: round(value, 3) for key, value in scores.items()}
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": len(questions), **results}, indent=2))


if __name__ == "__main__":
    main()
