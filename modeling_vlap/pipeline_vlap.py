"""`pipeline("image-to-text", model=<VLAP folder>, trust_remote_code=True)` (remote code: transformers only).

transformers 5 maps "image-to-text" to ImageTextToTextPipeline, which demands text; a VLAP folder names this class
in `config.custom_pipelines` instead, so captioning needs no text and `prompt=` turns it into prompted VQA.
"""

from transformers import GenerationConfig, Pipeline
from transformers.image_utils import load_image


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
        return {"prompt": prompt, "timeout": timeout}, {"generate_kwargs": {**(generate_kwargs or {}), **generation_params}}, {}

    def preprocess(self, image, prompt=None, timeout=None):
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            try:
                image = load_image(image, timeout=timeout)
            except Exception as error:  # the HTTP client's own error types (no network, DNS, HTTP status, timeout)
                cause = " ".join(str(error).split()) or type(error).__name__
                raise ValueError(f"{image}: could not fetch the image ({type(error).__name__}: {cause})") from None
        return self.processor(images=[image], prompt=prompt, return_tensors="pt")

    def _forward(self, model_inputs, generate_kwargs=None):
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {})
        return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]
