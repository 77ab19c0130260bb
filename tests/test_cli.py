"""`vlap` commands on a tiny saved model, offline: outputs parse and agree with the model; bad input is one line."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import build, save_tiny_vlap, shape_image, write_caption_folder

from vlap.cli import main
from vlap.tasks import first_line, load, word_ids

VLAP_SCRIPT = Path(sys.executable).parent / "vlap"  # the console script pyproject installs


@pytest.fixture(scope="module")
def saved(backbones, tmp_path_factory):
    """A saved tiny VLAP (CLIP + Llama) and a folder of shape images."""
    root = tmp_path_factory.mktemp("cli")
    save_tiny_vlap(backbones, root / "model")
    images = root / "images"
    images.mkdir()
    for name, colour, shape in (
        ("red_circle", "red", "circle"),
        ("blue_square", "blue", "square"),
        ("green_triangle", "green", "triangle"),
    ):
        shape_image(colour, shape).save(images / f"{name}.png")
    return {"model": root / "model", "images": images, "root": root}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_caption_matches_generate(saved, capsys):
    code, out, _ = run(
        capsys, "caption", saved["model"], saved["images"], "--json", "--max-new-tokens", 5, "--device", "cpu"
    )
    rows = json.loads(out)
    assert code == 0 and [Path(r["image"]).name for r in rows] == sorted(p.name for p in saved["images"].iterdir())
    model, processor = load(str(saved["model"]))
    ids = model.generate(**processor(images=[rows[0]["image"]]), max_new_tokens=5)
    assert rows[0]["caption"] == first_line(processor.batch_decode(ids, skip_special_tokens=True)[0])


def test_vqa_words_and_plot(saved, capsys, tmp_path):
    image = saved["images"] / "red_circle.png"
    code, out, _ = run(
        capsys,
        "vqa",
        saved["model"],
        image,
        "what colour is the shape?",
        "--json",
        "--template",
        "Question: {question} Answer:",
    )
    assert code == 0 and json.loads(out)[0]["question"] == "what colour is the shape?"
    # The tiny LLM has 128 positions: the default layout's example, caption and question do not fit.
    code, out, err = run(capsys, "vqa", saved["model"], image, "what colour is the shape?")
    assert code == 1 and out == "" and "exceed the LLM's 128 positions" in err
    code, out, _ = run(capsys, "words", saved["model"], image, "--top-k", 5, "--plot", tmp_path / "words.png", "--json")
    weights = [row["weight"] for row in json.loads(out)["words"]]
    assert code == 0 and len(weights) == 5 and weights == sorted(weights, reverse=True) and sum(weights) <= 1 + 1e-6
    assert (tmp_path / "words.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method", ["code", "feature", None])
def test_retrieve_scores_are_code_scores_by_default_or_feature_cosines(saved, capsys, tmp_path, method):
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n\na blue square\n")
    code, out, _ = run(
        capsys,
        "retrieve",
        saved["model"],
        "--images",
        saved["images"],
        "--texts",
        texts,
        "--query",
        "a green triangle",
        "--top-k",
        2,
        "--json",
        *(["--method", method] if method else []),
    )
    data = json.loads(out)
    assert code == 0 and len(data["image_to_text"]) == 3 and len(data["text_to_image"]) == 3
    model, processor = load(str(saved["model"]))
    image = processor(images=[data["text_to_image"][2]["images"][0]["image"]])["pixel_values"]
    tokens = processor(text=["a green triangle"])
    image_features = model.get_image_features(image)
    if method == "feature":
        expected = image_features @ model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).T
    else:  # VLAP's word space: the text's assignment target against the image's predicted assignment, by hand
        text_codes = model.word_codes(model.get_text_features(tokens["input_ids"], tokens["attention_mask"]))
        target = model.assignment_prediction.caption_assignments(
            tokens["input_ids"], tokens["attention_mask"], model.vocabulary(), text_codes
        )
        predicted = torch.log_softmax(model.word_codes(image_features) / model.config.assignment_temperature, dim=-1)
        expected = (target * predicted).sum()
    assert data["text_to_image"][2]["text"] == "a green triangle"
    assert data["text_to_image"][2]["images"][0]["score"] == pytest.approx(expected.item(), abs=1e-4)
    for row in data["image_to_text"] + data["text_to_image"]:
        scores = [hit["score"] for hit in row.get("texts", row.get("images"))]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)


def test_arithmetic_lands_on_the_constructed_word(backbones, saved, capsys, tmp_path):
    """Embeddings: red, blue, circle orthonormal (all tokens of a word share its vector); "plain" stands for a "blue
    circle" word, (blue + circle) / sqrt(2); every other row is orthogonal to them. The bridge maps every image to
    red + circle. Then image - red + blue is nearest to "plain" (cosine 0.959, blue is excluded as an operand)."""
    model, processor = build(backbones, "llama")
    tokens = {word: word_ids(processor, word) for word in ("red", "blue", "circle", "plain")}
    assert len(tokens["plain"]) == 1 and len({i for ids in tokens.values() for i in ids}) == sum(
        map(len, tokens.values())
    )
    with torch.no_grad():
        embeddings = model.word_embeddings
        embeddings[:, :3] = 0
        basis = torch.eye(embeddings.shape[1])
        for word, axis in (("red", 0), ("blue", 1), ("circle", 2)):
            embeddings[tokens[word]] = basis[axis]
        embeddings[tokens["plain"][0]] = (basis[1] + basis[2]) / 2**0.5
        model.bridge.weight.zero_()
        model.bridge.bias.copy_(basis[0] + basis[2])
    model.save_pretrained(tmp_path / "constructed")
    processor.save_pretrained(tmp_path / "constructed")

    code, out, _ = run(
        capsys,
        "arithmetic",
        tmp_path / "constructed",
        saved["images"] / "red_circle.png",
        "-",
        "red",
        "+",
        "blue",
        "--images",
        saved["images"],
        "--top-k",
        3,
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["words"][0]["word"] == "plain"
    result = F.normalize(basis[0] + basis[2], dim=0) - basis[0] + basis[1]  # independent: the expected cosine
    assert data["words"][0]["score"] == pytest.approx(
        F.cosine_similarity(result, embeddings[tokens["plain"][0]], 0).item(), abs=1e-5
    )
    assert {w["word"] for w in data["words"]}.isdisjoint({"red", "blue"}) and len(data["images"]) == 3


def write_vqa_jsonl(folder: Path) -> Path:
    rows = [
        {"image": f"{i:04d}.png", "question": "what colour is the shape?", "answers": ["red", "red", "red"]}
        for i in range(3)
    ]
    path = folder / "vqa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("task", ["caption", "vqa", "retrieval"])
def test_eval_writes_metrics_that_match_its_predictions(saved, capsys, tmp_path, task):
    data = write_caption_folder(tmp_path / "data", num_images=6)
    source = write_vqa_jsonl(data) if task == "vqa" else data
    out = tmp_path / "report.json"
    short = ["--template", "Question: {question} Answer:"] if task == "vqa" else []  # the tiny LLM has 128 positions
    code, stdout, _ = run(
        capsys, "eval", saved["model"], "--task", task, "--data", source, "--max-new-tokens", 4, "--out", out, *short
    )
    report = json.loads(out.read_text())
    assert code == 0 and stdout.startswith("| metric |") and out.with_suffix(".md").read_text().startswith("| metric |")
    assert report["num_images"] == (3 if task == "vqa" else 6) and report["skipped_images"] == 0
    if task == "vqa":
        expected = sum(answer.strip().lower() == "red" for answer in report["predictions"]) / 3
        assert report["scores"]["vqa_accuracy"] == pytest.approx(expected)
    elif task == "caption":
        assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(report["scores"]) and len(report["predictions"]) == 6
    else:
        recalls = {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
        assert set(report["scores"]) == recalls | {f"{name}_code" for name in recalls}  # feature cosine, code space
        assert report["scores"]["text_to_image_R@10"] == report["scores"]["text_to_image_R@10_code"] == 1.0  # 6 images


def test_eval_classification_by_class_with_held_out_classes(saved, capsys, tmp_path):
    import datasets

    from vlap.evaluation import named_class
    from vlap.tasks import caption, classify

    names = ["circle", "square", "triangle"]
    rows = [(colour, shape) for colour in ("red", "blue", "green") for shape in names]
    images = [shape_image(colour, shape) for colour, shape in rows]
    labels = [names.index(shape) for _, shape in rows]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(tmp_path / "data")
    out, plot = tmp_path / "report.json", tmp_path / "confusion.png"
    code, stdout, _ = run(
        capsys,
        "eval",
        saved["model"],
        "--task",
        "classification",
        "--data",
        tmp_path / "data",
        "--held-out",
        "square,triangle",
        "--max-new-tokens",
        4,
        "--out",
        out,
        "--plot",
        plot,
    )
    assert code == 0 and stdout.startswith("| metric |") and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    scores, confusion = report["scores"], report["confusion"]
    model, processor = load(str(saved["model"]))
    chosen = [names.index(ranked[0][0]) for ranked in classify(model, processor, images, names, method="feature")]
    assert scores["classification"] == pytest.approx(sum(c == t for c, t in zip(chosen, labels)) / 9)
    named = [named_class(text, names) for text in caption(model, processor, images, max_new_tokens=4)]
    assert scores["caption_names_class"] == pytest.approx(sum(n == t for n, t in zip(named, labels)) / 9)
    for k, name in enumerate(names):  # rows are true classes: 3 images each; the diagonal gives per-class accuracy
        assert sum(confusion["classification"][k]) == 3
        assert scores[f"classification_{name}"] == pytest.approx(confusion["classification"][k][k] / 3)
        assert confusion["classification"][k][k] == sum(c == t == k for c, t in zip(chosen, labels))
    held = [i for i, t in enumerate(labels) if t > 0]
    assert scores["held_out_classification"] == pytest.approx(sum(chosen[i] == labels[i] for i in held) / 6)
    among = classify(model, processor, [images[i] for i in held], ["square", "triangle"], method="feature")
    assert scores["held_out_classification_among_held_out"] == pytest.approx(
        sum(r[0][0] == names[labels[i]] for r, i in zip(among, held)) / 6
    )
    # Bad input names the cause: an unknown held-out class, labels beyond the class names, no names at all.
    code, _, err = run(
        capsys, "eval", saved["model"], "--task", "classification", "--data", tmp_path / "data", "--held-out", "hexagon"
    )
    assert code == 1 and "hexagon" in err
    code, _, err = run(
        capsys,
        "eval",
        saved["model"],
        "--task",
        "classification",
        "--data",
        tmp_path / "data",
        "--labels",
        "circle,square",
    )
    assert code == 1 and "row 2 has label 2" in err
    datasets.Dataset.from_dict({"image": images[:2], "label": [0, 1]}).save_to_disk(tmp_path / "plain")
    code, _, err = run(capsys, "eval", saved["model"], "--task", "classification", "--data", tmp_path / "plain")
    assert code == 1 and "--labels" in err


def bad_inputs(saved, tmp_path) -> list[tuple[list, str]]:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    return [
        (["caption", saved["model"], tmp_path / "missing.png"], "no such file"),
        (["caption", saved["model"], not_an_image], "not a readable image"),
        (["retrieve", saved["model"], "--images", saved["images"], "--texts", empty], "no non-empty lines"),
        (["words", no_config, saved["images"] / "red_circle.png"], "no config.json"),
        (["arithmetic", saved["model"], saved["images"] / "red_circle.png", "red", "+", "blue"], "expected '+' or '-'"),
    ]


def test_bad_input_is_one_line_without_traceback(saved, capsys, tmp_path):
    for argv, reason in bad_inputs(saved, tmp_path):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "", argv
        assert err.count("\n") == 1 and err.startswith(f"vlap {argv[0]}: error:") and reason in err, err


@pytest.mark.slow
def test_console_script_reports_errors_without_traceback(saved, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    help_text = subprocess.run([VLAP_SCRIPT, "arithmetic", "--help"], capture_output=True, text=True, env=env)
    assert help_text.returncode == 0 and "--images" in help_text.stdout
    failed = subprocess.run([VLAP_SCRIPT, "words", tmp_path, "x.png"], capture_output=True, text=True, env=env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == ["vlap words: error: x.png: no such file or folder"]


def test_cli_on_a_folder_answers_the_good_files_and_reports_each_bad_one(saved, capsys, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.open(saved["images"] / "red_circle.png").save(folder / "a_good.png")
    (folder / "b_text.png").write_text("not an image")
    (folder / "c_cut.png").write_bytes((folder / "a_good.png").read_bytes()[:50])
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    code, out, err = run(capsys, "caption", saved["model"], folder, "--json", "--max-new-tokens", 3)
    assert code == 1
    assert [row["image"].rsplit("/", 1)[1] for row in json.loads(out)] == ["a_good.png"]
    (error,) = [line for line in err.splitlines() if "error" in line]  # one line, after the model's progress bars
    assert error.startswith("vlap caption: error: 2 of 3 images could not be read")
    assert "b_text.png: not a readable image" in error and "c_cut.png: not a readable image" in error
    assert "Traceback" not in err
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    code, out, err = run(capsys, "caption", saved["model"], folder / "b_text.png")  # one bad file: nothing to answer
    assert code == 1 and out == "" and "b_text.png: not a readable image" in err


def test_classify_matches_the_zero_shot_pipeline(saved, capsys):
    from transformers import pipeline

    image = saved["images"] / "red_circle.png"
    code, out, _ = run(
        capsys, "classify", saved["model"], image, "--labels", "red circle, blue square,green triangle", "--json"
    )
    (row,) = json.loads(out)
    classifier = pipeline("zero-shot-image-classification", model=str(saved["model"]), trust_remote_code=True)
    expected = classifier(str(image), candidate_labels=["red circle", "blue square", "green triangle"])  # both: "a {}"
    assert code == 0 and [hit["label"] for hit in row["labels"]] == [hit["label"] for hit in expected]
    assert [hit["score"] for hit in row["labels"]] == pytest.approx([hit["score"] for hit in expected], abs=1e-5)
    code, _, err = run(capsys, "classify", saved["model"], image, "--labels", "cat")
    assert code == 1 and "at least two distinct labels" in err


@pytest.mark.parametrize("template", [None, "{prompt} {caption}.\nQ: {question}\nA:"])
def test_bare_llm_answers_a_description_in_the_given_layout(backbones, template):
    """`answer_without_image` (the VQA ceiling: the LLM reading a true caption) equals the LLM's own greedy
    continuation of the layout written out as text."""
    from vlap import tasks
    from vlap.evaluation import answer_without_image

    model, processor = build(backbones, "llama")
    questions, descriptions = (
        ["What shape is it?", "Is it red?"],
        ["a red circle", "a blue square on a white background"],
    )
    layout = template or tasks.VQA_TEMPLATE
    kwargs = {} if template is None else {"template": template}
    answers = answer_without_image(model.eval(), processor, questions, descriptions, max_new_tokens=3, **kwargs)
    expected = []
    for question, description in zip(questions, descriptions):
        text = layout.format(prompt=processor.prompt, caption=description, question=question)
        ids = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.language_model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        expected.append(first_line(processor.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)))
    assert answers == expected and any(answers)
