"""VLAP processor: the vision image processor + the LLM's tokenizer (remote code: torch and transformers only)."""

import base64
import io
import os
import stat
from collections.abc import Sequence

import torch
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_utils import load_image
from transformers.utils import is_vision_available

if is_vision_available():
    from PIL import Image, ImageOps, UnidentifiedImageError


MAX_ASPECT_RATIO = 100  # a 100,000 x 1 strip would be resized to 22 million x 224 pixels (~15 GB) for CLIP


def to_rgb(image: "Image.Image") -> "Image.Image":
    """Any PIL mode -> RGB, the one conversion every route uses (processor, pipeline, CLI, training data).

    Transparency (RGBA, LA, PA, P or L with a transparent colour) is composited onto white; 16- and 32-bit integer
    images (I;16 PNGs, I) are scaled to 8 bits by their bit depth, not clipped (PIL's own convert("RGB") turns every
    value above 255 white); float images (F: float TIFFs) in [0, 1] are scaled by 255; other modes (L, 1, CMYK,
    YCbCr, ...) are converted by PIL. An empty image or one more than MAX_ASPECT_RATIO times longer than wide (or
    wider than long), which the vision processor's resize would blow up, is a ValueError.
    """
    width, height = image.size
    if min(width, height) == 0:
        raise ValueError(f"the image is empty ({width}x{height} pixels)")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(
            f"the image is {width}x{height} pixels: an aspect ratio beyond {MAX_ASPECT_RATIO}:1, which resizing for "
            "the vision model would blow up; crop it first"
        )
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        scale = 255 if image.getextrema()[1] <= 1 else 1
        image = image.point(lambda value: value * scale + 0.5).convert("L")  # rounded, as numpy floats are
    if image.mode.startswith("I;16") or image.mode == "I":
        bits = 16 if image.mode.startswith("I;16") or image.getextrema()[1] < 65536 else 32
        image = image.convert("I").point(lambda value: value * (1 / 2 ** (bits - 8))).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def named(error: ValueError, name: str) -> ValueError:
    """`error` with its message starting with `name` (the file or the images[i] it is about), once."""
    return ValueError(str(error) if str(error).startswith(name) else f"{name}: {error}")


def open_image(source, name: str | None = None) -> "Image.Image":
    """An image file (path or binary file object) -> RGB PIL image (`to_rgb`), decoded now, turned upright by its
    EXIF orientation (as a phone photo is shown).

    A path must be a regular file (symlinks followed): a folder, FIFO or device is refused before it is opened (a
    FIFO would block the read forever). Unreadable or truncated files, and images over PIL's decompression-bomb
    limit (Image.MAX_IMAGE_PIXELS, twice which PIL refuses outright), are a ValueError naming `name` (default: the
    path) and the cause.
    """
    name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (str, os.PathLike)):
        try:
            mode = os.stat(source).st_mode
        except OSError as error:
            raise ValueError(f"{name}: not a readable image ({error.strerror or error})") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{name}: not a regular file (a folder, FIFO or device is not an image)")
    limit = Image.MAX_IMAGE_PIXELS
    too_big = f"{name}: over the limit of {limit or 0:,} pixels (PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?)"
    try:
        with Image.open(source) as opened:
            if limit is not None and opened.width * opened.height > limit:
                raise ValueError(f"{too_big[:-1]}: {opened.width}x{opened.height})")
            opened.load()
            return to_rgb(ImageOps.exif_transpose(opened))
    except ValueError as error:
        raise named(error, name) from None
    except Image.DecompressionBombError:  # PIL refuses twice the limit while opening
        raise ValueError(too_big) from None
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"{name}: not a readable image ({error})") from None


def fetch_image(url: str, timeout: float | None = None) -> "Image.Image":
    """An http(s) image; a failure (no network, DNS, HTTP status, timeout) is a ValueError naming the URL."""
    try:
        return load_image(url, timeout=timeout)
    except Exception as error:  # the HTTP client's own error types
        cause = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{url}: could not fetch the image ({type(error).__name__}: {cause})") from None


