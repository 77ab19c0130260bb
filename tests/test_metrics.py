"""The evaluate modules against values computed by hand from the metrics' definitions."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlap.metrics import METRIC_MODULES, load_metric, metric_functions

normalize_answer = metric_functions("vqa_accuracy").normalize_answer

# Two images whose references share only "a" (document frequency 2 of 2, so its CIDEr idf is log(2/2) = 0).
PREDICTIONS = ["the cat sat on the mat", "a blue triangle"]
REFERENCES = [["the cat is on the mat"], ["a blue triangle"]]


@pytest.fixture(scope="module")
def caption_metrics():
    return load_metric("caption_metrics")


def test_bleu_matches_modified_ngram_precision_by_hand(caption_metrics):
    scores = caption_metrics.compute(predictions=PREDICTIONS[:1], references=REFERENCES[:1])
    # "the cat sat on the mat" vs "the cat is on the mat": equal lengths (no brevity penalty);
    # unigram precision 5/6, bigrams 3/5 (the cat, on the, the mat), trigrams 1/4 (on the mat), 4-grams 0/3.
    assert scores["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert scores["BLEU-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-6)
    assert scores["BLEU-3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert scores["BLEU-4"] < 1e-3


def test_cider_and_rouge_match_their_definitions_by_hand(caption_metrics):
    predictions = ["a red circle", "a blue triangle"]
    references = [["a red square"], ["a blue triangle"]]
    scores = caption_metrics.compute(predictions=predictions, references=references)
    # CIDEr-D: n-gram weights tf * log(N / df); "a" has df = N = 2, weight 0; every other n-gram weight log 2.
    # Image 1: cosine 1/2 for unigrams (red matches, circle/square do not) and bigrams ("a red"), 0 for trigrams,
    # no 4-grams: 10 * (0.5 + 0.5 + 0 + 0) / 4 = 2.5. Image 2 is identical to its reference: 10 * (1 + 1 + 1 + 0) / 4.
    assert scores["CIDEr"] == pytest.approx((2.5 + 7.5) / 2, abs=1e-6)
    # ROUGE-L: LCS 2 of 3 words both ways -> F = 2/3 for image 1, 1 for image 2.
    assert scores["ROUGE-L"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    assert "SPICE" in scores["unavailable"]
    if shutil.which("java"):
        assert 0 < scores["METEOR"] <= 1


def test_without_java_meteor_is_unavailable_and_the_rest_is_computed(monkeypatch):
    captioning = metric_functions("caption_metrics")
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    result = captioning.caption_scores(dict(enumerate(PREDICTIONS)), dict(enumerate(REFERENCES)))
    assert "METEOR" not in result["scores"] and "Java" in result["unavailable"]["METEOR"]
    assert result["scores"]["BLEU-1"] == pytest.approx((5 + 3) / (6 + 3), abs=1e-6)  # corpus-level: 8 of 9 unigrams


def test_vqa_normalisation():
    assert normalize_answer("Two") == normalize_answer("2") == "2"
    assert normalize_answer("The dog.") == "dog"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("  an Apple!\n") == "apple"
    assert normalize_answer("yes") != normalize_answer("no")


def test_vqa_accuracy_counts_matching_human_answers():
    """Leave-one-out, worked by hand: with 2 of 10 answers "2", leaving out one of them leaves 1 match (1/3), leaving
    out one of the eight others leaves 2 (2/3): (2 x 1/3 + 8 x 2/3) / 10 = 0.6."""
    metric = load_metric("vqa_accuracy")
    ten = ["2"] * 2 + ["3"] * 8
    result = metric.compute(
        predictions=["two", "3", "cat", "The circle."],
        references=[ten, ten, ["dog"] * 10, ["circle"]],  # 0.6; 8 of 10 -> 1; 0 -> 0; single answer -> exact
    )
    assert result["vqa_accuracy"] == pytest.approx((0.6 + 1 + 0 + 1) / 4)


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        # 3 of 10: a matching answer left out leaves 2 (2/3), another leaves 3 (1): (3 x 2/3 + 7 x 1) / 10
        ("blue", ["blue"] * 3 + ["navy"] * 7, 0.9),
        ("blue", ["blue"] * 4 + ["navy"] * 6, 1.0),  # 4 of 10: at least 3 others match whichever is left out
        ("blue", ["blue"] * 1 + ["navy"] * 9, 0.1 * 0 + 0.9 * (1 / 3)),
        ("1.5", ["1.5"] * 2 + ["2"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # "1.5" keeps its point
        ("don't", ["don't"] * 10, 1.0),  # the apostrophe stays
        ("cant", ["can't"] * 10, 1.0),  # an apostrophe-less contraction restored
        ("Two dogs.", ["2 dogs"] * 10, 1.0),  # case, number word, final full stop
        # the official quirk: a human answer's "!" becomes a space and is not stripped again ("yes " != "yes")
        ("yes", ["yes!", "yes"] + ["no"] * 8, (1 / 3 + 0 + 8 * (1 / 3)) / 10),
    ],
)
def test_vqa_accuracy_is_the_official_evaluation(prediction, references, expected):
    question_accuracy = metric_functions("vqa_accuracy").question_accuracy
    assert question_accuracy(prediction, references) == pytest.approx(expected)


def test_retrieval_recall_on_a_constructed_similarity_matrix():
    metric = load_metric("retrieval_recall")
    # 3 images; image 0 owns texts 0 and 1, image 1 owns text 2, image 2 owns text 3.
    similarity = [
        [0.1, 0.9, 0.5, 0.0],  # image 0: text 1 (its own) ranks first
        [0.8, 0.1, 0.3, 0.2],  # image 1: its text 2 ranks 2nd
        [0.9, 0.0, 0.8, 0.1],  # image 2: its text 3 ranks 3rd
    ]
    result = metric.compute(predictions=similarity, references=[[0, 1], [2], [3]], ks=[1, 2])
    assert result["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert result["image_to_text_R@2"] == pytest.approx(2 / 3)
    # Text columns: text 0 -> images ranked 2, 1, 0 (own image 0 is 3rd); text 1 -> 0 first; text 2 -> 2, 0, 1
    # (own image 1 is 3rd); text 3 -> 1, 2, 0 (own image 2 is 2nd).
    assert result["text_to_image_R@1"] == pytest.approx(1 / 4)
    assert result["text_to_image_R@2"] == pytest.approx(2 / 4)


def test_class_level_recall_counts_every_caption_of_the_class_as_relevant():
    # 4 images of classes red, red, blue, green; 3 texts, one per class: "red", "blue", "green".
    # Instance-level recall cannot express this (two red images share one caption string); class-level can.
    similarity = [
        [0.9, 0.1, 0.0],  # red image: "red" first -> hit at 1
        [0.2, 0.7, 0.1],  # red image: "blue" first, "red" second -> hit at 2
        [0.1, 0.3, 0.8],  # blue image: "green", "blue" -> hit at 2
        [0.0, 0.1, 0.5],  # green image: "green" first -> hit at 1
    ]
    result = load_metric("retrieval_recall").compute(
        predictions=similarity,
        references=[[0], [], [1], [2]],
        ks=[1, 2],
        image_classes=["red", "red", "blue", "green"],
        text_classes=["red", "blue", "green"],
    )
    assert result["image_to_text_class_R@1"] == pytest.approx(2 / 4)
    assert result["image_to_text_class_R@2"] == pytest.approx(4 / 4)
    # Text "red": image 0 (red) first -> hit at 1. "blue": 1 (red), 2 (blue) -> at 2. "green": 2 (blue), 3 -> at 2.
    assert result["text_to_image_class_R@1"] == pytest.approx(1 / 3)
    assert result["text_to_image_class_R@2"] == pytest.approx(3 / 3)


def test_retrieval_recall_rejects_texts_without_an_image():
    with pytest.raises(ValueError, match="belongs to no image"):
        load_metric("retrieval_recall").compute(predictions=[[0.1, 0.2]], references=[[0]])


def test_unknown_metric_module_lists_the_available_ones():
    with pytest.raises(ValueError, match="caption_metrics"):
        load_metric("bleurt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caption_metrics", "vqa_accuracy", "retrieval_recall"])
def test_each_metric_module_loads_alone_without_vlap(name, tmp_path):
    """A module folder copied elsewhere loads and computes with evaluate.load in a process where vlap cannot be
    imported: the modules are self-contained."""
    folder = Path(shutil.copytree(METRIC_MODULES / name, tmp_path / name))
    inputs, key, expected = {  # a match and a miss each: the score is computed, not a default
        "caption_metrics": (
            "predictions=['a red circle', 'a cat'], references=[['a red circle'], ['a dog']]",
            "ROUGE-L",
            (1 + 1 / 2) / 2,
        ),
        "vqa_accuracy": ("predictions=['Two', 'no'], references=[['2'], ['yes']]", "vqa_accuracy", 0.5),
        "retrieval_recall": (
            "predictions=[[0.9, 0.1], [0.7, 0.3]], references=[[0], [1]], ks=[1]",
            "image_to_text_R@1",
            0.5,
        ),
    }[name]
    code = (
        "import sys; sys.modules['vlap'] = None\n"  # any `import vlap` now raises ImportError
        f"import evaluate; print(evaluate.load({str(folder)!r}).compute({inputs})[{key!r}])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.splitlines()[-1]) == pytest.approx(expected, abs=1e-6)
