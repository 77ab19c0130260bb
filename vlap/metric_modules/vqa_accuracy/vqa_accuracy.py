"""VQA accuracy (VQAv2) as an `evaluate` module: the official leave-one-out min(#matching human answers / 3, 1)."""

import re

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
VQAv2 accuracy as the official evaluation (GT-Vision-Lab/VQA, vqaEval.py) computes it: each prediction, normalised
(punctuation by the official rules, lower case, number words as digits, articles dropped), scores the mean over the
ten human answers left out in turn of min(#other answers equal to it / 3, 1). A question with a single reference
answer reduces to exact match after normalisation.
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
# The official evaluation's marks (a full stop and the apostrophe are not among them: "1.5" and "don't" keep theirs).
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official pattern, its quirk included: "(?!<=\d)" is a lookahead, so a full stop is dropped unless a digit follows.
FULL_STOP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# Contractions written without their apostrophe, as the official table restores them. Its other entries restore a
# typographic apostrophe (dont -> don’t) that VQAv2's answers do not use, so they never change a match: left out.
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "weve": "we've",
    "wheres": "where's",
    "whove": "who've",
}


def strip_punctuation(text: str) -> str:
    """The official processPunctuation: a mark next to a space (or any mark, in a text with a digit-comma-digit) is
    removed, any other mark becomes a space; then full stops not followed by a digit go (at most 32: the official call
    passes re.UNICODE, 32, as the count)."""
    stripped = text
    for mark in PUNCTUATION:
        joined = mark + " " in text or " " + mark in text or COMMA_IN_NUMBER.search(text) is not None
        stripped = stripped.replace(mark, "" if joined else " ")
    return FULL_STOP.sub("", stripped, count=32)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official VQA evaluation reads it: white space, `strip_punctuation`, lower case,
    number words as digits, articles dropped, apostrophe-less contractions restored."""
    text = strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def question_accuracy(prediction: str, references: list[str]) -> float:
    """One question's VQA accuracy, as the official evaluation computes it: the mean, over each human answer left out
    in turn, of min(#other human answers equal to the prediction / 3, 1). Human answers are compared as written, or
    after `strip_punctuation` when they differ among themselves. A single reference answer (easy-vqa), which the
    official formula would always score 0, is an exact match after `normalize_answer` on both sides."""
    predicted = normalize_answer(prediction)
    if len(references) == 1:
        return float(predicted == normalize_answer(references[0]))
    humans = [strip_punctuation(r) for r in references] if len(set(references)) > 1 else list(references)
    left_out = [sum(other == predicted for other in humans[:i] + humans[i + 1 :]) for i in range(len(humans))]
    return sum(min(matches / 3, 1.0) for matches in left_out) / len(humans)


def vqa_accuracy(predictions: list[str], answers: list[list[str]]) -> float:
    """The mean `question_accuracy` over the questions."""
    if len(predictions) != len(answers) or not predictions or not all(answers):
        raise ValueError("need a non-empty list of reference answers per prediction, and at least one prediction")
    return sum(question_accuracy(p, references) for p, references in zip(predictions, answers)) / len(predictions)
