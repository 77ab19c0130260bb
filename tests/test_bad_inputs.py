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
        "needs exactly one {} for the label",
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
            "{root}/new-report.json",
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
            "{root}/new-report.json",
        ],
        "no column 'text'",
    ),
    "eval: vqa on caption data": (
        ["eval", "{model}", "--task", "vqa", "--data", "{captions}", "--out", "{root}/new-report.json"],
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
        "model: VLAPConfig.bridge_type must be 'linear', 'langbridge' or 'words'",
    ),
    "word bridge with L_map": (
        ["--model.bridge-type", "words"],
        "model: a word bridge trains on its bag-of-words loss alone (it has no prefix for L_map): set "
        "assignment_loss_weight to 0",
    ),
    "bad-row fraction above 1": (["--max-bad-fraction", "2"], "max_bad_fraction=2.0 is out of range"),
    "zero visual tokens": (["--model.num-visual-tokens", "0"], "VLAPConfig.num_visual_tokens must be >= 1 or None"),
    "negative marginal weight": (
        ["--model.word-marginal-weight", "-1"],
        "VLAPConfig.word_marginal_weight must be a finite number >= 0",
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
        "a float array": (
            lambda: processor(images=[np.full((4, 4, 3), 255.0, dtype=np.float32)]),
            "a float image must hold values in [0, 1]",
        ),
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


# ================================================================================================ round 3 (issue 35)
# Every case runs under a timeout (a hang fails it), and each asserts the one-line cause, the exit status and that
# nothing already written changed.
BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
    for i in range(8)
)

