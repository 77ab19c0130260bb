"""The base install (`pip install vlap`: torch, transformers, safetensors, pillow) loads and runs an exported model.

A fresh virtual environment gets torch (the pinned CPU wheel, from pip's cache) and this package without extras; the
same fresh-process script as the remote-code test then loads a saved model through AutoModel and the pipelines, and
`vlap caption` captions an image. None of the training or evaluation libraries may be installed there.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import REPO, build, load_in_fresh_process

from vlap.tasks import caption as caption_images

pytestmark = pytest.mark.slow  # a fresh venv / the real offline models: `make test-slow`

GENERATION = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
NOT_IN_BASE = ("accelerate", "datasets", "evaluate", "peft", "pycocoevalcap", "gradio", "wordfreq")
SOURCES = ("pyproject.toml", "README.md", "modeling_vlap", "vlap", "train.py", "push_to_hub.py")


def pip(python: Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        pytest.fail(f"pip install {' '.join(args)} failed:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def base_python(tmp_path_factory) -> Path:
    """A fresh venv with torch and the base install of a copy of this repository (its tracked sources only)."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    pip(python, "torch==2.13.0")
    pip(python, str(source))
    return python


def test_base_install_has_no_training_or_evaluation_libraries(base_python):
    code = "import importlib.util, json; print(json.dumps([m for m in %r if importlib.util.find_spec(m)]))" % (
        NOT_IN_BASE,
    )
    result = subprocess.run([str(base_python), "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_base_install_runs_a_saved_model_through_auto_classes_pipelines_and_the_cli(backbones, base_python, tmp_path):
    model, processor = build(backbones, "opt")
    model.eval()
    folder, image_path = tmp_path / "vlap", tmp_path / "photo.png"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    Image.fromarray(np.random.RandomState(5).randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(image_path)
    ids = model.generate(**processor(images=[Image.open(image_path)]), **GENERATION)
    caption = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    loaded, _ = load_in_fresh_process(folder, image_path, GENERATION, python=base_python)
    assert loaded["ids"] == ids.tolist()
    assert loaded["caption"] == caption
    assert [row["label"] for row in loaded["zero_shot"]]  # the zero-shot pipeline ran

    cli = base_python.parent / "vlap"
    result = subprocess.run(
        [str(cli), "caption", str(folder), str(image_path), "--max-new-tokens", "5"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = caption_images(model, processor, [Image.open(image_path)], max_new_tokens=5)[0]
    assert result.stdout.strip() == f"{image_path}: {expected}"
