import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny_backbones  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Tiny CLIP / T5 / OPT / Llama checkpoints saved as local folders (built once per session)."""
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))
