"""The web demo (vlap.app, `vlap serve`, app.py): its handlers against the model and the library they wrap, bad input as
a message, start-up failures as a one-line error; then in a real headless browser (Playwright driving Debian's
chromium) against `vlap serve` on loopback with a tiny model."""

import os
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import langbridge, save_tiny_vlap, shape_image

gr = pytest.importorskip("gradio", reason="the web demo needs the [app] extra (gradio)")
from gradio.data_classes import FileData  # noqa: E402

from vlap import app as web  # noqa: E402
from vlap import browser, tasks  # noqa: E402
from vlap.tasks import first_line  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved(backbones, tmp_path_factory):
    """A saved tiny VLAP (CLIP + Llama), a shape image, and a file that is not an image but is named like one."""
    root = tmp_path_factory.mktemp("app")
    save_tiny_vlap(backbones, root / "model")
    shape_image("red", "circle").save(root / "red_circle.png")
    shape_image("blue", "square").save(root / "blue_square.png")
    (root / "notes.png").write_text("these are notes, not pixels")
    return root


@pytest.fixture(scope="module")
def demo(saved):
    return web.Demo(*tasks.load(str(saved / "model")))


def upload(path) -> FileData:
    """What Gradio hands a handler for an uploaded file: its server-side copy and the name the user chose."""
    return FileData(path=str(path), orig_name=os.path.basename(path))


def message(call) -> str:
    with pytest.raises(gr.Error) as caught:
        call()
    return caught.value.message


def test_caption_is_the_models_generation_with_progress_per_token(demo, saved):
    steps = []
    text = demo.caption(upload(saved / "red_circle.png"), "A picture of", 6, lambda value, **_: steps.append(value))
    ids = demo.model.generate(**demo.processor(images=[str(saved / "red_circle.png")]), max_new_tokens=6)
    assert text == first_line(demo.processor.batch_decode(ids, skip_special_tokens=True)[0])
    assert steps == [(i, 6) for i in range(1, ids.shape[1] + 1)]  # one update per generated token


def test_words_chart_is_the_images_assignment(demo, saved):
    chart, per_token = demo.words(upload(saved / "red_circle.png"), top_k=7)
    pixels = demo.processor(images=[str(saved / "red_circle.png")])["pixel_values"]
    codes = demo.model.word_codes(demo.model.get_image_features(pixels))
    expected = torch.softmax(codes / demo.model.config.assignment_temperature, dim=-1).topk(7).values[0]
    frame = chart.constructor_args["value"]
    assert torch.allclose(torch.tensor(frame["weight"].tolist()), expected, atol=1e-6)
    assert len(set(frame["word"])) == 7 and chart.constructor_args["sort"] == list(frame["word"])  # bars in rank order
    assert per_token.empty  # a linear bridge has no per-token words


def test_words_of_a_langbridge_model_per_visual_token(backbones, saved):
    model, processor = langbridge(backbones)
    demo = web.Demo(model, processor)
    _, per_token = demo.words(upload(saved / "red_circle.png"))
    pixels = processor(images=[str(saved / "red_circle.png")])["pixel_values"]
    tokens = F.adaptive_avg_pool1d(model.get_vision_hidden_states(pixels).transpose(1, 2), 4).transpose(1, 2)
    coefficients = torch.softmax(model.bridge.to_words(model.bridge.mlp(tokens)), dim=-1)[0]  # [K, N], by hand
    assert len(per_token) == 4
    for row, token in zip(per_token.itertuples(index=False), coefficients):
        top = token.topk(5)
        expected = [
            f"{web.printable(model.config.langbridge_tokens[i])} ({c:.2f})" for i, c in zip(top.indices, top.values)
        ]
        assert row[1] == ", ".join(expected)


def test_arithmetic_and_retrieval_rank_as_the_library(demo, saved):
    words, images = demo.arithmetic(upload(saved / "red_circle.png"), "- red + blue", top_k=5)
    image = Image.open(saved / "red_circle.png")
    expected = tasks.arithmetic(
        demo.model, demo.processor, image, [("-", "red"), ("+", "blue")], top_k=5, images=demo.gallery_images
    )
    assert list(words["word"]) == [web.printable(w) for w, _ in expected["words"]]
    assert [path for path, _ in images] == [str(demo.gallery_paths[i]) for i, _ in expected["images"]]

    found = demo.text_to_images("a blue triangle", top_k=3)
    gallery = F.normalize(
        demo.model.get_image_prefix(demo.processor(images=demo.gallery_images)["pixel_values"]).mean(dim=1), dim=-1
    )
    tokens = demo.processor(text=["a blue triangle"])
    scores = demo.model.code_scores(gallery, tokens["input_ids"], tokens["attention_mask"])  # VLAP's word space
    order = scores[:, 0].argsort(descending=True)[:3]
    assert [path for path, _ in found] == [str(demo.gallery_paths[i]) for i in order]

    ranked = demo.image_to_texts(upload(saved / "red_circle.png"), "a red circle\n\na blue square\n", top_k=5)
    assert sorted(ranked["caption"]) == ["a blue square", "a red circle"]  # blank lines dropped, both ranked


