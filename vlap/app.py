"""The web demo: a Gradio app over `vlap.tasks` for any exported VLAP or LangBridge folder.

    vlap serve MODEL_DIR [--host 127.0.0.1] [--port 7860] [--gallery DIR]
    python app.py [MODEL_DIR]        # the Spaces entry point at the repository root

Tabs: Caption, Ask, Words (the image read as words; per visual token for LangBridge), Arithmetic and Retrieve (over
a gallery folder: the example images shipped in vlap/app_examples/ unless --gallery names another). Bad input (no
image, a file that is not an image, a decompression bomb, an empty question or text) is a message in the page,
never a traceback. Every model call goes through one queue slot (concurrency_id "model", limit 1): on a small CPU
two requests at once only slow each other down.
"""

import argparse
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from modeling_vlap.processing_vlap import open_image
from vlap import tasks
from vlap.inputs import InputError, add_serve_arguments, expand_images, parse_terms

EXAMPLES = Path(__file__).parent / "app_examples"
# The Retrieve tab's default captions: the classes of the example renders (make demo's 24 colours x shapes) and
# the example photos.
DEFAULT_CANDIDATES = [
    f"a {colour} {shape}"
    for colour in ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
    for shape in ("circle", "rectangle", "triangle")
] + ["a cat", "a cup of coffee", "an astronaut", "a rocket"]
NO_IMAGE = "Upload an image first (or click one of the examples below it)."
QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}


def read_upload(upload) -> Image.Image:
    """An image input's upload (`Demo._image_input`) -> RGB PIL image; no image or an unreadable one -> gr.Error
    naming the cause."""
    if upload is None:
        raise gr.Error(NO_IMAGE)
    name = upload.orig_name or Path(upload.path).name
    try:
        return open_image(upload.path, name)
    except ValueError as error:  # PIL's message names the server's temporary copy: name the user's file instead
        raise gr.Error(str(error).replace(upload.path, name)) from None


def required_text(text: str | None, what: str) -> str:
    if not text or not text.strip():
        raise gr.Error(f"Type {what} first.")
    return text.strip()


class GenerationProgress(BaseStreamer):
    """Shows generation token by token in the page (`generate(streamer=...)` calls `put` once per step)."""

    def __init__(self, progress: gr.Progress, total: int, desc: str):
        self.progress, self.total, self.desc, self.steps = progress, total, desc, -1  # the first put is the prompt

    def put(self, value):
        self.steps += 1
        if self.steps > 0:
            self.progress((min(self.steps, self.total), self.total), desc=self.desc, unit="tokens")

    def end(self):
        pass


