"""VLAP configuration (remote code: imports only transformers)."""

import math

from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.dynamic_module_utils import get_class_from_dynamic_module

# Vision models whose code is not in transformers (the offline default's EfficientNet-Lite): their module ships in a
# model folder only when the model uses it (VLAPForConditionalGeneration.save_pretrained copies it) and is imported
# from that folder at load, which registers it with AutoConfig / AutoModel. No `from .module import` line names it,
# so remote-code loading does not require it in folders of other models.
VISION_MODULES = {"efficientnet_lite": "efficientnet_lite.EfficientNetLiteConfig"}
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")

# The pipelines that `pipeline(task, model=<saved folder>, trust_remote_code=True)` resolves to.
CUSTOM_PIPELINES = {
    "image-to-text": {"impl": "pipeline_vlap.VLAPImageToTextPipeline", "pt": ["AutoModel"], "type": "multimodal"},
    "image-text-to-text": {
        "impl": "pipeline_vlap.VLAPImageTextToTextPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    },
    "zero-shot-image-classification": {
        "impl": "pipeline_vlap.VLAPZeroShotImageClassificationPipeline",
        "pt": ["AutoModelForZeroShotImageClassification"],
        "type": "multimodal",
    },
}


# What an LLM reads for an image through a word bridge (before the prompt): examples of words and a caption, then the
# image's words. Chosen on validation (docs/langbridge.md, "The word bridge").
# Its examples list a thing before its colour too: the bridge lists its surest word first, often the noun.
WORD_BRIDGE_LAYOUT = (
    "Words: dog, grass.\nCaption: a dog on the grass.\n\nWords: car, red.\nCaption: a red car.\n\n"
    "Words: ball, small, green.\nCaption: a small green ball.\n\nWords: cup, table.\nCaption: a cup on a table.\n\n"
    "Words:{words}.\n"
)


class VLAPConfig(PreTrainedConfig):
    r"""
    Configuration of a VLAP model: a frozen vision model and a frozen LLM joined by one trainable linear bridge.

    Args:
        vision_config (`PreTrainedConfig` or `dict`): any vision model AutoModel can build (CLIP vision by default).
        text_config (`PreTrainedConfig` or `dict`): a T5-style encoder-decoder or any causal LM (T5 by default).
        projection_dim (`int`, *optional*): width of the bridge output. Derived from the LLM's input embeddings
            when left `None`; when given it must equal that width (the official code hard-codes 512).
        num_visual_tokens (`int`, *optional*): pool the visual tokens to this many before the bridge. `None`
            keeps every token (CLIP: CLS + patches). Feature-map backbones ([B, C, H, W]) need a square number.
        prompt (`str`): text placed after the visual prefix when captioning ("A picture of").
        assignment_loss_weight (`float`): weight of L_map in L_cap + weight * L_map (0 gives caption-only training).
        sinkhorn_epsilon (`float`), sinkhorn_iterations (`int`): entropic OT regularisation and iterations.
        assignment_temperature (`float`): temperature of the swapped-prediction softmax.
        word_marginal_weight (`float`, *optional*): `None` enforces the word prior as the Sinkhorn plan's column
            marginal (the paper); a value lambda >= 0 makes it a KL penalty of that weight (semi-relaxed OT; 0 gives a
            plain row softmax). With a vocabulary much larger than the batch the balanced plan is nearly uniform, so
            the default (0.01) relaxes it.
        text_representation (`str`): what the caption's code is computed from: "hidden_states" (mean of the frozen
            LLM's last hidden states, the paper), "word_embeddings" (frequency-weighted mean of the caption's own
            input word embeddings, SIF weights a / (a + p(w)), special tokens left out) or "word_assignments" (the
            same features; the caption's target is the SIF-weighted mixture of its tokens' own assignments; the
            default, chosen on validation: the paper's pooled LLM states give a near-uniform, contentless target).
        prior_temperature (`float`): temperature of the word prior softmax(frequency / T) fitted by a trainer.
        backbones (`dict`, *optional*): where the frozen backbones came from, `{"vision": {"name_or_path": ...,
            "revision": ...}, "text": {...}}` (Hub ids or local folders); recorded by `from_vision_text_pretrained`.
        bridge_only (`bool`): the checkpoint holds only the bridge and word prior; `from_pretrained` then loads the
            backbones from `backbones` (a shared VLAP model is a few MB).
        bridge_type (`str`): "linear" (VLAP: one linear layer into the embedding space), "langbridge" (an MLP giving
            coefficients over a vocabulary subset, whose word embeddings it combines; transferable across LLMs) or
            "words" (a word bridge: one linear layer from the mean visual token to a probability per word, trained
            with a bag-of-words loss; the LLM reads the image's most probable words as text, so any LLM can read
            them without training).
        langbridge_hidden_size (`int`, *optional*): width of the LangBridge MLP (default: the LLM's embedding width).
        langbridge_tokens (`list[str]`): the vocabulary subset as token strings (as each spells inside a text).
        langbridge_token_ids (`list[int]`): their ids in this LLM; -1 marks a string this LLM lacks (after a transfer),
            whose coefficient is then masked out.
        langbridge_coefficients (`str`): "linear" (raw coefficients, as the released code; the default, chosen on
            validation) or "softmax" (a distribution over the subset, as the paper describes).
        langbridge_activation_before_words (`bool`): a GELU between the MLP and the word layer; the released code
            (and the default) has none: Linear -> GELU -> Linear -> word layer.
        word_bridge_words (`list[str]`): bridge_type "words": the words the bridge can say (plain strings).
        word_bridge_word_ids (`list[list[int]]`): each word's ids in this LLM, as the LLM reads it after a space.
        word_bridge_layout (`str`): the text the LLM reads for an image, its words joined by "," in place of
            `{words}`, followed by the prompt ("Caption:", or a question).
        word_bridge_layout_ids (`list[list[int]]`): this LLM's ids of the layout before `{words}`, of the separator
            "," and of the layout after `{words}` (set with `word_bridge_word_ids` by `from_vision_text_pretrained` and
            `vlap transfer`, from the LLM's tokenizer).
        word_bridge_stop_ids (`list[int]`): the LLM's tokens holding a line break, where a caption ends (generation
            stops there: the layout writes one caption per line).
        word_bridge_top_k (`int`), word_bridge_threshold (`float`): the words of an image are its at most `top_k`
            words of probability >= `threshold`, most probable first (at least the most probable one).
        prefix_bos_token_id (`int`, *optional*): the BOS token a decoder-only LLM reads before the visual prefix, for
            LLMs whose tokenizer starts every text with one (Gemma, Llama); None: the prefix comes first (GPT-2-style
            BPE such as SmolLM2, T5). Set by `from_vision_text_pretrained` from the LLM's tokenizer.
    """

    model_type = "vlap"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="t5"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int | None = None
    num_visual_tokens: int | None = None
    prompt: str = "A picture of"
    assignment_loss_weight: float = 0.1
    sinkhorn_epsilon: float = 0.01
    sinkhorn_iterations: int = 3
    assignment_temperature: float = 0.01
    word_marginal_weight: float | None = 0.01
    text_representation: str = "word_assignments"
    prior_temperature: float = 0.25
    backbones: dict | None = None
    bridge_only: bool = False
    bridge_type: str = "linear"
    langbridge_hidden_size: int | None = None
    langbridge_tokens: list | None = None
    langbridge_token_ids: list | None = None
    langbridge_coefficients: str = "linear"
    langbridge_activation_before_words: bool = False
    word_bridge_words: list | None = None
    word_bridge_word_ids: list | None = None
    word_bridge_layout: str = WORD_BRIDGE_LAYOUT
    word_bridge_layout_ids: list | None = None
    word_bridge_stop_ids: list | None = None
    word_bridge_top_k: int = 3
    word_bridge_threshold: float = 0.5
    prefix_bos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if getattr(self, "custom_pipelines", None) is None:
            self.custom_pipelines = CUSTOM_PIPELINES
        positive = {
            "sinkhorn_epsilon": self.sinkhorn_epsilon,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "assignment_temperature": self.assignment_temperature,
            "prior_temperature": self.prior_temperature,
        }
        for name, value in positive.items():
            if not 0 < value < math.inf:  # NaN fails too
                raise ValueError(f"VLAPConfig.{name} must be a finite number > 0, got {value}")
        bos = self.prefix_bos_token_id
        if bos is not None and (isinstance(bos, bool) or not isinstance(bos, int) or bos < 0):
            raise ValueError(f"VLAPConfig.prefix_bos_token_id must be a token id or None, got {bos!r}")
        if not 0 <= self.assignment_loss_weight < math.inf:
            raise ValueError(
                f"VLAPConfig.assignment_loss_weight must be a finite number >= 0, got {self.assignment_loss_weight}"
            )
        if self.word_marginal_weight is not None and not 0 <= self.word_marginal_weight < math.inf:
            raise ValueError(
                f"VLAPConfig.word_marginal_weight must be a finite number >= 0 or None, got {self.word_marginal_weight}"
            )
        if self.text_representation not in ("hidden_states", "word_embeddings", "word_assignments"):
            raise ValueError(
                "VLAPConfig.text_representation must be 'hidden_states', 'word_embeddings' or 'word_assignments', "
                f"got {self.text_representation!r}"
            )
        if self.bridge_type not in ("linear", "langbridge", "words"):
            raise ValueError(
                f"VLAPConfig.bridge_type must be 'linear', 'langbridge' or 'words', got {self.bridge_type!r}"
            )
        if self.langbridge_coefficients not in ("softmax", "linear"):
            raise ValueError(
                "VLAPConfig.langbridge_coefficients must be 'softmax' or 'linear', "
                f"got {self.langbridge_coefficients!r}"
            )
        if self.bridge_type == "langbridge":
            tokens, ids = self.langbridge_tokens or [], self.langbridge_token_ids or []
            if not tokens or len(tokens) != len(ids):
                raise ValueError(
                    "a LangBridge needs langbridge_tokens (the vocabulary subset) and langbridge_token_ids of the same "
                    f"length, got {len(tokens)} strings and {len(ids)} ids"
                )
        if self.bridge_type == "words":
            self._check_word_bridge()
        if self.num_visual_tokens is not None and self.num_visual_tokens < 1:
            raise ValueError(f"VLAPConfig.num_visual_tokens must be >= 1 or None, got {self.num_visual_tokens}")

    def _check_word_bridge(self) -> None:
        words, ids = self.word_bridge_words or [], self.word_bridge_word_ids
        if not words or any(not isinstance(word, str) or not word.strip() for word in words):
            raise ValueError("a word bridge needs word_bridge_words, a non-empty list of words")
        if self.word_bridge_layout.count("{words}") != 1:
            raise ValueError(
                f"VLAPConfig.word_bridge_layout must hold {{words}} exactly once, got {self.word_bridge_layout!r}"
            )
        if ids is not None and (len(ids) != len(words) or not all(ids)):
            raise ValueError(f"word_bridge_word_ids must give ids for each of the {len(words)} words")
        if self.word_bridge_layout_ids is not None and len(self.word_bridge_layout_ids) != 3:
            raise ValueError("word_bridge_layout_ids must be [before, separator, after] id lists")
        if isinstance(self.word_bridge_top_k, bool) or not self.word_bridge_top_k >= 1:
            raise ValueError(f"VLAPConfig.word_bridge_top_k must be >= 1, got {self.word_bridge_top_k}")
        if not 0 <= self.word_bridge_threshold <= 1:  # NaN fails too
            raise ValueError(f"VLAPConfig.word_bridge_threshold must be in [0, 1], got {self.word_bridge_threshold}")
        if self.assignment_loss_weight != 0:
            raise ValueError(
                "a word bridge trains on its bag-of-words loss alone (it has no prefix for L_map): set "
                "assignment_loss_weight to 0"
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "VLAPConfig":
        """As PreTrainedConfig's; a vision model whose code ships in the folder (VISION_MODULES) is imported from it
        first, unless it is registered already."""
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        vision_type = (config_dict.get("vision_config") or {}).get("model_type")
        if vision_type in VISION_MODULES and vision_type not in CONFIG_MAPPING:
            hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
            get_class_from_dynamic_module(VISION_MODULES[vision_type], pretrained_model_name_or_path, **hub_kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def vision_hidden_size(self) -> int:
        """Width of one visual token: `hidden_size`, or the last stage of a multi-stage CNN (`hidden_sizes`)."""
        for name in ("hidden_size", "hidden_dim"):
            if isinstance(getattr(self.vision_config, name, None), int):
                return getattr(self.vision_config, name)
        if getattr(self.vision_config, "hidden_sizes", None):
            return self.vision_config.hidden_sizes[-1]
        raise ValueError(f"cannot tell the output width of vision model type {self.vision_config.model_type!r}")


__all__ = ["VLAPConfig"]
