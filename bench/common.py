"""Tiny-but-realistic VLAP models for benchmarks: real vocabulary sizes and token counts, narrow layers for CPU."""

import json
import time

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration

VOCAB = 32128  # T5's


def vision_model(full_size: bool = False) -> CLIPVisionModel:
    """ViT-B/32 geometry (224 px, 32 px patches: 50 tokens): the paper's 12 layers of 768, or 4 layers of 256."""
    width, layers = (768, 12) if full_size else (256, 4)
    return CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_attention_heads=width // 64,
            num_hidden_layers=layers,
            image_size=224,
            patch_size=32,
        )
    )


def language_model(kind: str):
    """T5-small-like encoder-decoder or a small Llama, both with a 32,128-word vocabulary."""
    if kind == "t5":
        config = T5Config(
            vocab_size=VOCAB,
            d_model=256,
            d_kv=32,
            d_ff=1024,
            num_layers=4,
            num_heads=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
        return T5ForConditionalGeneration(config)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


REAL = "efficientnet-lite0+smollm2-135m"


def real_models_cached() -> bool:
    from experiments.assets import EFFICIENTNET_FOLDER, SMOLLM2_FOLDER, cache_root

    return all((cache_root() / name / "model.safetensors").exists() for name in (EFFICIENTNET_FOLDER, SMOLLM2_FOLDER))


def vlap_model(kind: str, full_size_vision: bool = False, **config_kwargs) -> VLAPForConditionalGeneration:
    """A bench model: "t5" / "llama" (tiny-but-realistic, random) or REAL (the demo's cached pretrained models)."""
    torch.manual_seed(0)
    if kind == REAL:
        from experiments.assets import efficientnet_lite0, smollm2_135m

        return VLAPForConditionalGeneration.from_vision_text_pretrained(
            str(efficientnet_lite0()), str(smollm2_135m()), num_visual_tokens=9, **config_kwargs
        ).eval()
    vision, llm = vision_model(full_size_vision), language_model(kind)
    config = VLAPConfig(vision_config=vision.config.to_dict(), text_config=llm.config.to_dict(), **config_kwargs)
    return VLAPForConditionalGeneration(config, vision_model=vision, language_model=llm).eval()


def batch(size: int, caption_tokens: int = 12, prompt_tokens: int = 3, seed: int = 0, vocab: int = VOCAB) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(size, 3, 224, 224, generator=generator),
        "input_ids": torch.randint(3, vocab, (size, caption_tokens), generator=generator),
        "attention_mask": torch.ones(size, caption_tokens, dtype=torch.long),
        "prompt_input_ids": torch.randint(3, vocab, (size, prompt_tokens), generator=generator),
        "prompt_attention_mask": torch.ones(size, prompt_tokens, dtype=torch.long),
    }


def real_batch(model: VLAPForConditionalGeneration, size: int, seed: int = 0) -> dict:
    """What a `make demo` training step sees: cached vision output (the frozen EfficientNet-Lite0 map, not re-run)
    and easy-vqa captions in their templates, tokenised by the VLAP processor with the "A picture of" prompt."""
    from experiments.assets import efficientnet_lite0, smollm2_135m
    from experiments.easy_vqa import TEMPLATES
    from experiments.shapes import COLOURS, SHAPES
    from modeling_vlap import VLAPProcessor

    processor = VLAPProcessor.from_vision_text_pretrained(str(efficientnet_lite0()), str(smollm2_135m()))
    generator = torch.Generator().manual_seed(seed)
    colours, picks = list(COLOURS), torch.randint(0, 1000, (size, 3), generator=generator).tolist()
    captions = [
        TEMPLATES[t % len(TEMPLATES)].format(colour=colours[c % len(colours)], shape=SHAPES[s % len(SHAPES)])
        for t, c, s in picks
    ]
    inputs = dict(processor(text=captions))
    inputs.update(processor.prompt_inputs(size))
    with torch.no_grad():
        inputs["vision_hidden_states"] = model.get_vision_hidden_states(
            torch.randn(size, 3, 224, 224, generator=generator)
        )
    return inputs


def photos(count: int, size: int = 224) -> list[Image.Image]:
    return [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (size, size, 3), dtype=np.uint8)) for i in range(count)
    ]


def bench_kinds(real: bool) -> tuple[str, ...]:
    """The bench models, plus the demo's real ones when asked for and cached (`make demo` caches them)."""
    if real and not real_models_cached():
        print("--real: the demo's models are not cached yet (run `make demo` once); skipping them")
    return ("t5", "llama") + ((REAL,) if real and real_models_cached() else ())


def interleaved_medians(functions: dict, repeats: int) -> dict:
    """Median seconds of each function, runs interleaved so that machine noise hits all of them alike."""
    for fn in functions.values():
        fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def device_name() -> str:
    return f"cpu x{torch.get_num_threads()} threads"


def write_report(results: dict, json_path: str | None) -> None:
    """Print the full results as JSON and, when asked, write them to `json_path`."""
    print(json.dumps(results, indent=2))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(results, handle, indent=2)
