"""The offline default on its real assets: EfficientNet-Lite0 + SmolLM2-135M bridged on a small easy-vqa subset.

A short run (a few dozen steps) through train.py exports a folder that loads through AutoModel / pipeline in a fresh
process and captions an image. Assets are prepared once under $VLAP_CACHE (default ~/.cache/vlap).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

pytest.importorskip("easy_vqa")
pytest.importorskip("gguf")

from tiny import load_in_fresh_process  # noqa: E402

from experiments.assets import cache_root, efficientnet_lite0, smollm2_135m  # noqa: E402
from experiments.easy_vqa import easy_vqa_dataset  # noqa: E402

pytestmark = pytest.mark.slow  # a fresh venv / the real offline models: `make test-slow`

REPO = Path(__file__).resolve().parent.parent


def test_short_real_run_exports_a_loadable_captioner(tmp_path):
    vision, llm = efficientnet_lite0(), smollm2_135m()
    train = datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["train"].select(range(48))
    train.save_to_disk(str(tmp_path / "train"))
    config = {
        "vision_model": str(vision),
        "text_model": str(llm),
        "train_data": str(tmp_path / "train"),
        "model": {"num_visual_tokens": 9},
        "batch_size": 8,
        "max_steps": 24,
        "learning_rate": 1e-3,
        "warmup_steps": 2,
        "cache_features": str(tmp_path / "features"),
        "checkpointing_steps": 24,
        "eval_steps": 0,
        "output_dir": str(tmp_path / "run"),
        "cpu": True,
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(tmp_path / "cfg.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [record["caption_loss"] for record in losses if "caption_loss" in record]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # the bridge learns something in 24 steps

    image = tmp_path / "shape.png"
    datasets.load_from_disk(str(easy_vqa_dataset(cache_root())))["test"][0]["image"].save(image)
    outputs, _ = load_in_fresh_process(tmp_path / "run" / "final", image, {"max_new_tokens": 8})
    assert outputs["caption"].strip() and outputs["model_class"] == "VLAPForConditionalGeneration"
