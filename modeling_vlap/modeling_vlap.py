"""VLAP: a frozen vision model and a frozen LLM bridged by one linear layer trained with assignment prediction.

Park, Lee & Sohn, "Bridging Vision and Language Spaces with Assignment Prediction", ICLR 2024.
Remote code: imports only torch, transformers and its sibling modules.
"""

import copy
import functools
import inspect
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import load_state_dict
from transformers.utils import SAFE_WEIGHTS_NAME, ModelOutput, cached_file, logging

from .assignment_prediction import WORD_STATISTICS, AssignmentPrediction, Vocabulary
from .configuration_vlap import HUB_KWARGS, VISION_MODULES, VLAPConfig
from .pipeline_vlap import VLAPImageToTextPipeline  # noqa: F401  (imported so save_pretrained ships the pipeline file)
from .processing_vlap import leading_bos_token_id, word_bridge_ids


@dataclass
class VLAPOutput(ModelOutput):
    """
    Args:
        loss: `caption_loss + assignment_loss_weight * assignment_loss` (when computed; with a weight of 0 the
            assignment loss and codes are not computed).
        caption_loss: the frozen LLM's next-token loss on the caption given [visual prefix; prompt].
        assignment_loss: swapped prediction of the Sinkhorn assignments (L_map), the mean of its two halves
            `image_predicts_text` (trains the bridge) and `text_predicts_image` (frozen predictor: no gradient).
        logits: `[B, T, V]` LLM logits at the caption positions (T5: the decoder's; decoder-only: the positions that
            predict a caption token, from the one before the caption's first token; the visual prefix and prompt are
            never projected onto the vocabulary).
        word_loss, word_logits: a word bridge's bag-of-words loss (its `loss`) and `[B, N]` logits over its words.
        image_codes, text_codes: `[B, V]` cosine similarities of the pooled image / caption to every word embedding.
        image_targets, text_targets: `[B, V]` their assignments over words (the swapped-prediction targets).
    """

    loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    assignment_loss: torch.FloatTensor | None = None
    image_predicts_text: torch.FloatTensor | None = None
    text_predicts_image: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_codes: torch.FloatTensor | None = None
    text_codes: torch.FloatTensor | None = None
    image_targets: torch.FloatTensor | None = None
    text_targets: torch.FloatTensor | None = None
    word_loss: torch.FloatTensor | None = None
    word_logits: torch.FloatTensor | None = None


