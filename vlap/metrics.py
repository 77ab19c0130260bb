"""Evaluation metrics: captioning through pycocoevalcap, VQAv2 accuracy, cross-modal retrieval recall@K.

The same three are shipped as `evaluate` modules under vlap/metric_modules (evaluate's Hub metrics cannot be fetched
offline): `load_metric("caption_metrics" | "vqa_accuracy" | "retrieval_recall")`, i.e. `evaluate.load(<that folder>)`.
"""

import contextlib
import io
import re
import shutil
import string
from pathlib import Path

import torch

METRIC_MODULES = Path(__file__).parent / "metric_modules"
SPICE_UNAVAILABLE = "SPICE downloads Stanford CoreNLP at run time: unavailable offline"


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


NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
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


def retrieval_recall(similarity: torch.Tensor, text_image: list[int], ks=(1, 5, 10)) -> dict:
    """R@K both ways from a `[num_images, num_texts]` similarity; `text_image[t]` is the image text t describes.

    Image -> text: an image is a hit when any of its captions ranks within K. Text -> image: its image within K.
    """
    text_image = torch.as_tensor(text_image)
    if similarity.shape[1] != len(text_image):
        raise ValueError(f"similarity has {similarity.shape[1]} texts but text_image has {len(text_image)}")
    results = {}
    ranked_texts = similarity.argsort(dim=1, descending=True)  # [I, T]
    owners = text_image[ranked_texts] == torch.arange(similarity.shape[0]).unsqueeze(1)
    first_hit = owners.float().argmax(dim=1)  # rank of the best-ranked own caption
    ranked_images = similarity.T.argsort(dim=1, descending=True)  # [T, I]
    image_rank = (ranked_images == text_image.unsqueeze(1)).float().argmax(dim=1)
    for k in ks:
        results[f"image_to_text_R@{k}"] = (first_hit < k).float().mean().item()
        results[f"text_to_image_R@{k}"] = (image_rank < k).float().mean().item()
    return results


def class_retrieval_recall(similarity: torch.Tensor, image_classes, text_classes, ks=(1, 5, 10)) -> dict:
    """Relevance-aware R@K from a `[num_images, num_texts]` similarity: every text of an image's class is relevant to
    it, and every image of a text's class. Use it where many images share one caption string (a perfect model would
    otherwise score about 1 / images-per-caption at R@1 with instance-level recall)."""
    index = {label: number for number, label in enumerate(dict.fromkeys([*image_classes, *text_classes]))}
    image_classes = torch.tensor([index[label] for label in image_classes])
    text_classes = torch.tensor([index[label] for label in text_classes])
    if similarity.shape != (len(image_classes), len(text_classes)):
        raise ValueError(f"similarity is {tuple(similarity.shape)} but there are {len(image_classes)} image and "
                         f"{len(text_classes)} text classes")  # fmt: skip
    relevant = image_classes.unsqueeze(1) == text_classes.unsqueeze(0)  # [I, T]
    text_rank = torch.gather(relevant, 1, similarity.argsort(dim=1, descending=True)).float().argmax(dim=1)
    image_rank = torch.gather(relevant.T, 1, similarity.T.argsort(dim=1, descending=True)).float().argmax(dim=1)
    results = {}
    for k in ks:
        results[f"image_to_text_class_R@{k}"] = (text_rank < k).float().mean().item()
        results[f"text_to_image_class_R@{k}"] = (image_rank < k).float().mean().item()
    return results


def load_metric(name: str):
    """One of our `evaluate` modules, loaded offline from its local script."""
    import evaluate

    path = METRIC_MODULES / name
    if not (path / f"{name}.py").exists():
        available = sorted(p.name for p in METRIC_MODULES.iterdir() if (p / f"{p.name}.py").exists())
        raise ValueError(f"no metric module {name!r}; available: {', '.join(available)}")
    return evaluate.load(str(path))
