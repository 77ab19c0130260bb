"""What a person types, checked before any model loads: image paths, globs and folders, comma lists, text files,
arithmetic terms and the web server's options. Shared by the `vlap` CLI and the web demo; no torch, no gradio."""

import argparse
import glob
import math
import os
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class InputError(Exception):
    """Bad input: reported as one line, without a traceback."""


def expand_images(specs: list[str]) -> list[Path]:
    """Image paths, globs and folders (their image files, sorted) -> paths; anything missing is an error. Only
    regular files count (symlinks followed): a FIFO or device in a folder or a glob is passed over, and one named
    outright is an error, since reading it could block forever."""
    paths = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{spec}: the folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif any(char in spec for char in "*?["):
            found = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            if not found:
                raise InputError(f"{spec}: the pattern matches no files")
        else:
            found = [regular_file(spec)]
        paths += found
    return paths


def regular_file(spec: str) -> Path:
    """`spec` as a path to a regular file (symlinks followed), or an InputError naming what it is instead."""
    path = Path(spec)
    if path.is_file():
        return path
    if not path.exists():
        raise InputError(f"{spec}: no such file or folder")
    raise InputError(f"{spec}: not a regular file (a FIFO, device or socket cannot be read as input)")


def output_file(spec: str, inputs: list[str], overwrite: bool = False, flag: str = "--out") -> Path:
    """Where a command may write: never over one of its `inputs` (a file, or anything inside an input folder), and
    never over an existing file unless `overwrite`. Devices such as /dev/null are allowed."""
    path = Path(spec)
    target = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source in target.parents:
            raise InputError(f"{flag} {spec} would write over the input {given}; choose another path")
    if path.is_file() and not overwrite:
        raise InputError(f"{flag} {spec} exists; pass --overwrite to replace it, or choose another path")
    if path.is_dir():
        raise InputError(f"{flag} {spec} is a folder; give a file path")
    return path


def comma_separated(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a regular text file."""
    if Path(path).exists() and not Path(path).is_file():
        raise InputError(f"{path}: cannot read the text file (not a regular file)")
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


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1 (NaN and infinities refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


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
