"""VLAP as a Hugging Face model package.

The modules of this folder are exactly what ships to the Hub as remote code (they import only torch, transformers and
each other). Importing the package registers them with the Auto classes twice over: for export (`save_pretrained`
writes a folder that `AutoModel` / `AutoProcessor` / `pipeline("image-to-text")` load with `trust_remote_code=True`
where this package is not installed) and locally, so that where it is installed `AutoModel.from_pretrained(folder)`
uses this installed code and never runs the .py files a folder holds (no `trust_remote_code` needed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from . import efficientnet_lite  # noqa: F401  (registers EfficientNet-Lite with AutoConfig / AutoModel here)
from .configuration_vlap import VLAPConfig
from .modeling_vlap import (
    VLAPForConditionalGeneration,
    VLAPForZeroShotImageClassification,
    VLAPOutput,
    VLAPPreTrainedModel,
)
from .optimal_transport import sinkhorn_knopp
from .pipeline_vlap import VLAPImageToTextPipeline
from .processing_vlap import VLAPProcessor

VLAPConfig.register_for_auto_class()
VLAPForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
VLAPProcessor.register_for_auto_class("AutoProcessor")
AutoConfig.register(VLAPConfig.model_type, VLAPConfig, exist_ok=True)
AutoModel.register(VLAPConfig, VLAPForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(VLAPConfig, VLAPForConditionalGeneration, exist_ok=True)
AutoProcessor.register(VLAPConfig, VLAPProcessor, exist_ok=True)

__all__ = [
    "VLAPConfig",
    "VLAPForConditionalGeneration",
    "VLAPForZeroShotImageClassification",
    "VLAPImageToTextPipeline",
    "VLAPOutput",
    "VLAPPreTrainedModel",
    "VLAPProcessor",
    "sinkhorn_knopp",
]
