"""What a person types, checked before any model loads: image paths, globs and folders, comma lists, text files,
arithmetic terms and the web server's options. Shared by the `vlap` CLI and the web demo; no torch, no gradio."""

import argparse
import glob
import os
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class InputError(Exception):
    """Bad input: reported as one line, without a traceback."""


def expand_images(specs: list[str]) -> list[Path]:
    """Image paths, globs and folders (their image files, sorted) -> paths; anything missing is an error."""
    paths = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{spec}: the folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif any(char in spec for char in "*?["):
            found = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            if not found:
                raise InputError(f"{spec}: the pattern matches no files")
        elif path.is_file():
            found = [path]
        else:
            raise InputError(f"{spec}: no such file or folder")
        paths += found
    return paths


def comma_separated(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def read_lines(path: str) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the text file ({error})") from None
    if not lines:
        raise InputError(f"{path}: the text file has no non-empty lines")
    return lines


def parse_terms(terms: list[str]) -> list[tuple[str, str]]:
    """["-", "red", "+", "blue"] or ["-red", "+blue"] -> [("-", "red"), ("+", "blue")]."""
    pairs, pending = [], None
    for term in terms:
        if pending is not None:
            pairs.append((pending, term))
            pending = None
        elif term in ("+", "-"):
            pending = term
        elif term[:1] in ("+", "-") and len(term) > 1:
            pairs.append((term[0], term[1:]))
        else:
            raise InputError(f"expected '+' or '-' before {term!r}: write IMAGE - word + word")
    if pending is not None or not pairs:
        raise InputError("the arithmetic must end with a word: IMAGE - word + word")
    return pairs


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error, exit status 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port and --gallery of `vlap serve` and app.py. Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere
    else the default is loopback, and binding wider is the user's explicit choice."""
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=positive_int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--gallery", metavar="DIR", help="images for Arithmetic and Retrieve (default: the examples)")
