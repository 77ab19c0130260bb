"""COCO captioning metrics (pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr) as an `evaluate` module."""

import contextlib
import io
import re
import shutil
import string

import datasets
import evaluate

SPICE_UNAVAILABLE = "SPICE downloads Stanford CoreNLP at run time: unavailable offline"

_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Dollar, Piotr
           and Zitnick, C. Lawrence},
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


def caption_scores(predictions: dict, references: dict) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of `predictions` {id: caption} against `references` {id: [captions]}.

    pycocoevalcap with its PTB tokenizer; both need Java. Without Java, METEOR is reported unavailable (with the
    reason) and the others are computed on a lower-cased, punctuation-stripped tokenisation.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references) or not predictions:
        raise ValueError("predictions and references must cover the same, non-empty set of ids")
    java = shutil.which("java")
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        candidates = tokenizer.tokenize({key: [{"caption": text}] for key, text in predictions.items()})
        golds = tokenizer.tokenize({key: [{"caption": text} for text in texts] for key, texts in references.items()})
    else:
        candidates = {key: [_simple_tokens(text)] for key, text in predictions.items()}
        golds = {key: [_simple_tokens(text) for text in texts] for key, texts in references.items()}
    scores, unavailable = {}, {"SPICE": SPICE_UNAVAILABLE}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's BLEU prints its internals
        bleu, _ = Bleu(4).compute_score(golds, candidates)
    scores.update({f"BLEU-{n + 1}": value for n, value in enumerate(bleu)})
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["METEOR"], _ = Meteor().compute_score(golds, candidates)
    else:
        unavailable["METEOR"] = "needs Java (apt-get install default-jre-headless); not found on PATH"
    scores["ROUGE-L"], _ = Rouge().compute_score(golds, candidates)
    scores["CIDEr"], _ = Cider().compute_score(golds, candidates)
    return {"scores": {k: float(v) for k, v in scores.items()}, "unavailable": unavailable}


def _simple_tokens(text: str) -> str:
    return " ".join(re.sub(rf"[{re.escape(string.punctuation)}]", " ", text.lower()).split())