def array_to_image(array, name: str) -> "Image.Image":
    """A numpy array (H, W) or (H, W, C) with C in 1, 3, 4, or a torch tensor (C, H, W) as torchvision holds images
    -> PIL image. uint8 values are taken as they are; float values must lie in [0, 1] (scaled by 255)."""
    if isinstance(array, torch.Tensor):
        if array.ndim != 3 or array.shape[0] not in (1, 3, 4):
            raise ValueError(f"{name}: a tensor image must be (C, H, W) with C 1, 3 or 4, got {tuple(array.shape)}")
        array = array.detach().cpu().permute(1, 2, 0).numpy()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{name}: an array image must be (H, W) or (H, W, C) with C 1, 3 or 4, got {array.shape}")
    if array.dtype.kind == "f":
        if array.size and not ((array >= 0) & (array <= 1)).all():  # NaN fails too
            raise ValueError(f"{name}: a float image must hold values in [0, 1]")
        array = (array * 255).round().astype("uint8")
    elif array.dtype != "uint8":
        raise ValueError(f"{name}: an array image must be uint8 or float in [0, 1], got {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    return Image.fromarray(array)


def _load_image(item, index: int) -> "Image.Image":
    """A PIL image, a path, http(s) URL or base64 data URI of one, a numpy array or a torch tensor
    (`array_to_image`) -> RGB PIL image (`to_rgb`); else a ValueError naming the item."""
    name = f"images[{index}]"
    if isinstance(item, str) and item.startswith(("http://", "https://")):
        return to_rgb(fetch_image(item))
    if isinstance(item, str) and item.startswith("data:image/"):  # a base64 data URI, as browsers and chat APIs send
        try:
            data = base64.b64decode(item.split(",", 1)[1], validate=True)
        except (IndexError, ValueError):
            raise ValueError(f"{name}: a data URI needs base64 image bytes after 'data:image/...;base64,'") from None
        return open_image(io.BytesIO(data), name)
    if isinstance(item, (str, os.PathLike)):
        return open_image(item, f"{name} ({os.fspath(item)!r})")
    try:
        if isinstance(item, Image.Image):
            return to_rgb(item)
        if isinstance(item, torch.Tensor) or type(item).__module__ == "numpy" and hasattr(item, "dtype"):
            return to_rgb(array_to_image(item, name))
    except ValueError as error:
        raise named(error, name) from None
    raise ValueError(
        f"{name} is a {type(item).__name__}; expected a PIL image, a path or URL of an image file, a numpy array "
        "(H, W[, C]) or a torch tensor (C, H, W)"
    )


def leading_bos_token_id(tokenizer) -> int | None:
    """The BOS token id a tokenizer starts every text with (Gemma, Llama), or None (GPT-2-style BPE, T5)."""
    ids, bos = tokenizer("a")["input_ids"], tokenizer.bos_token_id
    return bos if bos is not None and ids and ids[0] == bos else None


def word_bridge_ids(tokenizer, words: list[str], layout: str) -> dict:
    """The VLAPConfig fields with which a word bridge writes its layout for this LLM as token ids: each word as read
    after a space (`word_bridge_word_ids`) and the layout before `{words}`, the separator "," and the layout after
    (`word_bridge_layout_ids`), and the tokens that end a caption, those holding a line break
    (`word_bridge_stop_ids`). The model joins them; that equals tokenising the written-out text only for
    tokenizers that split there (byte-level BPE, Gemma's), which is checked: a SentencePiece tokenizer that adds a
    "▁" before every piece (T5's) is refused."""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    before, after = layout.split("{words}")
    word_ids = [encode(" " + word) for word in words]
    layout_ids = [encode(before), encode(","), encode(after)]
    sample = words[:3] or ["red", "circle"]  # the words in place: tokenisers merge across a bare "{words}" slot
    sample_ids = word_ids[:3] or [encode(" " + word) for word in sample]
    joined = layout_ids[0] + [i for n, word in enumerate(sample_ids) for i in (layout_ids[1] if n else []) + word]
    if joined + layout_ids[2] != encode(before + ",".join(" " + word for word in sample) + after):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"{name}: its tokenizer does not tokenise the word-bridge layout piece by piece (it merges or adds tokens "
            "where the words are joined in), so the LLM would not read the text it is shown: use an LLM with a "
            "byte-level BPE or Gemma-style tokenizer"
        )
    # The layout puts each caption on its own line: generation ends at the first token holding a line break.
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    stop_ids = [i for i, text in enumerate(texts) if "\n" in text and i not in tokenizer.all_special_ids]
    return {"word_bridge_word_ids": word_ids, "word_bridge_layout_ids": layout_ids, "word_bridge_stop_ids": stop_ids}