class Demo:
    """The app's handlers over one loaded model; `build()` lays them out as tabs. Handlers raise gr.Error on bad
    input, which Gradio shows as a message; any other ValueError (e.g. a prompt longer than the LLM allows) is shown
    the same way."""

    def __init__(self, model, processor, gallery: Path = EXAMPLES, title: str = "VLAP"):
        self.model, self.processor, self.title = model, processor, title
        self.gallery_paths = expand_images([str(gallery)])
        self.gallery_images = [open_image(path) for path in self.gallery_paths]
        self._gallery_features = None
        self.is_langbridge = model.config.bridge_type == "langbridge"

    def gallery_features(self) -> torch.Tensor:
        if self._gallery_features is None:  # computed on first use, so the app starts without a vision pass
            self._gallery_features = tasks.image_features(self.model, self.processor, self.gallery_images)
        return self._gallery_features

    def caption(self, upload, prompt: str, max_new_tokens: int = 20, progress=gr.Progress()) -> str:
        image = read_upload(upload)
        streamer = GenerationProgress(progress, max_new_tokens, "Generating the caption")
        with model_errors():
            return tasks.caption(
                self.model,
                self.processor,
                [image],
                prompt=(prompt or "").strip() or None,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
            )[0]

    def ask(self, upload, question: str, max_new_tokens: int = 10, progress=gr.Progress()) -> str:
        image = read_upload(upload)
        question = required_text(question, "a question about the image")
        progress(0, desc="Describing the image")
        streamer = GenerationProgress(progress, max_new_tokens, "Answering")
        with model_errors():
            return tasks.answer(
                self.model, self.processor, [image], [question], max_new_tokens=max_new_tokens, streamer=streamer
            )[0]

    def words(self, upload, top_k: int = 10) -> tuple[gr.BarPlot, pd.DataFrame]:
        """The image's top words (a bar chart) and, for LangBridge, the top words of each visual token (a table)."""
        image = read_upload(upload)
        with model_errors():
            words = tasks.read_words(self.model, self.processor, [image], top_k=int(top_k))[0]
            labels = unique([printable(word) for word, _ in words])  # the chart would sum bars of equal labels
            chart = gr.BarPlot(pd.DataFrame({"word": labels, "weight": [p for _, p in words]}), sort=labels)
            rows = []
            if self.is_langbridge:
                per_token = tasks.token_words(self.model, self.processor, [image], top_k=5)[0]
                rows = [
                    [index, ", ".join(f"{printable(w)} ({c:.2f})" for w, c in said)]
                    for index, said in enumerate(per_token)
                ]
        return chart, pd.DataFrame(rows, columns=["visual token", "top words (coefficient)"])

    def arithmetic(self, upload, expression: str, top_k: int = 8) -> tuple[pd.DataFrame, list]:
        image = read_upload(upload)
        expression = required_text(expression, "an expression such as '- red + blue'")
        try:
            terms = parse_terms(shlex.split(expression))
        except (InputError, ValueError) as error:
            raise gr.Error(str(error)) from None
        with model_errors():
            result = tasks.arithmetic(
                self.model, self.processor, image, terms, top_k=int(top_k), candidate_features=self.gallery_features()
            )
        words = pd.DataFrame([(printable(w), round(s, 4)) for w, s in result["words"]], columns=["word", "cosine"])
        return words, self._gallery_hits(result["images"])

    def text_to_images(self, text: str, top_k: int = 4) -> list:
        text = required_text(text, "a text to search the gallery for")
        with model_errors():
            scores = tasks.image_text_scores(self.model, self.processor, self.gallery_features(), [text])
        return self._gallery_hits(tasks.rank(scores.T, int(top_k))[0])

    def image_to_texts(self, upload, candidates: str, top_k: int = 5) -> pd.DataFrame:
        image = read_upload(upload)
        texts = [line.strip() for line in (candidates or "").splitlines() if line.strip()]
        if not texts:
            raise gr.Error("Give candidate captions, one per line.")
        with model_errors():
            image_features = tasks.image_features(self.model, self.processor, [image])
            scores = tasks.image_text_scores(self.model, self.processor, image_features, texts)
        ranked = tasks.rank(scores, int(top_k))[0]
        return pd.DataFrame([(texts[i], round(s, 4)) for i, s in ranked], columns=["caption", "score"])

    def _gallery_hits(self, ranked) -> list:
        return [(str(self.gallery_paths[i]), f"{score:+.3f} {self.gallery_paths[i].name}") for i, score in ranked]

    # -------------------------------------------------------------------------------------------------- layout
    @staticmethod
    def _image_input(elem_id: str, examples: list[str], label: str = "Image") -> gr.Image:
        """An image drop zone with the shipped example images under it. It hands the handler the upload unopened
        (`read_upload`): Gradio's own preprocessing opens the file with PIL and fails with a bare "Error" on a file
        that is not an image. (An instance attribute, not a subclass: Gradio writes a .pyi stub beside the module of
        every component subclass.)"""
        image = gr.Image(label=label, sources=["upload", "clipboard"], elem_id=elem_id)
        image.preprocess = lambda payload: payload
        gr.Examples(examples, inputs=image, label="Examples", examples_per_page=len(examples))
        return image

    def build(self) -> gr.Blocks:
        kind = "LangBridge" if self.is_langbridge else "VLAP"
        examples = [str(path) for path in expand_images([str(EXAMPLES)])]
        with gr.Blocks(title=f"{self.title} ({kind})", analytics_enabled=False) as app:  # offline: no calls home
            gr.Markdown(
                f"# {kind} demo\nModel: `{self.title}`, a frozen vision model and a frozen LLM bridged by {kind}. "
                "Upload an image or click an example."
            )
            with gr.Tab("Caption"):
                with gr.Row():
                    with gr.Column():
                        image = self._image_input("caption-image", examples)
                    with gr.Column():
                        prompt = gr.Textbox(self.processor.prompt, label="Prompt (after the image)")
                        button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                        output = gr.Textbox(label="Caption", elem_id="caption-output")
                button.click(self.caption, [image, prompt], output, **QUEUE)
            with gr.Tab("Ask"):
                with gr.Row():
                    with gr.Column():
                        image = self._image_input("ask-image", examples)
                    with gr.Column():
                        question = gr.Textbox(
                            label="Question", placeholder="What colour is the shape?", elem_id="ask-question"
                        )
                        button = gr.Button("Ask", variant="primary", elem_id="ask-button")
                        output = gr.Textbox(label="Answer", elem_id="ask-output")
                button.click(self.ask, [image, question], output, **QUEUE)
                question.submit(self.ask, [image, question], output, **QUEUE)
            with gr.Tab("Words"):
                with gr.Row():
                    with gr.Column():
                        image = self._image_input("words-image", examples)
                        top_k = gr.Slider(3, 30, value=10, step=1, label="Words")
                        button = gr.Button("Read as words", variant="primary", elem_id="words-button")
                    with gr.Column():
                        chart = gr.BarPlot(
                            x="word",
                            y="weight",
                            label="The image's assignment over the vocabulary (top words)",
                            elem_id="words-chart",
                        )
                        per_token = gr.Dataframe(
                            label="What each visual token says (LangBridge)",
                            visible=self.is_langbridge,
                            elem_id="words-tokens",
                        )
                button.click(self.words, [image, top_k], [chart, per_token], **QUEUE)
            with gr.Tab("Arithmetic"):
                with gr.Row():
                    with gr.Column():
                        image = self._image_input("arithmetic-image", examples)
                        expression = gr.Textbox("- red + blue", label="Expression: image (+|-) word ...")
                        button = gr.Button("Compute", variant="primary", elem_id="arithmetic-button")
                    with gr.Column():
                        words = gr.Dataframe(label="Nearest words", elem_id="arithmetic-words")
                        nearest = gr.Gallery(label="Nearest gallery images", columns=4, height="auto")
                button.click(self.arithmetic, [image, expression], [words, nearest], **QUEUE)
            with gr.Tab("Retrieve"):
                gr.Markdown(f"Gallery: {len(self.gallery_paths)} images.")
                with gr.Row():
                    with gr.Column():
                        query = gr.Textbox(
                            label="Text -> best gallery images", placeholder="a blue triangle", elem_id="retrieve-query"
                        )
                        button = gr.Button("Search the gallery", variant="primary")
                        found = gr.Gallery(label="Best images", columns=4, height="auto")
                    button.click(self.text_to_images, query, found, **QUEUE)
                    query.submit(self.text_to_images, query, found, **QUEUE)
                    with gr.Column():
                        image = self._image_input("retrieve-image", examples, "Image -> best captions")
                        candidates = gr.Textbox(
                            "\n".join(DEFAULT_CANDIDATES), lines=6, label="Candidate captions, one per line"
                        )
                        button = gr.Button("Rank the captions", variant="primary")
                        ranked = gr.Dataframe(label="Best captions")
                    button.click(self.image_to_texts, [image, candidates], ranked, **QUEUE)
        return app.queue(max_size=32)


