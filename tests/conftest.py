from pathlib import Path

import pytest
from tiny import save_tiny_backbones, write_caption_folder

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Tiny CLIP / T5 / OPT / Llama checkpoints saved as local folders (built once per session)."""
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory) -> Path:
    return write_caption_folder(tmp_path_factory.mktemp("data") / "shapes", num_images=24)
