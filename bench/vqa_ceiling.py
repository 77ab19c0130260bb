"""The describe-then-answer VQA ceiling of each offline LLM, no bridge involved: the bare frozen LLM answering easy-vqa
questions from each image's true caption in a VQA layout (the model's BOS first), beside the same LLM with no
description and the majority answer of each question type.

    python -m bench.vqa_ceiling [--llms smollm2-135m gemma3-270m] [--questions 300] [--split test|validation]
        [--question-seeds 0 1] [--layouts shape colour_shape ...] [--json FILE]

The layouts differ only in the text examples before the image's description, each a description, a question and a
one-word answer (layout "shape", one example of a shape question, is `tasks.VQA_TEMPLATE`, `vlap vqa`'s default). The
questions are a fixed random subset (`experiments.shape_world.questions_of`; test, seed 0: the 300 the sweep's test
report uses; validation: of the validation slice of the train split the sweep chooses on); the majority answers come
from the sweep's training pool.
"""

import argparse
import json
from pathlib import Path

import datasets

from experiments.assets import cache_root, efficientnet_lite0, gemma3_270m, smollm2_135m
from experiments.easy_vqa import easy_vqa_dataset
from experiments.shape_world import majority_answers, questions_of, split_train, true_caption_scores, vqa_baselines
from modeling_vlap import VLAPForConditionalGeneration, VLAPProcessor
from vlap.tasks import FORMAT_EXAMPLE, VQA_TEMPLATE

LLMS = {"smollm2-135m": smollm2_135m, "gemma3-270m": gemma3_270m}
DESCRIBED = VQA_TEMPLATE.removeprefix(FORMAT_EXAMPLE)  # "{prompt} {caption}.\nQuestion: {question}\nAnswer:"
EXAMPLES = {
    "colour": "{prompt} a green circle.\nQuestion: What color is the shape?\nAnswer: green\n",
    "shape": FORMAT_EXAMPLE,
    "yes": "{prompt} a blue rectangle.\nQuestion: Is there a blue shape?\nAnswer: yes\n",
    "no": "{prompt} a red triangle.\nQuestion: Does the image contain a circle?\nAnswer: no\n",
}
LAYOUTS = {  # name: the examples, in order
    "shape": ("shape",),  # tasks.VQA_TEMPLATE
    "colour_shape": ("colour", "shape"),
    "colour_shape_no": ("colour", "shape", "no"),
    "colour_yes_shape_no": ("colour", "yes", "shape", "no"),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llms", nargs="+", choices=sorted(LLMS), default=sorted(LLMS))
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--question-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=["shape"])
    parser.add_argument("--out", default="outputs/vqa-ceiling", help="where the training pool is kept")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pool, validation = split_train(Path(args.out))
    rows = (
        validation
        if args.split == "validation"
        else datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["test"]
    )
    majority = majority_answers(datasets.load_from_disk(str(pool)))
    results = {}
    for name in args.llms:  # an untrained bridge: only its LLM, tokenizer and layout are used
        vision, llm = str(efficientnet_lite0()), str(LLMS[name]())
        model = VLAPForConditionalGeneration.from_vision_text_pretrained(vision, llm).eval()
        processor = VLAPProcessor.from_vision_text_pretrained(vision, llm)
        for seed in args.question_seeds:
            questions = questions_of(rows, args.questions, seed=seed)
            baselines = vqa_baselines(model, processor, questions, majority)  # no image, majority: layout-free
            for layout in args.layouts:
                template = "".join(EXAMPLES[example] for example in LAYOUTS[layout]) + DESCRIBED
                ceiling = true_caption_scores(
                    model, processor, questions, rows["colour"], rows["shape"], template=template
                )
                key = f"{name}/{layout}/questions{seed}"
                results[key] = {key: round(value, 3) for key, value in {**baselines, **ceiling}.items()}
                print(key, json.dumps(results[key]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": args.questions, "split": args.split, **results}, indent=2))


if __name__ == "__main__":
    main()
