"""VQA accuracy (VQAv2) as an `evaluate` module: mean of min(#human answers matching / 3, 1) after normalisation."""

import datasets
import evaluate

from vlap.metrics import vqa_accuracy

_CITATION = """\
@inproceedings{antol2015vqa,
  title={VQA: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Mitra, Jiasen and Batra, Dhruv and Zitnick, C. Lawrence and Parikh, Devi},
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