class VLAPProcessor(ProcessorMixin):
    r"""
    Turns images, captions and prompts into VLAP model inputs.

    - `images` -> `pixel_values` (the vision model's image processor, after conversion to RGB).
    - `text` (captions) -> `input_ids`, `attention_mask`: no BOS, EOS appended, right-padded. A caption is tokenised
      as it continues the prompt ("A picture of" + " a red circle"), so its first word is the token the LLM reads
      after a word ("Ġa"), not the start-of-text form ("a") it would get alone.
    - with images, `prompt` (default `self.prompt`, "A picture of"; a string or one per image, e.g. a VQA question)
      -> `prompt_input_ids`, `prompt_attention_mask`: the text placed right after the visual prefix.

    Args:
        image_processor: the vision model's image processor.
        tokenizer: the LLM's tokenizer (a pad token is set to EOS when it has none).
        prompt (`str`): the default prompt after the visual prefix.
    """

    def __init__(self, image_processor=None, tokenizer=None, prompt: str = "A picture of", **kwargs):
        self.prompt = prompt
        super().__init__(image_processor, tokenizer, **kwargs)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_vision_text_pretrained(
        cls, vision_model_name_or_path: str, text_model_name_or_path: str, prompt: str = "A picture of", **kwargs
    ) -> "VLAPProcessor":
        """Combine the image processor of a vision checkpoint with the tokenizer of an LLM checkpoint."""
        image_processor = AutoImageProcessor.from_pretrained(vision_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path, **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer, prompt=prompt)

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        prompt: str | Sequence[str] | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL images, paths, uint8 numpy arrays).
            text: one caption or a list, one per image when both are given.
            prompt: text after the visual prefix, a string for all images or one per image (default `self.prompt`).
            max_length: truncate captions to this many tokens (EOS included).
        """
        if images is None and text is None:
            raise ValueError("pass images, text (captions) or both")
        data = {}
        num_images = None
        if images is not None:
            if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
                images = [images]
            if len(images) == 0:
                raise ValueError("images is an empty list: pass at least one image")
            images = [_load_image(item, index) for index, item in enumerate(images)]
            num_images = len(images)
            data.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
            data.update(self.prompt_inputs(num_images, prompt, return_tensors=None))
        elif prompt is not None:
            raise ValueError("a prompt goes after an image's visual prefix: pass images with it")
        if text is not None:
            captions = [text] if isinstance(text, str) else list(text)
            if not captions:
                raise ValueError("text is an empty list: pass at least one caption")
            for index, caption in enumerate(captions):
                if not isinstance(caption, str) or not caption.strip():
                    raise ValueError(f"text[{index}] is {caption!r}; every caption must be a non-empty string")
            if num_images is not None and len(captions) != num_images:
                raise ValueError(f"got {num_images} images but {len(captions)} captions")
            caption_ids = self.caption_token_ids(captions)
            if max_length is not None:
                caption_ids = [ids[: max_length - 1] for ids in caption_ids]
            data.update(self._pad([ids + [self.tokenizer.eos_token_id] for ids in caption_ids]))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def caption_token_ids(self, captions: list[str], prompt: str | None = None) -> list[list[int]]:
        """Token ids of captions as they continue `prompt` (default `self.prompt`): ids(prompt + " " + caption) minus
        ids(prompt).

        A byte-level BPE spells a word after a space differently from the same word opening a text; the LLM reads
        the caption after the prompt, so that is how it is tokenised. Where the tokenizer merges across the seam
        (the prompt's ids are not a prefix of the joint ids) the caption is tokenised with a leading space instead.
        """
        prompt = self.prompt if prompt is None else prompt
        if not prompt:
            return self.tokenizer(captions, add_special_tokens=False)["input_ids"]
        separator = "" if prompt[-1].isspace() else " "
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        joint = self.tokenizer([prompt + separator + c for c in captions], add_special_tokens=False)["input_ids"]
        spaced = self.tokenizer([separator + c for c in captions], add_special_tokens=False)["input_ids"]
        return [
            ids[len(prompt_ids) :] if ids[: len(prompt_ids)] == prompt_ids else alone
            for ids, alone in zip(joint, spaced)
        ]

    def prompt_inputs(self, num_images: int, prompt=None, return_tensors: str | None = "pt") -> BatchFeature:
        """`prompt_input_ids` / `prompt_attention_mask` for `num_images` images (also for cached vision features).

        `prompt`: None (use `self.prompt`), one string for all images, or one string per image.
        """
        if prompt is None:
            prompt = self.prompt
        prompts = [prompt] * num_images if isinstance(prompt, str) else list(prompt)
        if len(prompts) != num_images:
            raise ValueError(f"got {num_images} images but {len(prompts)} prompts")
        padded = self._pad(self.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        data = {"prompt_input_ids": padded["input_ids"], "prompt_attention_mask": padded["attention_mask"]}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def answer_inputs(self, answers: list[str], prompt: str) -> BatchFeature:
        """`input_ids` / `attention_mask` of answers tokenised as they continue `prompt`, EOS appended (to score them
        with `model.caption_log_likelihood`)."""
        ids = self.caption_token_ids(answers, prompt)
        return BatchFeature(self._pad([row + [self.tokenizer.eos_token_id] for row in ids]), tensor_type="pt")

    def _pad(self, ids: list[list[int]]) -> dict:
        """Right-pad token id lists into `input_ids` and `attention_mask` (the model moves padding as it needs)."""
        width = max(len(row) for row in ids)
        pad_id = self.tokenizer.pad_token_id
        return {
            "input_ids": [row + [pad_id] * (width - len(row)) for row in ids],
            "attention_mask": [[1] * len(row) + [0] * (width - len(row)) for row in ids],
        }

    def apply_chat_template(
        self,
        conversation,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        continue_final_message: bool = False,
        **kwargs,
    ):
        """Chat messages (one conversation or a list of them) -> the prompt after each image's visual prefix.

        Image items of the content (`{"type": "image", "image" | "url" | "path": ...}`) are taken out of the text: the
        model always reads the image first. The text turns are rendered with `chat_template`, else the processor's or
        the LLM tokenizer's; an LLM without one (a plain OPT or T5) gets the turns' text joined by new lines.
        `tokenize=True` returns the model inputs, `processor(images=..., prompt=...)`, one image per conversation;
        otherwise the prompt string(s).
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        prompts, images = [], []
        template = (
            chat_template or getattr(self, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        )
        # A template that opens with the BOS of a tokenizer that starts every text with one (Gemma): the model reads
        # that BOS before the visual prefix (VLAPConfig.prefix_bos_token_id), not again after it.
        bos_before_prefix = leading_bos_token_id(self.tokenizer) is not None
        for messages in conversation if batched else [conversation]:
            turns = []
            for message in messages:
                content = message["content"]
                if not isinstance(content, str):
                    for item in content:
                        if item.get("type") == "image":
                            images.append(item.get("image", item.get("url", item.get("path"))))
                    texts = [item.get("text") for item in content if item.get("type") == "text"]
                    if not all(isinstance(text, str) for text in texts):
                        raise ValueError('a text item needs its text: {"type": "text", "text": "..."}')
                    content = " ".join(texts)
                turns.append({"role": message["role"], "content": content})
            if template:
                prompt = self.tokenizer.apply_chat_template(
                    turns,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    continue_final_message=continue_final_message,
                )
                if bos_before_prefix and prompt.startswith(self.tokenizer.bos_token):
                    prompt = prompt[len(self.tokenizer.bos_token) :]
                prompts.append(prompt)
            else:
                prompts.append("\n".join(turn["content"] for turn in turns if turn["content"]))
        if not tokenize:
            return prompts if batched else prompts[0]
        if len(images) != len(prompts):
            raise ValueError(
                f"each conversation needs exactly one image item, got {len(images)} image(s) for "
                f"{len(prompts)} conversation(s)"
            )
        return self(images=images, prompt=prompts, return_tensors=return_tensors)

    def decode_words(self, token_ids) -> list[list[str]]:
        """`[B, k]` token ids (e.g. from `model.image_to_words`) -> the words they spell, one list per image."""
        return [[self.tokenizer.decode([int(i)]).strip() for i in row] for row in token_ids]

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "prompt_input_ids", "prompt_attention_mask"]


__all__ = ["VLAPProcessor", "word_bridge_ids"]
