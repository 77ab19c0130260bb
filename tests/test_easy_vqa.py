"""easy-vqa captions are derived honestly: every caption agrees with all of its own image's answers."""

import re

import pytest

easy_vqa = pytest.importorskip("easy_vqa")

from experiments.easy_vqa import ABSENT, PRESENT, TEMPLATES, captions_for, image_facts, split_dataset  # noqa: E402

COLOURS = {"red", "green", "blue", "black", "gray", "yellow", "teal", "brown"}
SHAPES = {"circle", "rectangle", "triangle"}


def contradictions(facts: dict, questions: list[str], answers: list[str]) -> list[str]:
    """Every answer of the image checked against the derived colour and shape, independently of image_facts."""
    wrong = []
    for question, answer in zip(questions, answers):
        words = set(re.findall(r"\w+", question))
        if answer in COLOURS | SHAPES:
            expected = facts["colour"] if answer in COLOURS else facts["shape"]
            named = (words & (SHAPES if answer in COLOURS else COLOURS)) - {"shape"}
            if answer != expected or any(word not in (facts["colour"], facts["shape"]) for word in named):
                wrong.append(f"{question} -> {answer}")
        elif answer in ("yes", "no"):
            (subject,) = words & (COLOURS | SHAPES)
            shown = subject in (facts["colour"], facts["shape"])
            negated = bool(re.search(r"\bnot\b|\bno\b", question))
            if shown != ((answer == "yes") != negated):
                wrong.append(f"{question} -> {answer}")
    return wrong


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_caption_agrees_with_its_images_answers(split):
    questions, answers, image_ids = (
        easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    )
    per_image = {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        per_image.setdefault(image_id, ([], []))
        per_image[image_id][0].append(question)
        per_image[image_id][1].append(answer)
    captioned = 0
    for image_id, (image_questions, image_answers) in per_image.items():
        facts = image_facts(image_questions, image_answers)
        if set(facts) != {"colour", "shape"}:
            continue
        captioned += 1
        assert facts["colour"] in COLOURS and facts["shape"] in SHAPES
        assert not contradictions(facts, image_questions, image_answers), image_id
        for caption in captions_for(facts):
            assert set(re.findall(r"\w+", caption)) & (COLOURS | SHAPES) == {facts["colour"], facts["shape"]}
    assert captioned >= 0.85 * len(per_image)  # 3,542 / 4,000 train and 880 / 1,000 test images


def test_question_patterns():
    assert PRESENT.fullmatch("is there a red shape in the image?").groups() == ("red", " shape")
    assert ABSENT.fullmatch("is no circle present?").groups() == ("circle", None)
    assert image_facts(["is there not a teal shape?", "what shape is present?"], ["no", "circle"]) == {
        "colour": "teal",
        "shape": "circle",
    }
    assert len(TEMPLATES) == 3


def test_test_split_rows_keep_their_questions():
    test = split_dataset("test")
    row = test[0]
    assert row["caption"] == captions_for({"colour": row["colour"], "shape": row["shape"]})
    assert len(row["questions"]) == len(row["answers"]) > 0
    assert row["image"].size == (64, 64)
