"""What every experiment shares: its settings (YAML under `experiments/configs/`), training through train.py with
one config, and the summary over seeds (median [min, max]; a difference exceeds the spread when the two seed ranges
do not overlap)."""

import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"


def settings(name: str) -> dict:
    """`experiments/configs/{name}.yaml` as a dict."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


BASE_BUDGET = settings("budget_base")
DEMO_BUDGET = settings("budget_demo")
VARIANTS = settings("variants")
VLAP_METHOD, CAPTION_ONLY = VARIANTS["vlap"], VARIANTS["caption_only"]  # model settings (VLAPConfig fields)


def merged(*configs: dict) -> dict:
    """train.py configs merged, later ones winning, their `model:` sections field by field."""
    result = {}
    for config in configs:
        result.update({key: value for key, value in config.items() if key != "model"})
        if config.get("model"):
            result["model"] = {**result.get("model", {}), **config["model"]}
    return result


def run_train(output_dir: Path, config: dict) -> Path:
    """Train with train.py on `config` (train.py fields; `output_dir` is set here), written first as
    `{output_dir}.yaml` beside the run so the run can be repeated by hand; returns `output_dir`."""
    config = {**config, "output_dir": str(output_dir)}
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(path)], check=True, cwd=REPO)
    return output_dir


def median_and_spread(values: list[float]) -> str:
    """ "median [min, max]" over seeds."""
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def difference(first: list[float], second: list[float]) -> str:
    """The difference of the medians, and whether it exceeds the seed spread (the two [min, max] ranges do not
    overlap): "+0.600 (exceeds the spread)"."""
    apart = min(first) > max(second) or min(second) > max(first)
    change = statistics.median(first) - statistics.median(second)
    return f"{change:+.3f} ({'exceeds the spread' if apart else 'within the spread'})"
