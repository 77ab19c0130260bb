"""README.md's code blocks marked `<!-- test: ... -->` run as written, in order, in one fresh folder, on tiny
backbones: the Hub ids they name are the only text replaced (by tiny local checkpoints of the same kind), and the
repository's example images are reached by their path in the repository."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tiny import ENV, REPO

MARKED_BLOCK = re.compile(r"<!-- test:[^>]*-->\n```(\w+)\n(.*?)```", re.DOTALL)


def marked_blocks() -> list[tuple[str, str]]:
    return MARKED_BLOCK.findall((REPO / "README.md").read_text())


def test_the_readme_marks_its_usage_and_cli_blocks():
    assert [language for language, _ in marked_blocks()] == ["python", "bash"]


def test_the_readme_blocks_run_as_written(backbones, tmp_path):
    (tmp_path / "vlap").mkdir()  # the blocks name the example images by their path in the repository
    (tmp_path / "vlap" / "app_examples").symlink_to(REPO / "vlap" / "app_examples", target_is_directory=True)
    hub_ids = {"openai/clip-vit-base-patch32": backbones["clip"], "google-t5/t5-base": backbones["t5"]}
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}"}
    for language, code in marked_blocks():
        for hub_id, folder in hub_ids.items():
            code = code.replace(f'"{hub_id}"', f'"{folder}"')
        command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"README {language} block failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "my-vlap" / "config.json").exists()
    assert "cat.jpg" in result.stdout  # the last block's retrieval names the example images
