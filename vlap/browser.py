"""The web demo in a real browser: `vlap serve` in a subprocess, driven by Playwright through Debian's chromium
(`executable_path`: no browser download). The browser tests use it, and so do the screenshots in docs/:

    python -m vlap.browser MODEL_DIR docs/app.png

which serves MODEL_DIR cold, captions example images through the page and reads one as words, saves screenshots of
the Caption tab (PNG) and of the Words tab (PNG's name + "_words"), and prints the start-up and request times it
measured.
"""

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, as root, on a machine without network: no sandbox, no GPU, and none of the background connections
# chromium would otherwise keep trying (updates, sync, QUIC).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLES = Path(__file__).parent / "app_examples"


def unavailable() -> str | None:
    """Why the browser cannot run here (chromium or Playwright missing), or None."""
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; no browser download is needed)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served(model_dir: str | Path, timeout: float = 120) -> Iterator[tuple[str, float]]:
    """`vlap serve MODEL_DIR` on a free loopback port: yields (its URL, seconds until it answered HTTP), and stops
    it afterwards. A server that exits first is a RuntimeError with its output."""
    port = free_port()
    command = [sys.executable, "-m", "vlap.cli", "serve", str(model_dir), "--port", str(port), "--device", "cpu"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vlap serve exited with status {process.returncode}: {process.stdout.read()}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"vlap serve did not answer on {url} within {timeout:.0f} s")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        yield url, time.perf_counter() - start
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def browser_page(width: int = 1280, height: int = 900):
    """A headless chromium page (Playwright, Debian's chromium)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def upload(page, elem_id: str, path: str | Path) -> None:
    """Put a file into the image drop zone `elem_id`, as a person choosing it in the file dialog would."""
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id} img").first.wait_for()


def press_and_read(page, button_id: str, output_id: str, timeout: float = 60) -> tuple[str, float]:
    """Press the button and wait for the output text box to show a new text: (the text, seconds from the press).
    The text must differ from what the box held before (ask about another image to time a second request)."""
    output = page.locator(f"#{output_id} textarea").first
    before = output.input_value()
    start = time.perf_counter()
    page.click(f"#{button_id}")
    page.wait_for_function(
        "([id, before]) => { const box = document.querySelector(`#${id} textarea`);"
        " return box && box.value.length > 0 && box.value !== before; }",
        arg=[output_id, before],
        timeout=timeout * 1000,
    )
    return output.input_value(), time.perf_counter() - start


def error_messages(page, timeout: float = 30) -> list[str]:
    """The error messages the page shows (Gradio's toasts), waiting for the first one."""
    page.locator(".toast-body").first.wait_for(timeout=timeout * 1000)
    return page.locator(".toast-body").all_inner_texts()


def screenshot(model_dir: str, png: str) -> dict:
    """Serve `model_dir` cold, caption two example images through the page (the first request, then a warm one: what
    a user waits), read the second as words, and save screenshots of both tabs."""
    with served(model_dir) as (url, start_seconds), browser_page(height=760) as page:
        page.goto(url)
        upload(page, "caption-image", EXAMPLES / "render_red_circle.png")
        _, first_seconds = press_and_read(page, "caption-button", "caption-output")
        upload(page, "caption-image", EXAMPLES / "render_blue_triangle.png")
        caption, caption_seconds = press_and_read(page, "caption-button", "caption-output")
        open_tab(page, "Words")
        upload(page, "words-image", EXAMPLES / "render_blue_triangle.png")
        page.click("#words-button")
        page.locator("#words-chart svg .mark-rect path").first.wait_for()
        page.screenshot(path=Path(png).with_stem(Path(png).stem + "_words"))
        open_tab(page, "Caption")
        page.screenshot(path=png)
    return {
        "start_seconds": start_seconds,
        "first_caption_seconds": first_seconds,
        "caption_seconds": caption_seconds,
        "caption": caption,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vlap.browser", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", metavar="MODEL_DIR")
    parser.add_argument("png", metavar="PNG", help="where to save the screenshot")
    args = parser.parse_args(argv)
    if reason := unavailable():
        print(f"vlap.browser: error: {reason}", file=sys.stderr)
        return 1
    figures = screenshot(args.model, args.png)
    print(
        f"served in {figures['start_seconds']:.1f} s (cold start); first caption {figures['first_caption_seconds']:.2f}"
        f" s, then {figures['caption_seconds']:.2f} s from the press to the text: {figures['caption']!r}; saved "
        f"{args.png} and {Path(args.png).with_stem(Path(args.png).stem + '_words')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
