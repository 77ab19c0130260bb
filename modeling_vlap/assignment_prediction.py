"""L_map, VLAP's assignment prediction (remote code: torch and its sibling modules only).

Image and caption are each compared with every word embedding of the frozen LLM (their *codes*, cosines `[B, V]`);
Sinkhorn-Knopp turns the codes into assignments over words whose word marginal is a prior from caption word
frequencies; each side's softmax(code / tau) then predicts the other side's assignment (swapped prediction).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .optimal_transport import sinkhorn_knopp

SIF_SMOOTHING = 1e-3  # a in the SIF weight a / (a + p(w)) (Arora et al., 2017)
WORD_STATISTICS = ("word_prior", "word_frequency")  # the buffers fitted from the training captions


@dataclass
class Vocabulary:
    """What L_map reads of the frozen LLM: its input-embedding module (`[V, D]` rows, taken through the module so
    LLMs that scale their embeddings stay in their own space) and the special tokens a caption's SIF weights leave
    out (EOS, padding, BOS)."""

    embeddings: nn.Module
    special_token_ids: list[int]

    @property
    def weight(self) -> torch.Tensor:
        """`[V, D]` the word-embedding matrix."""
        return self.embeddings.weight


@dataclass
class AssignmentLoss:
    """L_map and its parts. `loss` `[]` is the mean of `image_predicts_text` (trains the bridge) and
    `text_predicts_image` (its predictor, the frozen LLM, cannot move); codes and targets are `[B, V]`."""

    loss: torch.Tensor
    image_predicts_text: torch.Tensor
    text_predicts_image: torch.Tensor
    image_codes: torch.Tensor
    text_codes: torch.Tensor
    image_targets: torch.Tensor
    text_targets: torch.Tensor


class _WordCosines(torch.autograd.Function):
    """`[B, D]` unit features -> `[B, V]` their cosines with the word embeddings `[V, D]` (times their inverse norms
    `[V]`), in float32; the gradient to the features is computed with `backward_words`, a lower-precision copy of the
    embedding matrix."""

    @staticmethod
    def forward(ctx, features, words, inverse_norms, backward_words):
        ctx.save_for_backward(inverse_norms, backward_words)
        return (features @ words.T) * inverse_norms

    @staticmethod
    def backward(ctx, grad):
        inverse_norms, backward_words = ctx.saved_tensors
        return ((grad * inverse_norms).to(backward_words.dtype) @ backward_words).to(grad.dtype), None, None, None


class AssignmentPrediction(nn.Module):
    """L_map: the word codes, their Sinkhorn assignments and the swapped prediction.

    Owns the word statistics fitted from the training captions (`fit_word_prior`): `word_prior` `[V]`, the Sinkhorn
    word marginal, and `word_frequency` `[V]`, p(w) of the SIF weights; both are uniform until fitted. While the
    LLM's word embeddings stay frozen it keeps what is derived from them between calls (their inverse norms, a
    low-precision copy for the backward, the codes of caption tokens). The settings are read from `config` at each
    call (`sinkhorn_epsilon`, `sinkhorn_iterations`, `word_marginal_weight`, `assignment_temperature`,
    `text_representation`, `prior_temperature`).

    Example:
        >>> import torch
        >>> from modeling_vlap import VLAPConfig
        >>> from modeling_vlap.assignment_prediction import AssignmentPrediction, Vocabulary
        >>> config = VLAPConfig(vision_config={"model_type": "clip_vision_model"}, text_config={"model_type": "t5"})
        >>> words = Vocabulary(torch.nn.Embedding(100, 8), special_token_ids=[0, 1])
        >>> l_map = AssignmentPrediction(config, vocab_size=100)
        >>> captions = torch.tensor([[5, 6, 1], [7, 8, 1]])
        >>> out = l_map(torch.randn(2, 8), captions, torch.ones_like(captions), words)
        >>> out.loss.shape, out.image_codes.shape
        (torch.Size([]), torch.Size([2, 100]))
    """

    TOKEN_CODE_CACHE_BYTES = 2**29  # kept token codes, a V-wide float32 row each: 2,730 of SmolLM2's 49k words

    def __init__(self, config, vocab_size: int):
        super().__init__()
        self.config = config
        self.register_buffer("word_prior", torch.full((vocab_size,), 1.0 / vocab_size))
        self.register_buffer("word_frequency", torch.full((vocab_size,), 1.0 / vocab_size))

    def forward(
        self,
        image_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vocabulary: Vocabulary,
        text_features: torch.Tensor | None = None,
    ) -> AssignmentLoss:
        """`[B, D]` image features (the mean mapped visual token) and `[B, T]` their captions -> L_map.

        `text_features` `[B, D]`: the captions' features when they need the LLM's forward ("hidden_states", the
        paper's text code); the other representations are computed here from the caption's tokens."""
        with torch.no_grad():  # the LLM is frozen: the caption side carries no gradient
            text_codes, token_codes = self.caption_codes(input_ids, attention_mask, vocabulary, text_features)
            text_targets = self.caption_assignments(input_ids, attention_mask, vocabulary, text_codes, token_codes)
        return self.swapped_prediction(self.word_codes(image_features, vocabulary), text_codes, text_targets)

    def swapped_prediction(self, image_codes, text_codes, text_targets) -> AssignmentLoss:
        """`[B, V]` codes and the captions' targets -> L_map: softmax(image code / tau) predicts the captions'
        assignment, softmax(text code / tau) the images' (their Sinkhorn assignment, computed here)."""
        image_targets = self.assignments(image_codes)
        tau = self.config.assignment_temperature
        image_predicts_text = -(text_targets * F.log_softmax(image_codes / tau, dim=-1)).sum(-1).mean()
        text_predicts_image = -(image_targets * F.log_softmax(text_codes / tau, dim=-1)).sum(-1).mean()
        return AssignmentLoss(
            loss=(image_predicts_text + text_predicts_image) / 2,
            image_predicts_text=image_predicts_text,
            text_predicts_image=text_predicts_image,
            image_codes=image_codes,
            text_codes=text_codes,
            image_targets=image_targets,
            text_targets=text_targets,
        )

    # ------------------------------------------------------------------------------------------- the word prior
    @torch.no_grad()
    def fit_word_prior(self, token_counts: torch.Tensor) -> torch.Tensor:
        """Set the Sinkhorn word marginal from caption token counts `[V]`: softmax(frequency / prior_temperature).

        Frequencies are counts divided by the largest count (in [0, 1]), so the most frequent word carries
        exp(1 / T) = e^4 (T = 0.25) times the weight of an unseen one. `word_frequency` becomes counts / total.
        """
        counts = torch.as_tensor(token_counts, dtype=torch.float64)
        if counts.shape != self.word_prior.shape or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError(
                f"token_counts must be {tuple(self.word_prior.shape)} non-negative counts with a positive total"
            )
        prior = torch.softmax(counts / counts.max() / self.config.prior_temperature, dim=0)
        self.word_prior.copy_(prior.to(self.word_prior.dtype))
        self.word_frequency.copy_((counts / counts.sum()).to(self.word_frequency.dtype))
        return self.word_prior

    # ---------------------------------------------------------------------------------------------- the codes
    def word_codes(self, features: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
        """Cosine similarity of `[B, D]` features to every word embedding: `[B, V]` float32, also under autocast:
        codes are divided by epsilon and tau (0.01), so bfloat16's 3 digits would be ~0.4 nats of noise.

        Under autocast only the backward product (the bridge's gradient through the codes, a [B, V] x [V, D] product)
        runs in autocast's dtype, as autocast runs the step's other products; on CPU it is memory-bound, and a
        bfloat16 copy of the frozen matrix halves what it reads."""
        device = features.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            features = F.normalize(features.float(), dim=-1)
            words = vocabulary.weight.float()
            inverse_norms = self._kept(
                "inverse_norms", vocabulary, lambda: 1.0 / vocabulary.weight.float().norm(dim=-1).clamp(min=1e-12)
            )  # normalising the whole matrix at every step costs as much as the codes themselves
            if low is None or not features.requires_grad or self._frozen_key(vocabulary) is None:
                return (features @ words.T) * inverse_norms
            backward_words = self._kept(f"words_{low}", vocabulary, lambda: vocabulary.weight.detach().to(low))
            return _WordCosines.apply(features, words, inverse_norms, backward_words)

    def sif_weights(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocabulary: Vocabulary):
        """`[B, T]` SIF weights a / (a + p(w)) of the caption tokens; 0 on padding and special tokens."""
        weights = SIF_SMOOTHING / (SIF_SMOOTHING + self.word_frequency[input_ids].float())
        special = torch.tensor(vocabulary.special_token_ids, dtype=input_ids.dtype, device=input_ids.device)
        return weights * attention_mask * ~torch.isin(input_ids, special)

    def sif_text_features(self, input_ids, attention_mask, vocabulary: Vocabulary) -> torch.Tensor:
        """`[B, T]` captions -> `[B, D]` the L2-normalised SIF-weighted mean of their input word embeddings
        ("word_embeddings" and "word_assignments")."""
        embeddings = vocabulary.embeddings(input_ids).float()
        weights = self.sif_weights(input_ids, attention_mask, vocabulary)
        return F.normalize((embeddings * weights.unsqueeze(-1)).sum(dim=1), dim=-1)

    def _caption_token_mixing(self, input_ids, attention_mask, vocabulary: Vocabulary):
        """The captions' distinct SIF-weighted tokens `[U]` (sorted), how often each occurs `[U]`, and `[B, U]` each
        caption's summed SIF weight of each (a caption's feature is `mixing @ embeddings`, before normalising)."""
        weights = self.sif_weights(input_ids, attention_mask, vocabulary)
        rows = weights > 0
        tokens, which = torch.unique(input_ids[rows], return_inverse=True)
        sample = torch.arange(len(input_ids), device=input_ids.device).unsqueeze(1).expand_as(input_ids)[rows]
        mixing = torch.zeros(len(input_ids), len(tokens), device=input_ids.device)
        mixing.index_put_((sample, which), weights[rows].float(), accumulate=True)
        return tokens, torch.bincount(which, minlength=len(tokens)), mixing

    def caption_codes(self, input_ids, attention_mask, vocabulary: Vocabulary, text_features=None):
        """`[B, V]` the captions' word codes, equal to `word_codes(text features)`, and `[U, V]` the codes of their
        distinct tokens (those with a SIF weight, in `torch.unique`'s order; empty for "hidden_states", whose
        `text_features` `[B, D]` the caller computes with the LLM).

        A SIF caption feature is a weighted sum of its token embeddings, and a cosine is linear in the feature once its
        norm is known: codes(sum_t w_t e_t / |sum_t w_t e_t|) = sum_t w_t |e_t| codes(e_t) / |sum_t w_t e_t|. Token
        codes of a frozen LLM never change and are kept (`_token_codes`), so a training step pays a [B, U] x [U, V]
        product for its captions instead of a [B + U, D] x [D, V] one."""
        if self.config.text_representation == "hidden_states":
            if text_features is None:
                raise ValueError('text_representation="hidden_states" needs the LLM\'s text_features')
            return self.word_codes(text_features, vocabulary), input_ids.new_empty(0)
        tokens, _, mixing = self._caption_token_mixing(input_ids, attention_mask, vocabulary)
        embeddings = vocabulary.embeddings(tokens).float()  # [U, D]
        feature_norms = (mixing @ embeddings).norm(dim=-1, keepdim=True).clamp(min=1e-12)  # [B, 1]
        token_codes = self._token_codes(tokens, vocabulary)
        return (mixing * embeddings.norm(dim=-1)) @ token_codes / feature_norms, token_codes

    def _token_codes(self, tokens: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
        """`[U]` token ids -> `[U, V]` the word codes of their own embeddings, kept between calls (up to
        `TOKEN_CODE_CACHE_BYTES`) while the frozen embedding matrix is unchanged."""
        known = self._kept("token_codes", vocabulary, dict)
        ids = tokens.tolist()
        missing = [token for token in dict.fromkeys(ids) if token not in known]
        fresh = {}
        if missing:
            codes = self.word_codes(vocabulary.embeddings(tokens.new_tensor(missing)), vocabulary)
            fresh = dict(zip(missing, codes))
            room = max(self.TOKEN_CODE_CACHE_BYTES // (4 * codes.shape[1]) - len(known), 0)
            known.update(zip(missing[:room], codes[:room]))
        return torch.stack([known[token] if token in known else fresh[token] for token in ids])

    # ----------------------------------------------------------------------------------------- the assignments
    def assignments(self, codes: torch.Tensor, row_weights: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, V]` codes -> `[B, V]` Sinkhorn assignments Q (rows are distributions over words; no gradient)."""
        config = self.config
        return sinkhorn_knopp(
            codes.detach(),
            self.word_prior,
            config.sinkhorn_epsilon,
            config.sinkhorn_iterations,
            marginal_weight=config.word_marginal_weight,
            row_weights=row_weights,
        )

    def caption_assignments(self, input_ids, attention_mask, vocabulary: Vocabulary, text_codes, token_codes=None):
        """`[B, V]` the captions' targets. "word_assignments": each caption token's own embedding is assigned to words
        (one row per token, so a caption's colour and its shape both get mass) and the caption's target is the
        SIF-weighted mixture of its tokens' rows; otherwise the assignment of the pooled text code.

        `token_codes` `[U, V]`: the codes of the captions' distinct tokens when the caller has them (`caption_codes`).
        Rows of the same token are identical, so the plan is computed once per distinct token with its count as a row
        weight (`sinkhorn_knopp(row_weights=)`: exactly the plan of the repeated rows)."""
        if self.config.text_representation != "word_assignments":
            return self.assignments(text_codes)
        tokens, counts, mixing = self._caption_token_mixing(input_ids, attention_mask, vocabulary)
        if token_codes is None:
            token_codes = self._token_codes(tokens, vocabulary)
        token_targets = self.assignments(token_codes, row_weights=counts)
        return mixing @ token_targets / mixing.sum(dim=1, keepdim=True).clamp(min=1e-12)

    def predicted_log_assignments(self, image_features: torch.Tensor, vocabulary: Vocabulary) -> torch.Tensor:
        """`[N, D]` image features -> `[N, V]` log softmax(image code / tau): what the swapped prediction trains to
        match the caption's assignment (an image read as words)."""
        return F.log_softmax(self.word_codes(image_features, vocabulary) / self.config.assignment_temperature, dim=-1)

    # ------------------------------------------------------------------------- what is kept from frozen embeddings
    @staticmethod
    def _frozen_key(vocabulary: Vocabulary):
        """What identifies the current values of a frozen word-embedding matrix (None when it is trainable), so that
        what is computed from it can be kept until it changes (load_state_dict copies in place: `_version` moves)."""
        weight = vocabulary.weight
        return None if weight.requires_grad else (weight.data_ptr(), weight._version, weight.dtype, weight.device)

    def _kept(self, name: str, vocabulary: Vocabulary, compute):
        """`compute()`, kept under `name` while the frozen word-embedding matrix is unchanged (a trainable matrix
        changes every step: then nothing is kept)."""
        key = self._frozen_key(vocabulary)
        if key is None:
            return compute()
        if getattr(self, "_kept_key", None) != key:
            self._kept_values, self._kept_key = {}, key
        if name not in self._kept_values:
            self._kept_values[name] = compute()
        return self._kept_values[name]