CONFIG_CASES = {  # (YAML text appended to a valid config, the cause named)
    "YAML billion laughs": (BILLION_LAUGHS + "prompt: *i\n", "expands to more than 10,000 values"),
    "a key given twice": ("seed: 1\nseed: 2\n", "key(s) given twice: seed"),
    "learning rate .inf": ("learning_rate: .inf\n", "learning_rate=inf is not a finite number"),
    "learning rate .nan": ("learning_rate: .nan\n", "learning_rate=nan is not a finite number"),
    "max_grad_norm .nan": ("max_grad_norm: .nan\n", "max_grad_norm=nan is not a finite number"),
    "max_grad_norm -1": ("max_grad_norm: -1\n", "max_grad_norm=-1.0 is out of range"),
    "max_grad_norm 0": ("max_grad_norm: 0\n", "max_grad_norm=0.0 is out of range"),
    "seed -1": ("seed: -1\n", "seed=-1 is out of range"),
    "seed beyond 32 bits": ("seed: 99999999999\n", "seed=99999999999 is out of range"),
    ".inf in an int field": ("max_steps: .inf\n", "max_steps=inf is not a finite number"),
    "warmup_epochs .inf": ("warmup_epochs: .inf\n", "warmup_epochs=inf is not a finite number"),
    "prior_temperature 0": ("model: {prior_temperature: 0}\n", "prior_temperature must be a finite number > 0"),
    "prior_temperature .nan": ("model: {prior_temperature: .nan}\n", "model.prior_temperature=nan is not a finite"),
    "sinkhorn_epsilon .inf": ("model: {sinkhorn_epsilon: .inf}\n", "model.sinkhorn_epsilon=inf is not a finite"),
    "unknown data_format": ("data_format: zip\n", "data_format='zip' is not one of"),
    "unknown report_to": ("report_to: carrier-pigeon\n", "report_to='carrier-pigeon' is not one of"),
    "lora garbage": ("lora: garbage\n", "lora: --lora 'garbage': expected r,alpha,targets"),
    "missing langbridge_vocabulary": ("langbridge_vocabulary: /no/such/words.json\n", "No such file"),
    "langbridge_vocabulary not JSON": ("langbridge_vocabulary: {root}/texts.txt\n", "texts.txt is not JSON"),
    "langbridge_vocabulary a mapping": ("langbridge_vocabulary: {root}/report.json\n", "not a non-empty JSON list"),
    "output_dir a file": ("output_dir: {root}/texts.txt\n", "exists and is not a folder"),
    "output_dir under /proc": ("output_dir: /proc/vlap-run\n", "output_dir: cannot write in /proc"),
    "prompt a list": ("model: {prompt: [a, b]}\n", "model.prompt=['a', 'b'] is not a valid str"),
    "num_eval_images -1": ("num_eval_images: -1\n", "num_eval_images=-1 is out of range"),
    "checkpoints_total_limit -1": ("checkpoints_total_limit: -1\n", "checkpoints_total_limit=-1 is out of range"),
    "word_prior_rows 0": ("word_prior_rows: 0\n", "word_prior_rows=0 is out of range"),
    "langbridge_vocab_size 0": ("langbridge_vocab_size: 0\n", "langbridge_vocab_size=0 is out of range"),
}
WHOLE_FILE_CASES = {  # (the whole config file, the cause named)
    "a YAML list of maps": ("- seed: 1\n- seed: 2\n", "expected a mapping of TrainConfig fields, got a list"),
    "not YAML": ("seed: [1, 2\n", "not valid YAML"),
    "not text": (b"\xff\xfe\x00bad", "not valid YAML"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [*CONFIG_CASES, *WHOLE_FILE_CASES])
def test_train_config_round3(world, tmp_path, case):
    """Refused while parsing, before any model loads or anything is written."""
    root = world["root"]
    if case in CONFIG_CASES:
        extra, reason = CONFIG_CASES[case]
        fields = {"train_data": str(world["captions"]), "output_dir": str(tmp_path / "run")}
        text = "".join(f"{k}: {v}\n" for k, v in fields.items() if f"{k}:" not in extra)
        text += extra.replace("{root}", str(root))
    else:
        text, reason = WHOLE_FILE_CASES[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(root)
    with pytest.raises(SystemExit) as exit_info:
        train.parse_config(["--config", str(path)])
    assert reason in str(exit_info.value.code), exit_info.value.code
    assert len(str(exit_info.value.code).splitlines()) == 1
    assert not (tmp_path / "run").exists() and snapshot(root) == before


@pytest.fixture
def tiny_run(backbones, caption_folder, tmp_path):
    """A train.py config for 4 steps on the tiny backbones (in-process: `train.main(["--config", path])`)."""
    from tiny import write_config

    def config(**overrides):
        return write_config(
            tmp_path / "run.yaml",
            backbones,
            overrides.pop("train_data", caption_folder),
            tmp_path / "run",
            **{"max_steps": 4, "checkpointing_steps": 2, **overrides},
        )

    return config


def train_refused(config: Path, reason: str, *extra: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(config), *extra])
    message = str(exit_info.value.code)
    assert reason in message and len(message.splitlines()) == 1, message


@pytest.mark.timeout(120)
def test_train_resume_with_nothing_to_resume(tiny_run, tmp_path):
    train_refused(tiny_run(), "holds no complete checkpoint to resume", "--resume")
    assert not list((tmp_path / "run").glob("*")) or [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]


@pytest.mark.timeout(120)
def test_train_diverging_run_stops_and_exports_nothing(tiny_run, tmp_path):
    """A finite learning rate that blows the bridge up: training stops at the step, names the cause, exports nothing
    and writes no NaN into metrics.jsonl."""
    train_refused(tiny_run(learning_rate=1e30), "became NaN or infinite")
    run = tmp_path / "run"
    assert not (run / "final").exists()
    logged = (
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        if (run / "metrics.jsonl").exists()
        else []
    )
    assert all(np.isfinite(record["loss"]) for record in logged if "loss" in record)


@pytest.mark.timeout(120)
def test_train_second_run_into_a_locked_output_dir(tiny_run, tmp_path):
    """Another run holds output_dir (its lock): this one stops at once, resume or not, and writes nothing there."""
    import fcntl

    config = tiny_run()
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 4242")
        lock.flush()
        for extra in ([], ["--resume"]):
            train_refused(config, "is in use by another training run (pid 4242)", *extra)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


@pytest.mark.timeout(300)
def test_train_resume_past_a_torn_metrics_line(tiny_run, tmp_path):
    """A kill can tear the last line of metrics.jsonl: --resume drops it and continues."""
    config = tiny_run()
    train.main(["--config", str(config)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-4")
    metrics.write_text(metrics.read_text() + '{"step": 5, "lo')
    train.main(["--config", str(config), "--resume"])
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == 4 and (tmp_path / "run" / "final" / "config.json").exists()


def caption_rows(tmp_path: Path, rows: list[dict]) -> Path:
    """A jsonl dataset of `rows` next to a real image."""
    shape_image("red", "circle").save(tmp_path / "a.png")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "rows, reason",
    [
        ([{"image": "a.png", "caption": "a red circle"}, {"image": "a.png", "caption": None}], "row 1 has no"),
        ([{"image": "a.png", "caption": "a red circle"}, {"image": "a.png", "caption": 7}], "row 1 has no"),
        ([{"image": "a.png", "caption": "a red circle"}, {"image": "a.png"}], "row 1 has no"),
        ([{"image": "a.png", "text": "a red circle"}], "no column 'caption'"),
    ],
    ids=["caption null", "caption a number", "caption missing", "no caption column"],
)
def test_train_bad_caption_rows(tiny_run, tmp_path, rows, reason):
    data = caption_rows(tmp_path, rows)
    train_refused(tiny_run(train_data=data), reason)
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.timeout(120)
def test_train_zero_byte_webdataset_shard(tiny_run, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "000.tar").write_bytes(b"")
    train_refused(tiny_run(train_data=tmp_path / "shards" / "000.tar", max_steps=2), "train_data:")


@pytest.mark.timeout(60)
def test_train_fifo_in_an_image_folder(tiny_run, tmp_path, caption_folder):
    """A FIFO among the images would block datasets' read forever: refused by name."""
    import os

    folder = tmp_path / "images"
    shutil.copytree(caption_folder, folder)
    os.mkfifo(folder / "9999.png")
    train_refused(tiny_run(train_data=folder), "9999.png: not a regular file")


@pytest.mark.timeout(60)
def test_train_fifo_as_the_jsonl_file(tiny_run, tmp_path):
    import os

    os.mkfifo(tmp_path / "rows.jsonl")
    train_refused(tiny_run(train_data=tmp_path / "rows.jsonl"), "not a regular file or folder")


@pytest.mark.timeout(180)
def test_train_fifo_named_by_a_jsonl_row_is_an_unreadable_row(tiny_run, tmp_path):
    """A row naming a FIFO is an unreadable image (counted against max_bad_fraction), never a blocked read."""
    import os

    os.mkfifo(tmp_path / "pipe.png")
    rows = [{"image": "a.png", "caption": "a red circle"}] * 7 + [{"image": "pipe.png", "caption": "a pipe"}]
    train_refused(tiny_run(train_data=caption_rows(tmp_path, rows)), "unreadable images")


# ------------------------------------------------------------------------------------------ CLI, round 3
@pytest.fixture(scope="module")
def hostile(world):
    """FIFOs, a degenerate strip, a tampered copy of the model, reports and data to protect."""
    import os

    root = world["root"] / "hostile"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "pipe.txt")
    mixed = root / "mixed"
    mixed.mkdir()
    shutil.copy(world["root"] / "images" / "a.png", mixed / "a.png")
    os.mkfifo(mixed / "b.png")
    Image.new("RGB", (5000, 1), "red").save(root / "strip.png")
    (root / "old.json").write_text('{"kept": true}')
    return root


CLI_CASES_3 = {
    "caption: a FIFO named": (["caption", "{model}", "{hostile}/pipe.png"], "pipe.png: not a regular file"),
    "retrieve: a FIFO of texts": (
        ["retrieve", "{model}", "--images", "{images}", "--texts", "{hostile}/pipe.txt"],
        "not a regular file",
    ),
    "caption: a 5000 x 1 strip": (["caption", "{model}", "{hostile}/strip.png"], "aspect ratio beyond 100:1"),
    "eval: --out .md is the table's own path": (
        ["eval", "{model}", "--task", "caption", "--data", "{captions}", "--out", "{hostile}/report.md"],
        "--out names the JSON report",
    ),
    "eval: --out is the data": (
        [
            "eval",
            "{model}",
            "--task",
            "caption",
            "--data",
            "{captions}/metadata.jsonl",
            "--out",
            "{captions}/metadata.jsonl",
        ],
        "would write over the input",
    ),
    "eval: --out over an earlier report": (
        ["eval", "{model}", "--task", "caption", "--data", "{captions}", "--out", "{hostile}/old.json"],
        "old.json exists; pass --overwrite",
    ),
    "eval: --plot over the model": (
        ["eval", "{model}", "--task", "classification", "--data", "{captions}", "--plot", "{model}/config.json"],
        "would write over the input",
    ),
    "words: --plot over the image": (
        ["words", "{model}", "{images}/a.png", "--plot", "{images}/a.png"],
        "would write over the input",
    ),
    "caption: --device cuda without CUDA": (
        ["caption", "{model}", "{images}", "--device", "cuda"],
        "CUDA is not available",
    ),
    "caption: --device gpu0": (["caption", "{model}", "{images}", "--device", "gpu0"], "not a torch device"),
    "words: --top-k past the vocabulary": (
        ["words", "{model}", "{images}/a.png", "--top-k", "100000"],
        "top_k=100000: give 1 to",
    ),
    "classify: template with two fields": (
        ["classify", "{model}", "{images}", "--labels", "cat,dog", "--template", "a {} {}"],
        "needs exactly one {} for the label",
    ),
    "classify: template with a format spec": (
        ["classify", "{model}", "{images}", "--labels", "cat,dog", "--template", "a {:>999999999}"],
        "no format spec",
    ),
    "vqa: template with a format spec": (
        ["vqa", "{model}", "{images}/a.png", "what?", "--template", "{question:>999999999}"],
        "no format spec",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CLI_CASES_3)
def test_cli_round3(world, hostile, capsys, case):
    import torch as torch_module

    if "cuda" in case and torch_module.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, reason = CLI_CASES_3[case]
    paths = {
        "model": world["root"] / "model",
        "images": world["root"] / "images",
        "captions": world["captions"],
        "hostile": hostile,
        "data": world["captions"] / "metadata.jsonl",
    }
    argv = [arg.format(**paths) if "{" in arg and arg.split("}")[0][1:] in paths else arg for arg in argv]
    watched = [world["root"] / "model", world["root"] / "images", world["captions"], hostile / "old.json"]
    before = [snapshot(p) if p.is_dir() else p.read_bytes() for p in watched]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"vlap {argv[0]}: error:")]
    assert code == 1 and "Traceback" not in err and len(errors) == 1, err
    assert reason in errors[0], errors[0]
    assert [snapshot(p) if p.is_dir() else p.read_bytes() for p in watched] == before
    assert not (hostile / "report.json").exists()