def pack_padding(attention_mask: torch.Tensor, *tensors: torch.Tensor, padding_side: str):
    """Move every row's padding to one side, keeping its real tokens in order; drop all-padding columns.

    `attention_mask` is `[B, T]`; each of `tensors` is `[B, T]` or `[B, T, D]`. Returns the packed mask followed by
    the packed tensors. Concatenating [prefix; prompt; caption] leaves padding between segments; a causal LM must
    see one contiguous run of real tokens (left-padded for generation, right-padded for training).
    """
    mask = attention_mask.long()
    key = mask if padding_side == "left" else 1 - mask
    order = torch.argsort(key, dim=1, stable=True)
    width = int(mask.sum(dim=1).max())
    keep = slice(mask.shape[1] - width, None) if padding_side == "left" else slice(0, width)

    def gather(tensor):
        index = order if tensor.dim() == 2 else order.unsqueeze(-1).expand_as(tensor)
        return torch.gather(tensor, 1, index)[:, keep]

    return (gather(attention_mask), *(gather(t) for t in tensors))


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, T, D]`, `[B, T]` -> `[B, D]` mean over the real tokens."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def saved_key(key: str) -> str:
    """A state-dict key as checkpoints name it: the word statistics of `assignment_prediction` at the top level, as
    before L_map was one module (transformers' loading and saving apply the same renaming, registered below)."""
    return key.removeprefix("assignment_prediction.") if key.endswith(WORD_STATISTICS) else key


# from_pretrained options about how weights are loaded; a bridge-only folder passes them on to its backbones' loads.
LOADING_OPTIONS = (
    "dtype",
    "attn_implementation",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_state_dict",
    "quantization_config",
    "low_cpu_mem_usage",
)


def split_loading_options(options: dict) -> tuple[dict, dict]:
    """A VLAP model's loading options as (vision model's, LLM's): a device_map naming VLAP's modules
    ("language_model.model.layers.0": 1) is split by prefix; quantization goes to the LLM only."""
    vision, text = dict(options), dict(options)
    vision.pop("quantization_config", None)
    device_map = options.get("device_map")
    if isinstance(device_map, dict):
        for side, prefix in ((vision, "vision_model"), (text, "language_model")):
            side["device_map"] = {
                key.removeprefix(prefix).removeprefix("."): device
                for key, device in device_map.items()
                if key == prefix or key.startswith(prefix + ".")
            } or {"": device_map.get("", "cpu")}
    return vision, text


def is_bridge_key(key: str) -> bool:
    """What a bridge-only checkpoint holds: the bridge (linear or LangBridge) and the word statistics."""
    return key.startswith("bridge.") or saved_key(key) in WORD_STATISTICS


def language_model_class(text_config):
    """The Auto class of an LLM: AutoModelForSeq2SeqLM for an encoder-decoder (T5), else AutoModelForCausalLM."""
    return AutoModelForSeq2SeqLM if text_config.is_encoder_decoder else AutoModelForCausalLM


def _load_saved_word_statistics(module, state_dict, prefix, *_) -> None:
    """`load_state_dict` pre-hook: a checkpoint's top-level word statistics (`saved_key`) go into
    `assignment_prediction`."""
    for name in WORD_STATISTICS:
        if prefix + name in state_dict:
            state_dict[f"{prefix}assignment_prediction.{name}"] = state_dict.pop(prefix + name)


class LinearBridge(nn.Linear):
    """VLAP's bridge: one linear layer from each visual token into the LLM's input word-embedding space."""

    def forward(self, visual_tokens: torch.Tensor, word_rows: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, K, H_v]` (and the bridge interface's word rows, unused) -> `[B, K, D]`."""
        return super().forward(visual_tokens)


class LangBridge(nn.Module):
    """LangBridge (2025): visual tokens -> coefficients over a vocabulary subset -> their mix of word embeddings.

    MLP (vision width -> hidden -> hidden, GELU; then a GELU unless `langbridge_activation_before_words=False`, as
    the released code) -> logits over the N subset words -> softmax (or raw coefficients) -> coefficients @ the
    LLM's frozen embedding rows of those words. It speaks in words, so moving it to another LLM
    only re-indexes the subset (`langbridge_token_ids`); its weights stay as they are.
    """

    def __init__(self, config: VLAPConfig):
        super().__init__()
        hidden = config.langbridge_hidden_size or config.projection_dim
        layers = [nn.Linear(config.vision_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers, *([nn.GELU()] if config.langbridge_activation_before_words else []))
        self.to_words = nn.Linear(hidden, len(config.langbridge_tokens))
        self.softmax = config.langbridge_coefficients == "softmax"
        # From the config, not the state dict: a transfer changes the ids (and which words exist), never the weights.
        self.token_ids = list(config.langbridge_token_ids)

    @property
    def present(self) -> torch.Tensor:
        """`[N]` bool on the CPU: the subset words this LLM has (-1 ids, after a transfer, are masked out)."""
        return torch.tensor(self.token_ids) >= 0

    def coefficients(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        """`[B, K, H_v]` -> `[B, K, N]`: a distribution over the subset words (softmax mode) or raw coefficients."""
        logits = self.to_words(self.mlp(visual_tokens))
        present = self.present.to(logits.device)  # where the logits are: weights may be offloaded (meta)
        if self.softmax:
            return torch.softmax(logits.masked_fill(~present, float("-inf")), dim=-1)
        return logits * present

    def word_ids(self, device) -> torch.Tensor:
        """`[N]` the subset's ids in this LLM (a word it lacks reads row 0, masked out by `present`)."""
        return torch.tensor(self.token_ids, device=device).clamp(min=0)

    def forward(self, visual_tokens: torch.Tensor, word_rows: torch.Tensor) -> torch.Tensor:
        """`[B, K, H_v]` and `[N, D]` the LLM's input embeddings of `word_ids` -> `[B, K, D]` prefix.

        The rows are what the LLM's embedding module returns for the words (a tensor, not the module: offloading
        hooks move tensors), so LLMs that scale their embeddings (Gemma: sqrt(D)) get the prefix in the same space
        as their prompt tokens.
        """
        return self.coefficients(visual_tokens) @ word_rows.to(visual_tokens.device, visual_tokens.dtype)


NO_WORD_BRIDGE_FEATURES = (
    "a word bridge gives the LLM words as text, not mapped visual tokens: it has no image prefix or image features "
    "(retrieval, zero-shot classification); read its words with get_image_words / image_to_words"
)


class WordBridge(nn.Module):
    """A word bridge: the image as words that the LLM reads as text.

    One linear layer from the mean visual token to a logit per word of `config.word_bridge_words`, trained with a
    bag-of-words loss (is the word in the caption). An image's words are its at most `word_bridge_top_k` most
    probable words of probability >= `word_bridge_threshold` (at least the most probable one), in that order; the LLM
    reads them written into `word_bridge_layout` ("... Words: red, circle.\n") before the prompt. Being strings, they
    carry to any LLM: moving the bridge re-tokenises them and the layout (`vlap transfer`), its weights unchanged.
    """

    def __init__(self, config: VLAPConfig):
        super().__init__()
        self.to_words = nn.Linear(config.vision_hidden_size, len(config.word_bridge_words))
        # From the config, not the state dict: a transfer changes the ids, never the weights.
        self.word_ids = [list(ids) for ids in config.word_bridge_word_ids]
        self.before, self.separator, self.after = (list(ids) for ids in config.word_bridge_layout_ids)
        self.top_k, self.threshold = config.word_bridge_top_k, config.word_bridge_threshold

    def logits(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        """`[B, K, H_v]` -> `[B, N]` one logit per word, from the mean visual token."""
        return self.to_words(visual_tokens.mean(dim=1))

    def choose(self, logits: torch.Tensor) -> list[list[int]]:
        """`[B, N]` logits -> each image's words (indices into the word list), most probable first."""
        top = torch.sigmoid(logits.float()).topk(min(self.top_k, logits.shape[1]), dim=-1)
        return [
            [index for rank, (p, index) in enumerate(zip(ps, indices)) if rank == 0 or p >= self.threshold]
            for ps, indices in zip(top.values.tolist(), top.indices.tolist())
        ]

    def layout_ids(self, chosen: list[list[int]]) -> list[list[int]]:
        """Each image's layout as this LLM's ids: before, the words joined by the separator, after."""
        return [
            self.before
            + [i for rank, word in enumerate(words) for i in (self.separator if rank else []) + self.word_ids[word]]
            + self.after
            for words in chosen
        ]

    @functools.cached_property
    def word_table(self) -> torch.Tensor:
        """`[N, L]` each word's ids, -1 after a shorter word's end; built once (from the config), not every step."""
        longest = max(len(ids) for ids in self.word_ids)
        return torch.tensor([ids + [-1] * (longest - len(ids)) for ids in self.word_ids])

    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B, T]` captions -> `[B, N]` 1.0 where the word's ids occur in the caption (contiguously), else 0."""
        table = self.word_table.to(input_ids.device)
        longest = table.shape[1]
        ids = F.pad(input_ids.masked_fill(attention_mask == 0, -2), (0, longest - 1), value=-2)
        windows = ids.unfold(1, longest, 1)  # [B, T, L]: the caption's runs of L tokens
        # [B, T, N, L]: each run against each word (-1 pads a shorter word: any token there matches)
        matches = (windows[:, :, None, :] == table) | (table == -1)
        return matches.all(dim=-1).any(dim=1).float()


class VLAPPreTrainedModel(PreTrainedModel):
    config_class = VLAPConfig
    base_model_prefix = "vlap"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True  # through the frozen LLM: see `_set_gradient_checkpointing`
    _supports_sdpa = True


class VLAPForConditionalGeneration(VLAPPreTrainedModel, GenerationMixin):
    """Frozen vision model -> trainable `nn.Linear` -> prefix of a frozen LLM (T5 or any causal LM).

    `forward` with captions: `loss = caption_loss + assignment_loss_weight * assignment_loss` (`AssignmentPrediction`);
    `generate` captions, or answers after a prompt. Bridge two pretrained checkpoints with
    `from_vision_text_pretrained`; a tiny one from configs:

    Example:
        >>> import torch
        >>> from modeling_vlap import VLAPConfig, VLAPForConditionalGeneration
        >>> vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "image_size": 32,
        ...           "patch_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
        >>> text = {"model_type": "t5", "vocab_size": 100, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1,
        ...         "num_heads": 2, "decoder_start_token_id": 0}
        >>> model = VLAPForConditionalGeneration(VLAPConfig(vision_config=vision, text_config=text)).eval()
        >>> model.num_parameters(only_trainable=True)  # the bridge: 32 x 16 + 16
        528
        >>> images, captions = torch.randn(2, 3, 32, 32), torch.tensor([[5, 6, 1], [7, 8, 1]])  # [B, 3, H, W], [B, T]
        >>> out = model(pixel_values=images, input_ids=captions)
        >>> out.loss.shape, out.logits.shape, out.image_codes.shape  # [], [B, T, V], [B, V]
        (torch.Size([]), torch.Size([2, 3, 100]), torch.Size([2, 100]))
        >>> model.get_image_prefix(images).shape  # [B, K, D]: CLS + 4 patches, each mapped into the LLM's space
        torch.Size([2, 5, 16])
    """

    def __init__(self, config: VLAPConfig, vision_model: PreTrainedModel | None = None, language_model=None):
        super().__init__(config)
        if vision_model is None:
            vision_model = AutoModel.from_config(config.vision_config)
        if language_model is None:
            language_model = language_model_class(config.text_config).from_config(config.text_config)
        self.vision_model = vision_model
        self.language_model = language_model
        # One config object per backbone, shared with the composite config so saving stays consistent.
        config.vision_config = self.vision_model.config
        config.text_config = self.language_model.config

        embeddings = self.language_model.get_input_embeddings()
        if config.projection_dim is None:
            config.projection_dim = embeddings.embedding_dim
        elif config.projection_dim != embeddings.embedding_dim:
            raise ValueError(
                f"VLAPConfig.projection_dim={config.projection_dim} does not match the input word-embedding width "
                f"{embeddings.embedding_dim} of the {config.text_config.model_type!r} LLM; leave it None to derive it"
            )
        if config.bridge_type == "langbridge":
            if max(config.langbridge_token_ids) >= embeddings.num_embeddings:
                raise ValueError(
                    f"langbridge_token_ids go up to {max(config.langbridge_token_ids)}, beyond the "
                    f"LLM's {embeddings.num_embeddings} embeddings"
                )
            self.bridge = LangBridge(config)
        elif config.bridge_type == "words":
            if config.word_bridge_word_ids is None or config.word_bridge_layout_ids is None:
                raise ValueError(
                    "a word bridge needs its words and layout as this LLM's ids (word_bridge_word_ids, "
                    "word_bridge_layout_ids): build it with from_vision_text_pretrained, which tokenises them"
                )
            self.bridge = WordBridge(config)
        else:
            self.bridge = LinearBridge(config.vision_hidden_size, config.projection_dim)
        self.assignment_prediction = AssignmentPrediction(config, embeddings.num_embeddings)  # L_map
        self.register_load_state_dict_pre_hook(_load_saved_word_statistics)

        self.vision_model.requires_grad_(False)
        self.language_model.requires_grad_(False)
        self.post_init()
        self.generation_config = copy.deepcopy(self.language_model.generation_config)
        if self.generation_config.pad_token_id is None:
            self.generation_config.pad_token_id = self.generation_config.eos_token_id
        if config.bridge_type == "words" and config.word_bridge_stop_ids:  # a caption ends with its line
            eos = self.generation_config.eos_token_id
            eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
            self.generation_config.eos_token_id = eos + [i for i in config.word_bridge_stop_ids if i not in eos]

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str,
        text_model_name_or_path: str,
        vision_kwargs: dict | None = None,
        text_kwargs: dict | None = None,
        **config_kwargs,
    ) -> "VLAPForConditionalGeneration":
        """Bridge two pretrained checkpoints (Hub ids or local folders) with a freshly initialised linear layer.

        The vision side may be a vision model or a dual encoder such as CLIP, whose vision tower is taken. The text
        side is an encoder-decoder (T5) or any causal LM. `config_kwargs` set VLAPConfig fields.
        """
        vision_kwargs, text_kwargs = dict(vision_kwargs or {}), dict(text_kwargs or {})
        vision_hub = {k: v for k, v in vision_kwargs.items() if k not in LOADING_OPTIONS}  # for configs, tokenizers
        text_hub = {k: v for k, v in text_kwargs.items() if k not in LOADING_OPTIONS}
        vision_config = AutoConfig.from_pretrained(vision_model_name_or_path, **vision_hub)
        tower_config = getattr(vision_config, "vision_config", None)
        verbosity = logging.get_verbosity()
        if tower_config is not None:  # a dual encoder (CLIP, SigLIP): keep its vision tower, quietly skip the rest
            vision_config = tower_config
            logging.set_verbosity_error()
        try:
            vision_model = AutoModel.from_pretrained(vision_model_name_or_path, config=vision_config, **vision_kwargs)
        finally:
            logging.set_verbosity(verbosity)
        text_config = AutoConfig.from_pretrained(text_model_name_or_path, **text_hub)
        language_model = language_model_class(text_config).from_pretrained(text_model_name_or_path, **text_kwargs)
        backbones = {
            "vision": {"name_or_path": str(vision_model_name_or_path), "revision": vision_kwargs.get("revision")},
            "text": {"name_or_path": str(text_model_name_or_path), "revision": text_kwargs.get("revision")},
        }
        config_kwargs.setdefault("backbones", backbones)
        if "prefix_bos_token_id" not in config_kwargs and not text_config.is_encoder_decoder:
            config_kwargs["prefix_bos_token_id"] = leading_bos_token_id(
                AutoTokenizer.from_pretrained(text_model_name_or_path, **text_hub)
            )
        if config_kwargs.get("bridge_type") == "words" and "word_bridge_word_ids" not in config_kwargs:
            config_kwargs.update(
                word_bridge_ids(
                    AutoTokenizer.from_pretrained(text_model_name_or_path, **text_hub),
                    config_kwargs.get("word_bridge_words") or [],
                    config_kwargs.get("word_bridge_layout", VLAPConfig.word_bridge_layout),
                )
            )
        # Sub-configs as dicts: VLAPConfig must not reset attributes (attention implementation) of the live models.
        config = VLAPConfig(
            vision_config=vision_model.config.to_dict(), text_config=language_model.config.to_dict(), **config_kwargs
        )
        model = cls(config, vision_model=vision_model, language_model=language_model)
        if "device_map" not in text_kwargs and "quantization_config" not in text_kwargs:
            return model.to(language_model.dtype)
        # Dispatched or quantised backbones stay where their loader put them: only the new modules move, to the
        # device (and float dtype) of the LLM's input embeddings, where the prefix they make is read.
        embeddings = language_model.get_input_embeddings().weight
        dtype = embeddings.dtype if embeddings.is_floating_point() else torch.float32
        model.bridge.to(embeddings.device, dtype)
        model.assignment_prediction.to(embeddings.device, dtype)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As PreTrainedModel's. A bridge-only checkpoint (`config.bridge_only`) loads its two backbones from the
        names in `config.backbones` (Hub ids or local folders), then its own bridge and word prior on top."""
        config = kwargs.get("config")
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        if not isinstance(config, VLAPConfig):
            config = VLAPConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if not config.bridge_only:
            wants_info = kwargs.pop("output_loading_info", False)
            allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
            try:  # mismatches are collected (and refused below, by name) rather than raised as a bare RuntimeError
                model, info = super().from_pretrained(
                    pretrained_model_name_or_path,
                    *model_args,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,
                    **kwargs,
                )
            except (
                Exception
            ) as error:  # safetensors' own error type (matched by name: remote code imports transformers only)
                if type(error).__name__ == "SafetensorError":
                    raise OSError(
                        f"{pretrained_model_name_or_path}: a weights file is truncated or not safetensors ({error})"
                    ) from None
                raise
            mismatched = [] if allow_mismatch else sorted(info.get("mismatched_keys", ()), key=lambda m: m[0])
            if mismatched:
                key, saved, expected = mismatched[0]
                raise ValueError(
                    f"{pretrained_model_name_or_path}: its weights do not fit its config.json ({key}: saved "
                    f"{list(saved)}, the config asks for {list(expected)}; {len(mismatched)} tensor(s) differ)"
                )
            untrained = sorted(key for key in info["missing_keys"] if is_bridge_key(key))
            if untrained:  # transformers would fill them with random values: a model that runs and says nothing
                raise ValueError(
                    f"{pretrained_model_name_or_path}: the weights lack the trained tensors {', '.join(untrained)}; "
                    "refusing to load a random bridge"
                )
            return (model, info) if wants_info else model

        backbone_kwargs = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
        options = {k: kwargs[k] for k in LOADING_OPTIONS if k in kwargs}  # what the full folder's load would honour
        vision_options, text_options = split_loading_options(options)
        vision, text = (config.backbones or {}).get("vision"), (config.backbones or {}).get("text")
        if not (vision and vision.get("name_or_path") and text and text.get("name_or_path")):
            raise ValueError(
                f"{pretrained_model_name_or_path} is bridge-only but its config does not name both backbones"
            )
        own_fields = set(VLAPConfig.__annotations__) - {"vision_config", "text_config", "bridge_only"}
        fields = {name: getattr(config, name) for name in own_fields}
        model = cls.from_vision_text_pretrained(
            vision["name_or_path"],
            text["name_or_path"],
            vision_kwargs={
                **backbone_kwargs,
                **vision_options,
                **({"revision": vision["revision"]} if vision.get("revision") else {}),
            },
            text_kwargs={
                **backbone_kwargs,
                **text_options,
                **({"revision": text["revision"]} if text.get("revision") else {}),
            },
            **fields,
        )
        weights = cached_file(pretrained_model_name_or_path, SAFE_WEIGHTS_NAME, **hub_kwargs)
        state_dict = load_state_dict(weights)
        expected = {saved_key(key) for key in model.state_dict() if is_bridge_key(key)}
        if set(state_dict) != expected:
            raise ValueError(f"{weights}: a bridge-only checkpoint holds {sorted(expected)}, got {sorted(state_dict)}")
        model.load_state_dict(state_dict, strict=False)
        try:
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except OSError:  # no generation_config.json: keep the LLM's
            pass
        return model.eval()

    def save_pretrained(self, save_directory, *args, bridge_only: bool = False, **kwargs):
        """As PreTrainedModel's; a registered model is also reachable through AutoModel and, as
        VLAPForZeroShotImageClassification (the same weights), AutoModelForZeroShotImageClassification.

        `bridge_only=True` writes only the bridge and word prior (and a config naming the backbones in
        `config.backbones`, from which `from_pretrained` loads them back).
        """
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            auto_model = {
                "AutoModel": f"{module}.{type(self).__name__}",
                "AutoModelForZeroShotImageClassification": f"{module}.VLAPForZeroShotImageClassification",
            }
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_model}
        vision_module = VISION_MODULES.get(self.config.vision_config.model_type)
        if vision_module is not None:  # its code travels with the model (configuration_vlap imports it at load)
            Path(save_directory).mkdir(parents=True, exist_ok=True)
            target = Path(save_directory) / f"{vision_module.split('.')[0]}.py"
            shutil.copyfile(inspect.getsourcefile(type(self.vision_model.config)), target)
        card = Path(save_directory) / "README.md"
        if not card.exists():  # a card the Hub's filters and widgets read; push_to_hub.py writes the full one
            Path(save_directory).mkdir(parents=True, exist_ok=True)
            card.write_text(self._model_card())
        if not bridge_only:
            return super().save_pretrained(save_directory, *args, **kwargs)
        names = [(self.config.backbones or {}).get(side, {}).get("name_or_path") for side in ("vision", "text")]
        if not all(names):
            raise ValueError(
                "a bridge-only save needs config.backbones naming both backbones (set by from_vision_text_pretrained); "
                'set model.config.backbones = {"vision": {"name_or_path": ...}, "text": {"name_or_path": ...}}'
            )
        state_dict = {saved_key(key): value for key, value in self.state_dict().items() if is_bridge_key(key)}
        self.config.bridge_only = True
        try:
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        finally:
            self.config.bridge_only = False

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, every_n_layers=1):
        """What `gradient_checkpointing_enable()` / `activation_checkpointing_enable()` set: the frozen LLM's layers
        recompute their forward in the backward pass. transformers' layers checkpoint only in training mode, which
        would switch the frozen LLM's dropout on; each layer's forward is wrapped instead (eval mode kept), and
        checkpointed whenever gradients are being recorded (to the prefix, hence the bridge)."""
        layers = [m for m in self.language_model.modules() if isinstance(m, GradientCheckpointingLayer)]
        for index, layer in enumerate(layers):
            layer.__dict__.pop("forward", None)  # back to the class's forward
            if enable and index % every_n_layers == 0:
                layer.forward = functools.partial(_recomputed, layer.forward, gradient_checkpointing_func)
        self.language_model.gradient_checkpointing = enable  # what `is_gradient_checkpointing` reads

    def _model_card(self) -> str:
        """A minimal model card (README.md): the metadata the Hub keys on (the LLaVA family's `image-text-to-text`
        pipeline tag) and how to load the folder."""
        backbones = self.config.backbones or {}
        names = [(backbones.get(side) or {}).get("name_or_path") for side in ("vision", "text")]
        hub_ids = [name for name in names if name and not Path(name).exists() and name.count("/") == 1]
        base = "".join(f"- {name}\n" for name in hub_ids)
        described = " and ".join(f"`{name}`" for name in names if name) or "its two backbones"
        return (
            "---\nlibrary_name: transformers\npipeline_tag: image-text-to-text\ntags:\n- vlap\n- vision-language\n"
            f"- custom_code\n{'base_model:' + chr(10) + base if base else ''}---\n\n"
            f"# VLAP\n\nA VLAP bridge (ICLR 2024): one linear layer from the frozen vision model into the frozen LLM's "
            f"word-embedding space, between {described}.\n\n```python\nfrom transformers import pipeline\n\n"
            'captioner = pipeline("image-to-text", model="THIS_FOLDER", trust_remote_code=True)\n'
            'captioner("photo.jpg")  # [{"generated_text": ...}]\n```\n'
        )

    def train(self, mode: bool = True):
        """Only the bridge trains: the frozen backbones stay in eval mode (no dropout, no BatchNorm updates)."""
        super().train(mode)
        self.vision_model.eval()
        self.language_model.eval()
        return self

    @property
    def is_encoder_decoder_llm(self) -> bool:
        return bool(self.config.text_config.is_encoder_decoder)

    @property
    def word_embeddings(self) -> torch.Tensor:
        """`[V, D]` input word-embedding matrix of the LLM."""
        return self.language_model.get_input_embeddings().weight

    # ----------------------------------------------------------------------------------------------- vision side
    @torch.no_grad()
    def get_vision_hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen vision output: `[B, N, H]` tokens, or `[B, H, h, w]` for feature-map backbones (cacheable)."""
        return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def _visual_tokens(self, vision_hidden_states: torch.Tensor) -> torch.Tensor:
        """Flatten a feature map into tokens and pool to `config.num_visual_tokens`: -> `[B, K, H]`."""
        k = self.config.num_visual_tokens
        if vision_hidden_states.dim() == 4:
            if k is not None:
                side = math.isqrt(k)
                if side * side != k:
                    raise ValueError(f"num_visual_tokens={k} must be a square number for a feature-map vision model")
                vision_hidden_states = F.adaptive_avg_pool2d(vision_hidden_states, side)
            return vision_hidden_states.flatten(2).transpose(1, 2)
        if k is not None and k != vision_hidden_states.shape[1]:
            return F.adaptive_avg_pool1d(vision_hidden_states.transpose(1, 2), k).transpose(1, 2)
        return vision_hidden_states

    def _bridge_inputs(self, pixel_values=None, vision_hidden_states=None) -> torch.Tensor:
        """`[B, K, H]` visual tokens in the bridge's dtype, from images or their precomputed vision output."""
        if vision_hidden_states is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (images) or precomputed vision_hidden_states")
            if len(pixel_values) == 0:
                raise ValueError("pixel_values holds no images (a batch of 0)")
            vision_hidden_states = self.get_vision_hidden_states(pixel_values)
        return self._visual_tokens(vision_hidden_states).to(next(self.bridge.parameters()).dtype)

    def get_image_prefix(self, pixel_values=None, vision_hidden_states=None) -> torch.Tensor:
        """Mapped visual tokens, the LLM prefix: `[B, K, D]` in the LLM's input-embedding space."""
        if isinstance(self.bridge, WordBridge):
            raise ValueError(NO_WORD_BRIDGE_FEATURES)
        tokens = self._bridge_inputs(pixel_values, vision_hidden_states)
        embeddings = self.language_model.get_input_embeddings()
        rows = embeddings(self.bridge.word_ids(tokens.device)) if isinstance(self.bridge, LangBridge) else None
        return self.bridge(tokens, rows).to(embeddings.weight.dtype)

    def get_image_words(self, pixel_values=None, vision_hidden_states=None) -> list[list[str]]:
        """Word bridge: each image's words, as the LLM reads them in `config.word_bridge_layout`."""
        chosen = self.bridge.choose(self._word_logits(pixel_values, vision_hidden_states))
        return [[self.config.word_bridge_words[index] for index in words] for words in chosen]

    def _word_logits(self, pixel_values=None, vision_hidden_states=None) -> torch.Tensor:
        if not isinstance(self.bridge, WordBridge):
            raise ValueError("only a word bridge (bridge_type='words') says its image in words it chooses")
        return self.bridge.logits(self._bridge_inputs(pixel_values, vision_hidden_states))

    def _llm_context(self, pixel_values=None, vision_hidden_states=None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the LLM reads for each image before the prompt, `[B, K, D]` embeddings and `[B, K]` mask: the mapped
        visual tokens, or a word bridge's layout of the image's words (padded at its end, masked)."""
        if not isinstance(self.bridge, WordBridge):
            prefix = self.get_image_prefix(pixel_values, vision_hidden_states)
            return prefix, torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        layouts = self.bridge.layout_ids(self.bridge.choose(self._word_logits(pixel_values, vision_hidden_states)))
        longest = max(len(ids) for ids in layouts)
        embeddings = self.language_model.get_input_embeddings()
        ids = torch.tensor([ids + [0] * (longest - len(ids)) for ids in layouts], device=embeddings.weight.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in layouts], device=ids.device)
        return embeddings(ids), mask

    def get_word_coefficients(self, pixel_values=None, vision_hidden_states=None) -> torch.Tensor:
        """LangBridge: `[B, K, N]` what each visual token says, its coefficients over `config.langbridge_tokens`
        (a distribution, or raw coefficients; words this LLM lacks get 0)."""
        if not isinstance(self.bridge, LangBridge):
            raise ValueError(
                "only a LangBridge model (bridge_type='langbridge') speaks in word coefficients per "
                "visual token; image_to_words reads any model's image as words"
            )
        return self.bridge.coefficients(self._bridge_inputs(pixel_values, vision_hidden_states))

    def get_image_features(self, pixel_values=None, vision_hidden_states=None) -> torch.Tensor:
        """L2-normalised mean of the mapped visual tokens: `[B, D]`, comparable with `get_text_features`."""
        prefix = self.get_image_prefix(pixel_values, vision_hidden_states)
        return F.normalize(prefix.float().mean(dim=1), dim=-1)

    # ------------------------------------------------------------------------------------------------- text side
    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised caption representation `[B, D]`, by `config.text_representation`:

        - "hidden_states": masked mean of the frozen LLM's last hidden states (T5: encoder output), as the paper;
        - "word_embeddings" and "word_assignments": mean of the caption's input word embeddings weighted by
          a / (a + p(w)), p the caption word frequency (SIF), special tokens (EOS, padding) left out. It lives in the
          space the visual prefix is mapped into, and its nearest words are the caption's rarer (content) words
          rather than "a" or "is".
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:  # its mean would be 0 / 0, normalised to a zero feature that matches nothing and everything
            raise ValueError(f"text {empty[0]} has no tokens (its attention_mask is all zero)")
        if self.config.text_representation != "hidden_states":
            return self.assignment_prediction.sif_text_features(input_ids, attention_mask, self.vocabulary())
        if self.is_encoder_decoder_llm:
            encoder = self.language_model.get_encoder()
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = self.language_model.base_model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        return F.normalize(_masked_mean(hidden.float(), attention_mask), dim=-1)

    def vocabulary(self) -> Vocabulary:
        """What L_map reads of the frozen LLM: its input-embedding module and the special tokens (EOS, padding, BOS of
        the generation config) that a caption's SIF weights leave out."""
        config = self.generation_config
        special = [config.eos_token_id, config.pad_token_id, config.bos_token_id]
        special = [i for item in special for i in (item if isinstance(item, list) else [item]) if i is not None]
        return Vocabulary(self.language_model.get_input_embeddings(), special)

    @property
    def word_prior(self) -> torch.Tensor:
        """`[V]` the Sinkhorn word marginal fitted from the training captions (`fit_word_prior`)."""
        return self.assignment_prediction.word_prior

    def fit_word_prior(self, token_counts: torch.Tensor) -> torch.Tensor:
        """Set the word prior from caption token counts `[V]` (`AssignmentPrediction.fit_word_prior`)."""
        return self.assignment_prediction.fit_word_prior(token_counts)

    def word_codes(self, features: torch.Tensor) -> torch.Tensor:
        """`[B, D]` features -> `[B, V]` float32 cosines with every word embedding (see
        `AssignmentPrediction.word_codes`)."""
        return self.assignment_prediction.word_codes(features, self.vocabulary())

    def code_scores(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask=None, text_features=None
    ) -> torch.Tensor:
        """`[N, T]` image-text scores in VLAP's word space: the sum over words of each text's assignment target
        (`caption_assignments`) times the log of each image's predicted assignment log softmax(image code / tau), i.e.
        minus the swapped-prediction loss: the score training raises for matching pairs. `image_features` `[N, D]`
        (`get_image_features`), `input_ids` `[T, L]` texts tokenised as captions, `text_features` their
        `get_text_features` when already computed."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if text_features is None:
            text_features = self.get_text_features(input_ids, attention_mask)
        vocabulary, l_map = self.vocabulary(), self.assignment_prediction
        targets = l_map.caption_assignments(
            input_ids, attention_mask, vocabulary, l_map.word_codes(text_features, vocabulary)
        )
        return torch.cat(  # 256 images at a time: each holds a [V] distribution
            [l_map.predicted_log_assignments(rows, vocabulary) @ targets.T for rows in image_features.split(256)]
        )

    @torch.no_grad()
    def image_to_words(self, pixel_values=None, top_k: int = 10, vision_hidden_states=None):
        """Read each image as words: the top-k of its predicted assignment softmax(image code / temperature).

        This is the distribution the swapped prediction trains to match the caption's Sinkhorn assignment; the
        Sinkhorn plan itself needs a batch (for one image it collapses to the word prior).
        Returns `(weights, token_ids)`, each `[B, top_k]`; decode ids with the processor's tokenizer. A word bridge
        gives its words' probabilities and their indices into `config.word_bridge_words` instead.
        """
        if isinstance(self.bridge, WordBridge):
            if not 1 <= top_k <= len(self.config.word_bridge_words):
                words = len(self.config.word_bridge_words)
                raise ValueError(f"top_k={top_k}: give 1 to {words:,} (the bridge's words)")
            logits = self._word_logits(pixel_values, vision_hidden_states)
            return torch.sigmoid(logits.float()).topk(top_k, dim=-1)
        vocabulary = self.vocabulary()
        if not 1 <= top_k <= vocabulary.weight.shape[0]:
            raise ValueError(f"top_k={top_k}: give 1 to {vocabulary.weight.shape[0]:,} (the LLM's vocabulary)")
        features = self.get_image_features(pixel_values, vision_hidden_states)
        log_probabilities = self.assignment_prediction.predicted_log_assignments(features, vocabulary)
        return log_probabilities.exp().topk(top_k, dim=-1)

    # ------------------------------------------------------------------------------------------ LLM input assembly
    def prefix_and_prompt_embeds(self, prefix, prompt_input_ids, prompt_attention_mask, prefix_mask=None):
        """[BOS; prefix; prompt] embeddings and mask, unpacked: `[B, 1 + K + P, D]`, `[B, 1 + K + P]`. The BOS only
        for an LLM that reads every text after one (`config.prefix_bos_token_id`: Gemma without it only repeats its
        input); `prefix` may be empty (K = 0: the bare LLM in the same layout), `prefix_mask` `[B, K]` (default all
        ones), `prompt_input_ids` `[B, P]` or None."""
        if prefix_mask is None:
            prefix_mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        bos = self.config.prefix_bos_token_id
        if bos is not None:
            ids = torch.full((prefix.shape[0], 1), bos, dtype=torch.long, device=prefix.device)
            prefix = torch.cat([self.language_model.get_input_embeddings()(ids).to(prefix.dtype), prefix], dim=1)
            prefix_mask = torch.cat([torch.ones_like(ids), prefix_mask.to(ids.device)], dim=1)
        if prompt_input_ids is None or prompt_input_ids.shape[1] == 0:
            return prefix, prefix_mask
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones_like(prompt_input_ids)
        prompt_embeds = self.language_model.get_input_embeddings()(prompt_input_ids)
        embeds = torch.cat([prefix, prompt_embeds], dim=1)
        return embeds, torch.cat([prefix_mask, prompt_attention_mask.long()], dim=1)

    def _check_positions(self, length: int, visual: int, what: str) -> None:
        """A decoder-only LLM has `max_position_embeddings` positions; beyond them it fails (IndexError) or silently
        reads garbage. T5's relative positions have no such limit."""
        limit = getattr(self.language_model.config, "max_position_embeddings", None)
        if not self.is_encoder_decoder_llm and limit is not None and length > limit:
            raise ValueError(
                f"{length} tokens ({visual} visual + {what}) exceed the LLM's {limit} positions: "
                "shorten the prompt or the caption (processor max_length) or generate fewer tokens"
            )

    def _caption_logits(
        self, prefix, input_ids, attention_mask, prompt_input_ids=None, prompt_attention_mask=None, prefix_mask=None
    ):
        """LLM logits at the caption positions and the tokens they predict: `[B, T, V]`, `[B, T]` (-100 elsewhere)."""
        embeds, mask = self.prefix_and_prompt_embeds(prefix, prompt_input_ids, prompt_attention_mask, prefix_mask)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        if self.is_encoder_decoder_llm:
            mask, embeds = pack_padding(mask, embeds, padding_side="right")
            return (
                self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).logits,
                labels,
            )
        caption_embeds = self.language_model.get_input_embeddings()(input_ids)
        context_labels = torch.full(mask.shape, -100, dtype=labels.dtype, device=labels.device)
        mask, embeds, labels = pack_padding(
            torch.cat([mask, attention_mask.long()], dim=1),
            torch.cat([embeds, caption_embeds], dim=1),
            torch.cat([context_labels, labels], dim=1),
            padding_side="right",
        )
        self._check_positions(int(mask.sum(dim=1).max()), prefix.shape[1], "prompt + caption")
        # Only positions that predict a caption token go through the LM head (a V-wide projection): from the one before
        # the earliest caption token to the end.
        first = int((labels != -100).float().argmax(dim=1).min())
        keep = torch.arange(max(first - 1, 0), labels.shape[1] - 1, device=labels.device)
        logits = self.language_model(
            inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep, use_cache=False
        ).logits
        return logits, labels[:, keep + 1]

    @torch.no_grad()
    def caption_log_likelihood(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        vision_hidden_states=None,
        prompt_input_ids=None,
        prompt_attention_mask=None,
    ) -> torch.Tensor:
        """`[B]` log p(caption | image, prompt) summed over the caption's tokens (EOS included): scores candidate
        answers or captions for closed-set VQA and classification by the LLM itself."""
        prefix, prefix_mask = self._llm_context(pixel_values, vision_hidden_states)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        logits, targets = self._caption_logits(
            prefix, input_ids, attention_mask, prompt_input_ids, prompt_attention_mask, prefix_mask
        )
        token_log_probs = -F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
        return token_log_probs.sum(dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        vision_hidden_states: torch.Tensor | None = None,
    ) -> VLAPOutput | BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values: `[B, 3, H, W]` images (or pass `vision_hidden_states`, the cached frozen vision output).
            input_ids, attention_mask: `[B, T]` captions, tokenised by the processor (no BOS, EOS appended).
            prompt_input_ids, prompt_attention_mask: `[B, P]` text after the visual prefix ("A picture of").

        With captions (they are the labels, as in transformers' captioning models) the output holds `loss`, its parts
        and the logits at the caption positions. Without captions the LLM is not run: the output is the image
        features (what the image-feature-extraction pipeline reads), `last_hidden_state` `[B, K, D]` the mapped visual
        tokens and `pooler_output` `[B, D]` their normalised mean (`get_image_features`). To caption images call
        generate().
        """
        if isinstance(self.bridge, WordBridge):
            return self._word_bridge_forward(pixel_values, input_ids, attention_mask, vision_hidden_states)
        if input_ids is None:
            prefix = self.get_image_prefix(pixel_values, vision_hidden_states)
            pooled = F.normalize(prefix.float().mean(dim=1), dim=-1)
            return BaseModelOutputWithPooling(last_hidden_state=prefix, pooler_output=pooled)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = self.get_image_prefix(pixel_values, vision_hidden_states)
        if prefix.shape[0] != input_ids.shape[0]:
            raise ValueError(f"got {prefix.shape[0]} images but {input_ids.shape[0]} captions")
        logits, targets = self._caption_logits(
            prefix, input_ids, attention_mask, prompt_input_ids, prompt_attention_mask
        )
        caption_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())  # token mean, as the LLM's own
        if self.config.assignment_loss_weight == 0:  # caption-only (LiMBeR-style): skip L_map entirely
            return VLAPOutput(loss=caption_loss, caption_loss=caption_loss, logits=logits)

        paper_text_code = self.config.text_representation == "hidden_states"  # a frozen LLM forward over the caption
        with torch.no_grad():
            text_features = self.get_text_features(input_ids, attention_mask) if paper_text_code else None
        l_map = self.assignment_prediction(
            prefix.float().mean(dim=1), input_ids, attention_mask, self.vocabulary(), text_features
        )
        return VLAPOutput(
            loss=caption_loss + self.config.assignment_loss_weight * l_map.loss,
            caption_loss=caption_loss,
            assignment_loss=l_map.loss,
            image_predicts_text=l_map.image_predicts_text,
            text_predicts_image=l_map.text_predicts_image,
            logits=logits,
            image_codes=l_map.image_codes,
            text_codes=l_map.text_codes,
            image_targets=l_map.image_targets,
            text_targets=l_map.text_targets,
        )

    def _word_bridge_forward(self, pixel_values, input_ids, attention_mask, vision_hidden_states) -> VLAPOutput:
        """A word bridge's training loss: binary cross-entropy of each word's logit against its presence in the
        caption, summed over the words, averaged over the batch (no LLM forward)."""
        if input_ids is None:
            raise ValueError(NO_WORD_BRIDGE_FEATURES)
        logits = self._word_logits(pixel_values, vision_hidden_states)
        if logits.shape[0] != input_ids.shape[0]:
            raise ValueError(f"got {logits.shape[0]} images but {input_ids.shape[0]} captions")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        targets = self.bridge.targets(input_ids, attention_mask)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / logits.shape[0]
        return VLAPOutput(loss=loss, word_loss=loss, word_logits=logits)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        vision_hidden_states: torch.Tensor | None = None,
        generation_config=None,
        **kwargs,
    ) -> torch.LongTensor:
        """Caption (or answer, with a question as prompt) each image: `[B, new_tokens]` ids of the text only.

        Generation parameters come from `generation_config` (default: this model's), updated by `kwargs`.
        A decoder-only LLM sees each row left-padded: [pad ...; prefix; prompt], never padding in between.
        """
        if "input_ids" in kwargs:  # LlavaProcessor's convention, where `text` is the prompt
            raise ValueError(
                "generate() got input_ids: the VLAP processor's text= holds training captions; give the question as "
                'the prompt, processor(images=..., prompt="..."), or use pipeline("image-text-to-text")'
                "(images=..., text=...)"
            )
        generation_config = copy.deepcopy(
            generation_config if generation_config is not None else self.generation_config
        )
        model_kwargs = generation_config.update(**kwargs)
        prefix, prefix_mask = self._llm_context(pixel_values, vision_hidden_states)
        embeds, mask = self.prefix_and_prompt_embeds(prefix, prompt_input_ids, prompt_attention_mask, prefix_mask)
        side = "right" if self.is_encoder_decoder_llm else "left"
        mask, embeds = pack_padding(mask, embeds, padding_side=side)
        requested = max(mask.shape[1] + (generation_config.max_new_tokens or 0), kwargs.get("max_length") or 0)
        self._check_positions(requested, prefix.shape[1], "prompt + new tokens")
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=mask, generation_config=generation_config, **model_kwargs
        )


def _recomputed(forward, checkpoint, *args, **kwargs):
    """One LLM layer's forward, checkpointed (kept inputs, recomputed in backward) when gradients are recorded."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, **kwargs)


@dataclass
class VLAPZeroShotOutput(ModelOutput):
    """
    CLIP's output convention (what the zero-shot-image-classification pipeline reads).

    Args:
        logits_per_image: `[images, texts]` scores in VLAP's word space (`code_scores`); `logits_per_text` is its
            transpose.
        image_embeds, text_embeds: `[N, D]` the normalised features whose word codes they compare.
    """

    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


class VLAPForZeroShotImageClassification(VLAPForConditionalGeneration):
    """The same model (same weights) with CLIP's zero-shot interface: images and candidate texts in, scores out.

    The score is VLAP's own (`code_scores`): how well the image's predicted assignment over words explains each
    text's assignment target, the quantity L_map trains.
    """

    def forward(
        self, input_ids: torch.Tensor, pixel_values=None, attention_mask=None, vision_hidden_states=None, **kwargs
    ) -> VLAPZeroShotOutput:
        """`input_ids` `[T, L]`: the candidate texts (tokenised as captions); `pixel_values` `[N, 3, H, W]`."""
        image_embeds = self.get_image_features(pixel_values, vision_hidden_states)
        text_embeds = self.get_text_features(input_ids, attention_mask)
        logits_per_image = self.code_scores(image_embeds, input_ids, attention_mask, text_embeds)
        return VLAPZeroShotOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.T,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
        )


# Saved checkpoints name the word statistics at the top level ("word_prior"), as before L_map was one module: loading
# renames them into it, and saving (the same mapping, reversed) writes the names every saved VLAP folder uses.
register_checkpoint_conversion_mapping(
    "vlap",
    [WeightRenaming(name, f"assignment_prediction.{name}") for name in WORD_STATISTICS],
    overwrite=True,
)

__all__ = [
    "VLAPPreTrainedModel",
    "VLAPForConditionalGeneration",
    "VLAPForZeroShotImageClassification",
    "VLAPOutput",
    "VLAPZeroShotOutput",
    "LangBridge",
]
