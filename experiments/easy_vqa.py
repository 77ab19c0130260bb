"""easy-vqa (PyPI easy-vqa, MIT) as a `datasets` dataset with captions derived from each image's own answers.

Every easy-vqa image shows one coloured shape. Its questions reveal the colour ("what color is the shape?" ->
"blue"; "what is the blue shape?") and the shape ("what shape is in the image?" -> "circle"); the caption is built
only from those answers of that image, in a few templates. The test split keeps its questions and answers for
zero-shot VQA; nothing of the test split is used for training.
"""

import re
from pathlib import Path

import datasets

TEMPLATES = ["a {colour} {shape}", "a {shape} that is {colour}", "a {colour} {shape} on a white background"]


PRESENT = re.compile(r"(?:is there a|does the image contain a|is a) (\w+)( shape)?(?: present| in the image)?\?")
ABSENT = re.compile(
    r"(?:is there not a|is no|does the image not contain a) (\w+)( shape)?(?: present| in the image)?\?"
)
COLOUR_OF = re.compile(r"what colou?r is the (\w+)\?|what is the colou?r of the (\w+)\?")


def image_facts(questions: list[str], answers: list[str]) -> dict[str, str]:
    """The colour and shape of one image as its own questions and answers state them.

    Direct questions ("what color is the triangle?" -> blue, "what is the blue shape?" -> circle, "what shape is
    in the image?") and yes/no ones ("is there a red shape?" -> yes, "is no circle present?" -> no) all name what
    the image shows.
    """
    facts = {}
    for question, answer in zip(questions, answers):
        if match := COLOUR_OF.fullmatch(question):
            facts["colour"] = answer
            if (subject := match.group(1) or match.group(2)) != "shape":
                facts["shape"] = subject
        elif match := re.fullmatch(r"what is the (\w+) shape\?", question):
            facts["colour"], facts["shape"] = match.group(1), answer
        elif question.startswith("what shape"):
            facts["shape"] = answer
        elif (match := PRESENT.fullmatch(question) or ABSENT.fullmatch(question)) and answer in ("yes", "no"):
            if (answer == "yes") != (match.re is ABSENT):
                facts["colour" if match.group(2) else "shape"] = match.group(1)
    return facts


def captions_for(facts: dict[str, str]) -> list[str]:
    return [template.format(**facts) for template in TEMPLATES]


def split_dataset(split: str) -> datasets.Dataset:
    import easy_vqa

    questions, answers, image_ids = (
        easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    )
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    per_image = {image_id: ([], []) for image_id in paths}
    for question, answer, image_id in zip(questions, answers, image_ids):
        per_image[image_id][0].append(question)
        per_image[image_id][1].append(answer)
    rows = {"image": [], "image_id": [], "caption": [], "colour": [], "shape": [], "questions": [], "answers": []}
    for image_id in sorted(per_image):
        image_questions, image_answers = per_image[image_id]
        facts = image_facts(image_questions, image_answers)
        if set(facts) != {"colour", "shape"}:
            continue  # no answer states this image's colour or shape: no honest caption
        rows["image"].append(paths[image_id])
        rows["image_id"].append(image_id)
        rows["caption"].append(captions_for(facts))
        rows["colour"].append(facts["colour"])
        rows["shape"].append(facts["shape"])
        rows["questions"].append(image_questions)
        rows["answers"].append(image_answers)
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


def easy_vqa_dataset(root: Path) -> Path:
    """Build once (train and test splits) and return the `save_to_disk` folder of each split's parent."""
    folder = root / "easy-vqa"
    if (folder / "dataset_dict.json").exists():
        return folder
    dataset = datasets.DatasetDict({split: split_dataset(split) for split in ("train", "test")})
    dataset.save_to_disk(str(folder))
    return folder