@pytest.mark.timeout(120)
def test_cli_fifo_in_a_folder_is_passed_over(world, hostile, capsys):
    """A FIFO among a folder's images is not an image: the real ones are captioned, nothing blocks."""
    code = main(["caption", str(world["root"] / "model"), str(hostile / "mixed"), "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "a.png" in out and "b.png" not in out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "1.5"])
def test_cli_transfer_min_coverage_is_a_fraction(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["transfer", "M", "--to-llm", "L", "--min-coverage", value])
    assert exit_info.value.code == 2 and "expected a number from 0 to 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- images, round 3
def image_cases(world) -> dict:
    processor = world["processor"]
    return {
        "a 0x0 array": (lambda: processor(images=[np.zeros((0, 0, 3), np.uint8)]), "the image is empty"),
        "a float array beyond [0, 1]": (
            lambda: processor(images=[np.full((4, 4, 3), 2.0, np.float32)]),
            "a float image must hold values in [0, 1]",
        ),
        "a float array holding NaN": (
            lambda: processor(images=[np.full((4, 4, 3), np.nan, np.float32)]),
            "a float image must hold values in [0, 1]",
        ),
        "an int64 array": (lambda: processor(images=[np.zeros((4, 4, 3), np.int64)]), "must be uint8 or float"),
        "a (H, W, 2) array": (lambda: processor(images=[np.zeros((4, 4, 2), np.uint8)]), "(H, W) or (H, W, C)"),
        "a tensor of the wrong shape": (lambda: processor(images=[torch.zeros(4, 4)]), "must be (C, H, W)"),
        "a 100,000 x 1 image": (lambda: processor(images=[Image.new("RGB", (100_000, 1))]), "aspect ratio beyond"),
        "a 1 x 0 image": (lambda: processor(images=[Image.new("RGB", (1, 0))]), "the image is empty"),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case",
    [
        "a 0x0 array",
        "a float array beyond [0, 1]",
        "a float array holding NaN",
        "an int64 array",
        "a (H, W, 2) array",
        "a tensor of the wrong shape",
        "a 100,000 x 1 image",
        "a 1 x 0 image",
    ],
)
def test_image_inputs_round3(world, case):
    call, reason = image_cases(world)[case]
    with pytest.raises(ValueError) as error:
        call()
    assert reason in str(error.value) and str(error.value).startswith("images[0]"), error.value


def test_array_and_tensor_images_equal_their_uint8_image(world):
    """(H, W, 1), float in [0, 1] and torch (C, H, W) inputs give the pixels of the same uint8 image."""
    processor = world["processor"]
    rgb = np.random.RandomState(0).randint(0, 256, (12, 10, 3)).astype(np.uint8)
    grey = rgb[:, :, :1]
    expected = processor(images=[rgb])["pixel_values"]
    assert torch.equal(processor(images=[rgb.astype(np.float32) / 255])["pixel_values"], expected)
    assert torch.equal(processor(images=[torch.from_numpy(rgb).permute(2, 0, 1)])["pixel_values"], expected)
    assert torch.equal(processor(images=[grey])["pixel_values"], processor(images=[grey[:, :, 0]])["pixel_values"])


def test_exif_orientation_and_float_tiff(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 is read upright; a float TIFF in [0, 1] is not black."""
    from modeling_vlap.processing_vlap import open_image

    upright = Image.new("RGB", (40, 20), "white")
    upright.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    read = open_image(tmp_path / "phone.jpg")
    assert read.size == (40, 20) and read.getpixel((2, 10))[0] > 200 and read.getpixel((37, 10))[1] > 200
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "half.tif")
    assert open_image(tmp_path / "half.tif").getpixel((3, 3)) == (128, 128, 128)


# ------------------------------------------------------------------------------ models and trust, round 3
@pytest.fixture(scope="module")
def damaged(world):
    """Copies of the saved model: without its bridge tensors, with a wrongly shaped bridge, with a changed vision
    width, and with a tampered processor / modeling module that would leave a marker file if it ever ran."""
    from safetensors.torch import load_file, save_file

    root, model = world["root"] / "damaged", world["root"] / "model"
    root.mkdir()
    weights = load_file(model / "model.safetensors")
    for name, change in (
        ("no_bridge", lambda w: {k: v for k, v in w.items() if not k.startswith("bridge.")}),
        ("bridge_shape", lambda w: {**w, "bridge.weight": torch.zeros(3, 3)}),
    ):
        shutil.copytree(model, root / name)
        save_file(change(dict(weights)), root / name / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(model, root / "vision_width")
    config = json.loads((model / "config.json").read_text())
    config["vision_config"]["hidden_size"] += 8
    (root / "vision_width" / "config.json").write_text(json.dumps(config))
    shutil.copytree(model, root / "tampered")
    marker = root / "code-ran"
    payload = f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    for module in (root / "tampered").glob("*.py"):
        module.write_text(module.read_text() + payload)
    return {"root": root, "marker": marker}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "folder, reason",
    [
        ("no_bridge", "the weights lack the trained tensors bridge.bias, bridge.weight"),
        ("bridge_shape", "its weights do not fit its config.json"),
        ("vision_width", "its weights do not fit its config.json"),
    ],
)
def test_load_refuses_a_folder_whose_weights_do_not_hold_the_model(damaged, capsys, folder, reason):
    from transformers import AutoModel

    with pytest.raises(ValueError) as error:
        AutoModel.from_pretrained(damaged["root"] / folder)
    assert reason in str(error.value)
    assert main(["caption", str(damaged["root"] / folder), str(damaged["root"].parent / "images" / "a.png")]) == 1
    assert reason in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_folders_code_never_runs_without_trust(world, damaged, capsys):
    """The processor, AutoModel / AutoProcessor and the CLI load a folder with the installed code: a tampered .py
    in it is never executed (trust_remote_code is never turned on for the caller)."""
    from transformers import AutoModel, AutoProcessor

    from modeling_vlap import VLAPProcessor

    folder = damaged["root"] / "tampered"
    VLAPProcessor.from_pretrained(folder)
    AutoModel.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)
    assert main(["caption", str(folder), str(world["root"] / "images" / "a.png"), "--max-new-tokens", "2"]) == 0
    assert not damaged["marker"].exists()


@pytest.mark.timeout(60)
def test_model_inputs_round3(world):
    model, processor = world["model"], world["processor"]
    image = Image.open(world["root"] / "images" / "a.png")
    cases = [
        (lambda: processor(images=[image, image], prompt=["a", "b", "c"]), "2 images but 3 prompts"),
        (lambda: model.generate(**processor(images=[image]), max_length=10_000), "exceed the LLM's 128 positions"),
        (  # LlavaProcessor's convention: text= as the prompt
            lambda: model.generate(**processor(images=[image], text="What colour is the shape?")),
            'give the question as the prompt, processor(images=..., prompt="...")',
        ),
        (
            lambda: model.get_text_features(torch.tensor([[5, 6]]), torch.zeros(1, 2, dtype=torch.long)),
            "text 0 has no tokens",
        ),
    ]
    for call, reason in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert reason in str(error.value), error.value


@pytest.mark.timeout(60)
def test_pipelines_round3(world):
    from transformers import pipeline

    folder = str(world["root"] / "model")
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    with pytest.raises(ValueError, match="no images"):
        captioner([])
    chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    image = Image.open(world["root"] / "images" / "a.png")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text"}]}]
    with pytest.raises(ValueError, match="a text item needs its text"):
        chat(text=messages)
    zero_shot = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    with pytest.raises(ValueError, match="needs exactly one {} for the label"):
        zero_shot(image, candidate_labels=["cat", "dog"], hypothesis_template="a photo")


@pytest.mark.timeout(300)
def test_train_disk_full_at_export_is_one_line_and_resumable(tiny_run, tmp_path, monkeypatch):
    """A full disk while exporting: one line naming the cause; the checkpoints stay, and --resume then exports."""
    import errno

    from modeling_vlap import VLAPForConditionalGeneration

    config = tiny_run()
    saving = VLAPForConditionalGeneration.save_pretrained

    def full_disk(self, directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(VLAPForConditionalGeneration, "save_pretrained", full_disk)
    train_refused(config, "no space left on the device while writing the run; free some, then --resume")
    assert (tmp_path / "run" / "checkpoints" / "step-4" / "progress.json").exists()
    assert not (tmp_path / "run" / "final").exists()
    monkeypatch.setattr(VLAPForConditionalGeneration, "save_pretrained", saving)
    train.main(["--config", str(config), "--resume"])
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_model_refuses_a_batch_of_no_images(world):
    model = world["model"]
    for call in (model.generate, model.get_image_features, model.get_image_prefix):
        with pytest.raises(ValueError, match="holds no images"):
            call(pixel_values=torch.zeros(0, 3, 32, 32))


def test_base64_data_uri_images(world):
    """A data URI decodes to the image it holds; one without base64 bytes is an error naming the item."""
    import base64
    import io

    processor = world["processor"]
    image = Image.open(world["root"] / "images" / "a.png")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert torch.equal(processor(images=[uri])["pixel_values"], processor(images=[image])["pixel_values"])
    with pytest.raises(ValueError, match=r"images\[0\]: a data URI needs base64 image bytes"):
        processor(images=["data:image/png;base64,@@not base64@@"])
