"""COCO captioning metrics (pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr) as an `evaluate` module."""

import datasets
import evaluate

from vlap.metrics import caption_scores

_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Dollar, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""

_DESCRIPTION = """\
The COCO caption evaluation (pycocoevalcap): captions and references are PTB-tokenised, then scored with BLEU-1..4,
METEOR, ROUGE-L and CIDEr (document frequencies from the references of this call, as in the COCO server). METEOR and
the PTB tokenizer need Java; without it METEOR is listed under `unavailable` with the reason. SPICE downloads
Stanford CoreNLP at run time and is always listed as unavailable (offline).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the reference captions of each image (one or more).
Returns:
    BLEU-1, BLEU-2, BLEU-3, BLEU-4, METEOR, ROUGE-L, CIDEr (`float`), and unavailable (`dict`: metric -> reason).
Example:
    >>> metric = evaluate.load("vlap/metric_modules/caption_metrics")
    >>> metric.compute(predictions=["a red circle"], references=[["a red circle", "a circle that is red"]])["BLEU-1"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
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
        result = caption_scores(dict(enumerate(predictions)), dict(enumerate(references)))
        return {**result["scores"], "unavailable": result["unavailable"]}
