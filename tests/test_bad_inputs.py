"""The bad-input suite (issue 18): every entry point, one case per way in which input goes wrong. Each case asserts the
documented failure (the exception type, or the CLI's exit status 1 with one error line and no traceback), a message
that names the cause, and that every file written before it is unchanged."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import build, shape_image, write_caption_folder

import train
from vlap.cli import main


@pytest.fixture(scope="module")
def world(backbones, tmp_path_factory) -> dict:
    """A saved tiny model and damaged copies of it, images good and bad, a caption dataset and an earlier report."""
    root = tmp_path_factory.mktemp("bad-inputs")
    model, processor = build(backbones, "llama")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    for name, damage in (("truncated", lambda b: b[: len(b) // 2]), ("foreign", lambda b: b"\0" * 64)):
        shutil.copytree(root / "model", root / name)
        weights = root / name / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    (root / "no_config").mkdir()
    images = root / "images"
    images.mkdir()
    for name, colour, shape in (("a", "red", "circle"), ("b", "blue", "square"), ("c", "green", "triangle")):
        shape_image(colour, shape).save(images / f"{name}.png")
    (root / "notes.png").write_text("not an image")
    (root / "cut.png").write_bytes((images / "a.png").read_bytes()[:60])
    (root / "empty.txt").write_text("\n \n")
    (root / "texts.txt").write_text("a red circle\na blue square\n")
    (root / "report.json").write_text(json.dumps({"earlier": "run"}))
    captions = write_caption_folder(root / "captions", num_images=4)
    return {"root": root, "model": model, "processor": processor, "captions": captions}


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


# ------------------------------------------------------------------------------------------------------------- CLI
CLI_CASES = {
    "caption: missing file": (["caption", "{model}", "{root}/missing.png"], "no such file or folder"),
    "caption: not an image": (["caption", "{model}", "{root}/notes.png"], "notes.png: not a readable image"),
    "caption: truncated image": (["caption", "{model}", "{root}/cut.png"], "cut.png: not a readable image"),
    "caption: decompression bomb": (["caption", "{model}", "{images}/a.png"], "over the limit of 100 pixels"),
    "caption: folder without config.json": (["caption", "{root}/no_config", "{images}"], "no config.json"),
    "caption: no such model folder": (["caption", "./no/such/model", "{images}"], "no such folder"),
    "caption: truncated weights": (["caption", "{root}/truncated", "{images}"], "truncated or not safetensors"),
    "caption: foreign weights": (["caption", "{root}/foreign", "{images}"], "truncated or not safetensors"),
    "caption: prompt beyond the LLM": (
        ["caption", "{model}", "{images}", "--prompt", "red " * 200],
        "exceed the LLM's 128 positions",
    ),
    "caption: empty glob": (["caption", "{model}", "{root}/*.jpeg"], "the pattern matches no files"),
    "vqa: unknown template field": (
        ["vqa", "{model}", "{images}/a.png", "what?", "--template", "{question} {colour}"],
        "unknown: colour",
    ),
    "vqa: template without the question": (
        ["vqa", "{model}", "{images}/a.png", "what?", "--template", "Answer:"],
        "needs a {question} field",
    ),
    "vqa: layout beyond the LLM": (
        ["vqa", "{model}", "{images}/a.png", "what colour is it?"],
        "exceed the LLM's 128 positions",
    ),
    "retrieve: no texts": (["retrieve", "{model}", "--images", "{images}"], "give texts to rank"),
    "retrieve: empty text file": (
        ["retrieve", "{model}", "--images", "{images}", "--texts", "{root}/empty.txt"],
        "no non-empty lines",
    ),
    "retrieve: missing text file": (
        ["retrieve", "{model}", "--images", "{images}", "--texts", "{root}/none.txt"],
        "cannot read the text file",
    ),
    "words: a folder, not one image": (["words", "{model}", "{images}"], "give one image (3 found)"),
    "arithmetic: missing sign": (
        ["arithmetic", "{model}", "{images}/a.png", "red", "+", "blue"],
        "expected '+' or '-'",
    ),
    "arithmetic: ends with a sign": (
        ["arithmetic", "{model}", "{images}/a.png", "-", "red", "+"],
        "must end with a word",
    ),
    "classify: one label": (["classify", "{model}", "{images}", "--labels", "cat"], "at least two distinct labels"),
    "classify: repeated labels": (["classify", "{model}", "{images}", "--labels", "cat,cat"], "two distinct labels"),
    "classify: template without {}": (
        ["classify", "{model}", "{images}", "--labels", "cat,dog", "--template", "a"],
        "has no {} for the label",
    ),
    "eval: --template without vqa": (
        [
            "eval",
            "{model}",
            "--task",
            "caption",
            "--data",
            "{captions}",
            "--template",
            "Q: {question}",
            "--out",
            "{root}/report.json",
        ],
        "it needs --task vqa",
    ),
    "eval: missing caption column": (
        [
            "eval",
            "{model}",
            "--task",
            "caption",
            "--data",
            "{captions}",
            "--caption-column",
            "text",
            "--out",
            "{root}/report.json",
        ],
        "no column 'text'",
    ),
    "eval: vqa on caption data": (
        ["eval", "{model}", "--task", "vqa", "--data", "{captions}", "--out", "{root}/report.json"],
        "VQA data needs",
    ),
    "eval: no such data": (["eval", "{model}", "--task", "caption", "--data", "{root}/missing.jsonl"], "missing.jsonl"),
    "words: plot onto a full disk": (
        ["words", "{model}", "{images}/a.png", "--plot", "/dev/full"],
        "No space left on device",
    ),
    "eval: report onto a full disk": (
        ["eval", "{model}", "--task", "caption", "--data", "{captions}", "--out", "/dev/full"],
        "No space left on device",
    ),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli(world, capsys, monkeypatch, case):
    argv, reason = CLI_CASES[case]
    paths = {
        "model": world["root"] / "model",
        "root": world["root"],
        "images": world["root"] / "images",
        "captions": world["captions"],
    }
    argv = [
        arg.format(**{k: str(v) for k, v in paths.items()})
        if "{" in arg and "}" in arg and arg.count("{") == 1 and arg[arg.index("{") + 1 : arg.index("}")] in paths
        else arg
        for arg in argv
    ]
    if case == "caption: decompression bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    before = snapshot(world["root"])
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"vlap {argv[0]}: error:")]
    assert code == 1 and "Traceback" not in err and len(errors) == 1, err
    assert reason in errors[0], errors[0]
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["caption", "M", "x.png", "--batch-size", "0"],
        ["words", "M", "x.png", "--top-k", "-1"],
        ["caption", "M", "x.png", "--max-new-tokens", "0"],
    ],
)
def test_cli_usage_errors_exit_2_naming_the_option(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and argv[3] in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- train.py
TRAIN_CASES = {
    "batch size 0": (["--batch-size", "0"], "batch_size=0 is out of range"),
    "batch size not an integer": (["--batch-size", "2.5"], "batch_size='2.5' is not a valid int"),
    "negative learning rate": (["--learning-rate", "-1"], "learning_rate=-1.0 is out of range"),
    "learning rate not a number": (["--learning-rate", "fast"], "learning_rate='fast' is not a valid float"),
    "zero steps": (["--max-steps", "0"], "max_steps=0 is out of range"),
    "zero accumulation": (["--gradient-accumulation-steps", "0"], "gradient_accumulation_steps=0 is out of range"),
    "bool flag with a word": (["--cpu", "maybe"], "cpu='maybe' is not a valid bool"),
    "unknown text representation": (
        ["--model.text-representation", "pixels"],
        "model: VLAPConfig.text_representation must be 'hidden_states', 'word_embeddings' or 'word_assignments'",
    ),
    "unknown bridge": (
        ["--model.bridge-type", "mlp"],
        "model: VLAPConfig.bridge_type must be 'linear' or 'langbridge'",
    ),
    "bad-row fraction above 1": (["--max-bad-fraction", "2"], "max_bad_fraction=2.0 is out of range"),
    "zero visual tokens": (["--model.num-visual-tokens", "0"], "VLAPConfig.num_visual_tokens must be >= 1 or None"),
    "negative marginal weight": (
        ["--model.word-marginal-weight", "-1"],
        "VLAPConfig.word_marginal_weight must be >= 0",
    ),
    "model setting not a number": (["--model.sinkhorn-iterations", "many"], "model.sinkhorn_iterations='many' is not"),
    "unknown model field": ({"model": {"temprature": 1}}, "unknown model field(s): temprature"),
    "method field at the top": ({"prompt": "A photo of"}, "prompt: the method's settings go under `model:`"),
    "derived model field": ({"model": {"backbones": {}}}, "backbones: set by train.py"),
    "model section not a mapping": ({"model": [1, 2]}, "model: expected a mapping of VLAPConfig fields"),
    "caption length 1": (["--max-caption-length", "1"], "max_caption_length=1 is out of range"),
    "missing local data": (["--train-data", "./no/such/data"], "train_data: ./no/such/data does not exist"),
    "missing local model": (["--text-model", "/no/such/llm"], "text_model: /no/such/llm does not exist"),
    "unknown YAML field": ({"batch_sise": 4}, "unknown config field(s): batch_sise"),
    "YAML text for a number": ({"seed": "abc"}, "seed='abc' is not a valid int"),
    "YAML true for a number": ({"batch_size": True}, "batch_size=True is not a valid int"),
    "no training data": ({"train_data": ""}, "train_data is required"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_config(world, tmp_path, case):
    """Refused while parsing, before any model loads or anything is written."""
    change, reason = TRAIN_CASES[case]
    fields = {"train_data": str(world["captions"]), "output_dir": str(tmp_path / "run")}
    argv = change if isinstance(change, list) else []
    if isinstance(change, dict):
        fields.update(change)
    (tmp_path / "c.yaml").write_text(json.dumps(fields))  # JSON is YAML
    with pytest.raises(SystemExit) as exit_info:
        train.parse_config(["--config", str(tmp_path / "c.yaml"), *argv])
    assert reason in str(exit_info.value.code)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ processor and model
def processor_cases(world) -> dict:
    root, processor = world["root"], world["processor"]
    image = Image.open(root / "images" / "a.png")
    return {
        "a number for an image": (lambda: processor(images=[3]), "images[0] is a int"),
        "a float array": (lambda: processor(images=[np.zeros((4, 4, 3), dtype=np.float32)]), "uint8 numpy array"),
        "no images": (lambda: processor(images=[]), "images is an empty list"),
        "missing file": (lambda: processor(images=[root / "missing.png"]), "missing.png"),
        "not an image": (lambda: processor(images=[image, root / "notes.png"]), "images[1]"),
        "truncated image": (lambda: processor(images=[root / "cut.png"]), "not a readable image"),
        "URL without network": (lambda: processor(images=["http://127.0.0.1:9/x.png"]), "could not fetch the image"),
        "empty caption": (lambda: processor(text=["a red circle", " "]), "text[1] is ' '"),
        "caption not a string": (lambda: processor(text=["a red circle", None]), "text[1] is None"),
        "captions and images differ": (lambda: processor(images=[image], text=["a", "b"]), "1 images but 2 captions"),
        "prompt without an image": (lambda: processor(text=["a"], prompt="Question:"), "pass images with it"),
        "nothing at all": (lambda: processor(), "pass images, text"),
        "chat without an image": (
            lambda: processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=True
            ),
            "exactly one image item",
        ),
    }


def model_cases(world) -> dict:
    model, processor = world["model"], world["processor"]
    image = Image.open(world["root"] / "images" / "a.png")
    two = {**processor(images=[image, image]), **processor(text=["a", "b", "c"])}
    long_prompt = processor(images=[image], prompt="red " * 200)
    return {
        "images and captions differ": (lambda: model(**two), "2 images but 3 captions"),
        "prompt beyond the LLM": (lambda: model.generate(**long_prompt, max_new_tokens=2), "exceed the LLM's 128"),
        "no image input": (lambda: model.get_image_prefix(), "pass pixel_values (images) or precomputed"),
        "word prior of the wrong size": (lambda: model.fit_word_prior(torch.ones(3)), "non-negative counts"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "a number for an image",
        "a float array",
        "no images",
        "missing file",
        "not an image",
        "truncated image",
        "URL without network",
        "empty caption",
        "caption not a string",
        "captions and images differ",
        "prompt without an image",
        "nothing at all",
        "chat without an image",
    ],
)
def test_processor(world, case):
    call, reason = processor_cases(world)[case]
    with pytest.raises(ValueError, match=None) as error:
        call()
    assert reason in str(error.value)


@pytest.mark.parametrize(
    "case", ["images and captions differ", "prompt beyond the LLM", "no image input", "word prior of the wrong size"]
)
def test_model(world, case):
    call, reason = model_cases(world)[case]
    with pytest.raises(ValueError) as error:
        call()
    assert reason in str(error.value)


# ------------------------------------------------------------------------------------------------------ pipelines
@pytest.mark.parametrize(
    "task, call, reason",
    [
        (
            "image-to-text",
            lambda pipe, root: pipe("http://127.0.0.1:9/x.png"),
            "http://127.0.0.1:9/x.png: could not fetch",
        ),
        ("image-to-text", lambda pipe, root: pipe(str(root / "notes.png")), "notes.png"),
        ("image-text-to-text", lambda pipe, root: pipe(text="What is it?"), "needs an image with the text"),
        (
            "zero-shot-image-classification",
            lambda pipe, root: pipe(str(root / "cut.png"), candidate_labels=["a", "b"]),
            "not a readable image",
        ),
    ],
)
def test_pipeline(world, task, call, reason):
    from transformers import pipeline

    pipe = pipeline(task, model=str(world["root"] / "model"), trust_remote_code=True)
    with pytest.raises(ValueError) as error:
        call(pipe, world["root"])
    assert reason in str(error.value)


# --------------------------------------------------------------------------------------------------- push_to_hub.py
@pytest.mark.slow
@pytest.mark.parametrize("folder, reason", [("model", "127.0.0.1:9"), ("no_config", "no_config")])
def test_push_to_hub(world, folder, reason):
    """An unreachable Hub endpoint (after assembly and verification) and a folder that is no model: one line on
    stderr naming the host or the folder, exit status 1, the token never printed, the model folder unchanged."""
    import os
    import subprocess
    import sys

    token = "hf_SecretTokenForTheBadInputSuite0123456789"
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": token, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    before = snapshot(world["root"])
    result = subprocess.run(
        [
            sys.executable,
            str(Path(train.__file__).parent / "push_to_hub.py"),
            str(world["root"] / folder),
            "--repo-id",
            "user/bad",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output and token not in output
    assert reason in result.stderr.strip().splitlines()[-1]
    assert snapshot(world["root"]) == before