def unique(labels: list[str]) -> list[str]:
    """Labels made distinct by a counter on repeats: ["a", "b", "a"] -> ["a", "b", "a (2)"]."""
    seen: dict[str, int] = {}
    result = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        result.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return result


def printable(word: str) -> str:
    """Byte-level pieces can be control bytes or bare spaces: show them as repr, other words stripped."""
    return word.strip() if word.strip() and word.isprintable() else repr(word)


@contextmanager
def model_errors():
    """A ValueError from the model code (about the input it was given) becomes a message in the page."""
    try:
        yield
    except ValueError as error:
        raise gr.Error(" ".join(str(error).split())) from None


def default_model() -> str | None:
    """$VLAP_MODEL, else the VLAP model `make demo` exports, if it is there."""
    demo = Path(__file__).resolve().parent.parent / "outputs" / "demo" / "vlap" / "final"
    return os.environ.get("VLAP_MODEL") or (str(demo) if demo.is_dir() else None)


def serve(
    model_dir: str, host: str = "127.0.0.1", port: int = 7860, gallery: str | None = None, device: str = "cpu"
) -> None:
    """Load `model_dir` (any exported VLAP or LangBridge folder, or Hub id) and serve the app until interrupted.
    A folder that does not load is a ValueError/OSError naming it, before anything is served."""
    try:
        model, processor = tasks.load(model_dir, device=device)
    except (OSError, ValueError, KeyError, TypeError) as error:
        cause = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{model_dir}: cannot load the model ({cause})") from None
    demo = Demo(model, processor, Path(gallery) if gallery else EXAMPLES, title=model_dir)
    print(f"serving {model_dir} on http://{host}:{port}", flush=True)
    demo.build().launch(server_name=host, server_port=port, quiet=True)


def main(argv=None) -> int:
    """`python app.py [MODEL_DIR] [--host H] [--port P] [--gallery DIR]` (the Spaces entry point)."""
    parser = argparse.ArgumentParser(
        prog="app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=default_model(),
        metavar="MODEL_DIR",
        help="an exported VLAP or LangBridge folder (default: $VLAP_MODEL, else make demo's model)",
    )
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("give MODEL_DIR (or set VLAP_MODEL, or run `make demo` first)")
    try:
        serve(args.model, args.host, args.port, args.gallery)
    except (InputError, ValueError, OSError) as error:  # a model or gallery that cannot be read
        print(f"app.py: error: {error}", file=sys.stderr)
        return 1
    return 0
