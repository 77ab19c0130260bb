"""Evaluation metrics: captioning through pycocoevalcap, VQAv2 accuracy, cross-modal retrieval recall@K.

Each is an `evaluate` module under vlap/metric_modules (evaluate's Hub metrics cannot be fetched offline), written to
stand alone: a module folder loads with `evaluate.load(<folder>)` without vlap installed. `load_metric(name)` is that
call; `metric_functions(name)` imports the same file for its plain functions (`caption_scores`, `vqa_accuracy`,
`normalize_answer`, `retrieval_recall`, `class_retrieval_recall`), so there is one copy of each computation.
"""

import functools
import importlib.util
from pathlib import Path

METRIC_MODULES = Path(__file__).parent / "metric_modules"


def _module_path(name: str) -> Path:
    path = METRIC_MODULES / name / f"{name}.py"
    if not path.exists():
        available = sorted(p.name for p in METRIC_MODULES.iterdir() if (p / f"{p.name}.py").exists())
        raise ValueError(f"no metric module {name!r}; available: {', '.join(available)}")
    return path


def load_metric(name: str):
    """One of our `evaluate` modules, loaded offline from its local script."""
    import evaluate

    return evaluate.load(str(_module_path(name).parent))


@functools.cache
def metric_functions(name: str):
    """The metric module's script imported as a plain Python module (its functions, without evaluate's wrapping)."""
    spec = importlib.util.spec_from_file_location(f"vlap_metric_{name}", _module_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