def test_bad_input_is_a_message_that_names_the_cause(demo, saved, monkeypatch):
    red = upload(saved / "red_circle.png")
    assert message(lambda: demo.caption(None, "A picture of")) == web.NO_IMAGE
    text = message(lambda: demo.caption(upload(saved / "notes.png"), "A picture of"))
    assert text.startswith("notes.png: not a readable image") and str(saved) not in text  # no server paths
    assert "a question" in message(lambda: demo.ask(red, "   "))
    assert "expected '+' or '-'" in message(lambda: demo.arithmetic(red, "red blue"))
    assert "a text" in message(lambda: demo.text_to_images(""))
    assert "candidate captions" in message(lambda: demo.image_to_texts(red, "\n \n"))
    # The tiny LLM has 128 positions: the default VQA layout does not fit, and the page says so.
    assert "exceed the LLM's 128 positions" in message(
        lambda: demo.ask(red, "What colour is it?", 10, lambda *a, **k: 0)
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a decompression bomb, scaled down
    assert "red_circle.png: over the limit of 100 pixels" in message(lambda: demo.words(red))


def test_every_model_call_waits_for_the_one_queue_slot(demo):
    app = demo.build()
    model_calls = [fn for fn in app.fns.values() if getattr(fn.fn, "__self__", None) is demo]
    assert len(model_calls) == 8  # caption, ask (+ Enter), words, arithmetic, search (+ Enter), rank
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in model_calls} == {("model", 1)}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["vlap serve", "app.py"])
def test_a_folder_that_is_not_a_model_stops_the_server_before_it_serves(entry, tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    command = [sys.executable, "-m", "vlap.cli", "serve"] if entry == "vlap serve" else [sys.executable, "app.py"]
    result = subprocess.run(
        command + [str(tmp_path), "--port", str(browser.free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path}: cannot load the model" in result.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------ in a browser
# Skipped where no chromium is installed, unless VLAP_BROWSER_TESTS=required (CI's .ci/run): then that fails.
BROWSER_REQUIRED = os.environ.get("VLAP_BROWSER_TESTS") == "required"
needs_browser = pytest.mark.skipif(
    browser.unavailable() is not None and not BROWSER_REQUIRED, reason=str(browser.unavailable())
)


@pytest.fixture(scope="module")
def page(saved):
    """The app served by `vlap serve` on loopback, open in headless chromium; requests that leave loopback kept."""
    if reason := browser.unavailable():
        pytest.fail(f"VLAP_BROWSER_TESTS=required, but {reason}")
    with browser.served(saved / "model") as (url, _), browser.browser_page() as page:
        page.outside = []
        page.on(
            "request",
            lambda request: urlparse(request.url).hostname in ("127.0.0.1", None) or page.outside.append(request.url),
        )
        page.goto(url)
        yield page


@pytest.mark.slow
@needs_browser
def test_browser_caption_reads_back_the_models_caption(page, demo, saved):
    page.reload()
    browser.upload(page, "caption-image", saved / "red_circle.png")
    shown, _ = browser.press_and_read(page, "caption-button", "caption-output")
    assert shown == tasks.caption(demo.model, demo.processor, [str(saved / "red_circle.png")])[0]
    assert page.outside == []  # offline: no fonts, analytics or anything else from outside


@pytest.mark.slow
@needs_browser
def test_browser_words_tab_draws_one_bar_per_word(page, saved):
    page.reload()
    browser.open_tab(page, "Words")
    browser.upload(page, "words-image", saved / "blue_square.png")
    page.click("#words-button")
    bars = page.locator("#words-chart svg .mark-rect path")
    bars.nth(9).wait_for()
    assert bars.count() == 10  # the slider's default


@pytest.mark.slow
@needs_browser
def test_browser_bad_input_shows_a_message_not_a_traceback(page, saved):
    page.reload()
    page.click("#caption-button")
    assert browser.error_messages(page)[-1].endswith(web.NO_IMAGE)
    browser.open_tab(page, "Ask")
    page.locator("#ask-image input[type=file]").set_input_files(str(saved / "notes.png"))
    page.fill("#ask-question textarea", "What colour is it?")
    page.click("#ask-button")
    page.get_by_text("notes.png: not a readable image").wait_for()
    assert "Traceback" not in page.content()
