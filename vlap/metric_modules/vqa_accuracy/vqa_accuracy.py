"""VQA accuracy (VQAv2) as an `evaluate` module: mean of min(#human answers matching / 3, 1) after normalisation."""

import re
import string

import datasets
import evaluate

_CITATION = """\
@inproceedings{antol2015vqa,
  title={VQA: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Mitra, Jiasen and Batra, Dhruv
           and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={ICCV},
  year={2015}
}
"""

_DESCRIPTION = """\
VQAv2 accuracy: each prediction scores min(#reference answers equal to it / 3, 1) after the standard answer
normalisation (lower case, punctuation removed, number words as digits, articles dropped); a question with a single
reference answer reduces to exact match after normalisation.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one predicted answer per question.
    references (`list` of `list` of `str`): the human answers of each question (VQAv2: ten; any number >= 1).
Returns:
    vqa_accuracy (`float`): in [0, 1].
Example:
    >>> metric = evaluate.load("vlap/metric_modules/vqa_accuracy")
    >>> metric.compute(predictions=["Two"], references=[["2"]])
    {'vqa_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        return {"vqa_accuracy": vqa_accuracy(predictions, references)}


NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}


def normalize_answer(answer: str) -> str:
    """VQAv2's answer normalisation: lower case, punctuation removed, number words as digits, articles dropped."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = re.sub(rf"[{re.escape(string.punctuation)}]", " ", text)
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(predictions: list[str], answers: list[list[str]]) -> float:
    """Mean of min(#human answers matching the prediction / 3, 1); one reference answer reduces to exact match."""
    if len(predictions) != len(answers) or not predictions:
        raise ValueError("need one list of reference answers per prediction, and at least one prediction")
    total = 0.0
    for prediction, references in zip(predictions, answers):
        matches = sum(normalize_answer(prediction) == normalize_answer(reference) for reference in references)
        total += min(matches / 3, 1.0) if len(references) > 1 else float(matches == 1)
    return total / len(predictions)
