"""EfficientNet-Lite (Tan & Le 2019; the TF Lite variant: ReLU6, no squeeze-excitation) as a transformers model.

Remote code, shipped with VLAP so that a VLAPConfig can name it as its vision_config: importing this module
registers the config and model with AutoConfig / AutoModel. `last_hidden_state` is the final feature map
`[B, 1280, h, w]` (7 x 7 at 224 px): VLAP reads it as h * w visual tokens.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutputWithNoAttention

# (repeats, kernel, stride, expand ratio, input channels, output channels) of EfficientNet-Lite0's seven stages.
LITE0_STAGES = [
    [1, 3, 1, 1, 32, 16],
    [2, 3, 2, 6, 16, 24],
    [2, 5, 2, 6, 24, 40],
    [3, 3, 2, 6, 40, 80],
    [3, 5, 1, 6, 80, 112],
    [4, 5, 2, 6, 112, 192],
    [1, 3, 1, 6, 192, 320],
]


class EfficientNetLiteConfig(PreTrainedConfig):
    r"""
    Args:
        stages (`list`): per stage [repeats, kernel, stride, expand ratio, in channels, out channels] (Lite0 default).
        stem_channels (`int`), hidden_dim (`int`): stem width and the width of the final 1x1 "head" convolution.
        batch_norm_eps (`float`): BatchNorm epsilon (1e-3, as in TensorFlow).
        image_size (`int`): the training resolution (224 for Lite0); any size works (TF "SAME" padding).
    """

    model_type = "efficientnet_lite"

    stages: list | None = None
    stem_channels: int = 32
    hidden_dim: int = 1280
    num_channels: int = 3
    batch_norm_eps: float = 1e-3
    image_size: int = 224

    def __post_init__(self, **kwargs):
        if self.stages is None:
            self.stages = [list(stage) for stage in LITE0_STAGES]
        super().__post_init__(**kwargs)


class SameConv(nn.Module):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when needed), no bias, then BatchNorm and optional ReLU6."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, eps=1e-3, activation=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, eps=eps)
        self.activation = nn.ReLU6() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = []  # (left, right, top, bottom), the larger half after, as TensorFlow pads
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.conv.kernel_size), reversed(self.conv.stride)
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            padding += [total // 2, total - total // 2]
        conv = self.conv
        if padding[0] == padding[1] and padding[2] == padding[3]:  # symmetric: let the convolution pad (no copy)
            x = F.conv2d(x, conv.weight, None, conv.stride, (padding[2], padding[0]), conv.dilation, conv.groups)
        else:
            x = conv(F.pad(x, padding))
        return self.activation(self.norm(x))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, residual when shapes match."""

    def __init__(self, in_channels, out_channels, kernel, stride, expand_ratio, eps):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = SameConv(in_channels, hidden, 1, eps=eps) if expand_ratio != 1 else nn.Identity()
        self.depthwise = SameConv(hidden, hidden, kernel, stride, groups=hidden, eps=eps)
        self.project = SameConv(hidden, out_channels, 1, eps=eps, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """pixel_values `[B, 3, H, W]` -> last_hidden_state `[B, hidden_dim, H/32, W/32]` and pooler_output
    `[B, hidden_dim]`."""

    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # the backbone of a classification checkpoint

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        eps = config.batch_norm_eps
        self.stem = SameConv(config.num_channels, config.stem_channels, 3, stride=2, eps=eps)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in config.stages:
            for index in range(repeats):
                first = index == 0
                blocks.append(
                    MBConv(
                        in_channels if first else out_channels,
                        out_channels,
                        kernel,
                        stride if first else 1,
                        expand,
                        eps,
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.head = SameConv(config.stages[-1][5], config.hidden_dim, 1, eps=eps)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        # Depthwise convolutions run about 1.5x faster on CPU in channels-last layout (bench/feature_cache.py).
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        feature_map = self.head(self.blocks(self.stem(pixel_values))).contiguous()
        return BaseModelOutputWithPooling(last_hidden_state=feature_map, pooler_output=feature_map.mean(dim=(2, 3)))


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """The backbone + a linear classifier over the pooled features (ImageNet-1k for the released weights)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.efficientnet_lite = EfficientNetLiteModel(config)
        self.classifier = nn.Linear(config.hidden_dim, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> ImageClassifierOutputWithNoAttention:
        pooled = self.efficientnet_lite(pixel_values).pooler_output
        return ImageClassifierOutputWithNoAttention(logits=self.classifier(pooled))


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)

__all__ = ["EfficientNetLiteConfig", "EfficientNetLiteModel", "EfficientNetLiteForImageClassification"]
