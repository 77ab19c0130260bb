"""`pipeline("image-to-text" | "image-text-to-text", model=<VLAP folder>, trust_remote_code=True)` (remote code:
transformers only).

transformers 5 maps "image-to-text" to ImageTextToTextPipeline, which demands text; a VLAP folder names
VLAPImageToTextPipeline in `config.custom_pipelines` instead, so captioning needs no text and `prompt=` turns it into
prompted VQA. "image-text-to-text" is the standard pipeline (text prompts or chat messages, batching, return_full_text)
with two steps adapted: a VLAP processor takes the prompt as `prompt` (its `text` means captions), and generate
returns only the new tokens.
"""

from string import Formatter

from transformers import GenerationConfig, Pipeline
from transformers.pipelines.image_text_to_text import Chat, ImageTextToTextPipeline
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

from .processing_vlap import fetch_image

# VLAP's text features weight each word by its rarity in the training captions (SIF), so a template word the captions
# never held ("photo", ".") outweighs the label itself: the default label text has the captions' form.
LABEL_TEMPLATE = "a {}"


def _fetched(image, timeout):
    """An http(s) URL fetched with the pipeline's `timeout` (the processor's own `fetch_image`); anything else as is."""
    return (
        fetch_image(image, timeout) if isinstance(image, str) and image.startswith(("http://", "https://")) else image
    )


class VLAPImageToTextPipeline(Pipeline):
    """Caption images, or answer `prompt` about them: `pipe(image, prompt=None)` -> `[{"generated_text": str}]`."""

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=30)

    def _sanitize_parameters(self, prompt=None, timeout=None, generate_kwargs=None, **generation_params):
        """`prompt` and `timeout` shape the input; everything else (max_new_tokens, num_beams, ...) goes to generate."""
        return (
            {"prompt": prompt, "timeout": timeout},
            {"generate_kwargs": {**(generate_kwargs or {}), **generation_params}},
            {},
        )

    def __call__(self, images, **kwargs):
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError("no images: give an image or a non-empty list of them")
        return super().__call__(images, **kwargs)

    def preprocess(self, image, prompt=None, timeout=None):
        return self.processor(images=[_fetched(image, timeout)], prompt=prompt, return_tensors="pt")

    def _forward(self, model_inputs, generate_kwargs=None):
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {})
        return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


class VLAPImageTextToTextPipeline(ImageTextToTextPipeline):
    """`pipe(images=image, text="Question: ... Answer:")` or `pipe(text=[chat messages with an image item])`: the
    standard image-text-to-text interface. The visual prefix always comes first; chat messages are rendered by
    `VLAPProcessor.apply_chat_template` (the LLM's chat template, image items taken out of the text)."""

    def check_model_type(self, supported_models):
        """A VLAP folder's own pipeline: transformers' list of supported classes does not know remote-code models."""

    def preprocess(self, inputs=None, timeout=None, continue_final_message=None, **processing_kwargs):
        if isinstance(inputs, Chat):
            return super().preprocess(
                inputs, timeout=timeout, continue_final_message=continue_final_message, **processing_kwargs
            )
        if isinstance(inputs, (list, tuple, str)) or inputs.get("images") is None:
            raise ValueError("a VLAP model needs an image with the text: pipe(images=..., text=...)")
        images = inputs["images"] if isinstance(inputs["images"], list) else [inputs["images"]]
        images = [_fetched(image, timeout) for image in images]
        model_inputs = self.processor(images=images, prompt=inputs["text"], return_tensors="pt").to(dtype=self.dtype)
        model_inputs["text"] = inputs["text"]
        return model_inputs

    def _forward(self, model_inputs, generate_kwargs=None):
        prompt_text = model_inputs.pop("text")
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        generated = self.model.generate(**model_inputs, **generate_kwargs)  # the new tokens only
        return {
            "generated_sequence": generated,
            "prompt_text": prompt_text,
            "input_ids": model_inputs["prompt_input_ids"],
        }


def template_fields(template: str, what: str) -> list[str]:
    """The field names of a str.format template ("" for `{}`). Format specs and conversions are refused: a template
    fills in words, and "{question:>999999999}" would ask for gigabytes."""
    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion in Formatter().parse(template)]
    except ValueError as error:
        raise ValueError(f"the {what} {template!r} is not a valid template ({error})") from None
    fields = [(field, spec, conversion) for field, spec, conversion in fields if field is not None]
    if any(spec or conversion for _, spec, conversion in fields):
        raise ValueError(f"the {what} {template!r}: fields take no format spec or conversion ({{name}} only)")
    return [field for field, _, _ in fields]


def label_texts(template: str, labels) -> list[str]:
    """The text scored for each zero-shot label: `template` with its one `{}` filled (a template without one would
    score the same text for every label)."""
    if template_fields(template, "label template") != [""]:
        raise ValueError(f"the label template {template!r} needs exactly one {{}} for the label")
    return [template.format(label) for label in labels]


class VLAPZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """`pipe(image, candidate_labels=[...], hypothesis_template="a {}")`: the standard zero-shot interface and output,
    with the label texts tokenised by the VLAP processor as captions are in training (after the prompt), not by the
    bare tokenizer (a byte-level BPE spells "a" at the start of a text differently from " a" inside one)."""

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False

    check_model_type = VLAPImageTextToTextPipeline.check_model_type

    def preprocess(self, image, candidate_labels=None, hypothesis_template=LABEL_TEMPLATE, timeout=None, **kwargs):
        inputs = self.processor(images=[_fetched(image, timeout)], return_tensors="pt")
        texts = self.processor(text=label_texts(hypothesis_template, candidate_labels))
        return {
            "pixel_values": inputs["pixel_values"].to(self.dtype),
            "candidate_labels": candidate_labels,
            "text_inputs": [{"input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"]}],
        }

    def _forward(self, model_inputs):
        text_inputs = model_inputs.pop("text_inputs")[0]
        outputs = self.model(**text_inputs, pixel_values=model_inputs["pixel_values"])
        return {"candidate_labels": model_inputs["candidate_labels"], "logits": outputs.logits_per_image}
