"""Sinkhorn-Knopp assignment for VLAP's assignment prediction objective (remote code: torch only).

The assignment of B samples to V words is the entropic optimal-transport plan

    P* = argmax_{P in U(r, c)}  <P, S> + eps * H(P),
    U(r, c) = {P >= 0 : P 1_V = r,  P^T 1_B = c},   r = 1_B / B,   c = word_prior,

whose solution has the form P* = diag(a) K diag(b) with the Gibbs kernel K = exp(S / eps). Sinkhorn-Knopp finds the
scalings by alternately matching the column (word) and row (sample) marginals:

    b <- c / (K^T a),        a <- r / (K b).

exp(S / eps) reaches e^100 for cosine scores at eps = 0.01, beyond float32. Shifting S / eps by any per-column and
per-row constant only rescales a and b, so we use K_ij = exp(S_ij / eps - m_j - n_i) with m_j the column maximum and
n_i the row maximum of what remains: every entry is in (0, 1] and every row and column holds an exact 1, so no sum can
overflow or vanish (entries below float32's range are < e^-87 of their row's largest and do not register). The kernel
is built with one exp over B x V and the iterations are matrix-vector products, the least memory traffic a Sinkhorn
can have; one B x V float32 buffer is allocated and the result is written into it.

Returned Q = B * P: every row is a distribution over words and, as iterations grow, the column sums tend to
B * word_prior. With torch.distributed initialised, B is the global batch: the column shift and the column sums are
all-reduced across processes (SwAV-style), so the sample marginal spans every process's samples.

Semi-relaxed variant (`marginal_weight` = lambda): the word marginal becomes a penalty lambda * KL(P^T 1 || c) instead
of a constraint (rows stay exact). The column update becomes b <- (c / (K^T a))^(lambda / (lambda + eps)) (Chizat et
al. 2018; POT's `sinkhorn_unbalanced` with reg_m = (inf, lambda)); lambda -> inf is the balanced plan above and
lambda = 0 the row softmax of S / eps. With V words >> B samples a balanced plan must spread each sample over about
V / B words, so its targets are nearly uniform; a finite lambda keeps the prior as a pull, not a wall. Because the
exponent is < 1 the column shift m_j no longer cancels: it is carried in log space, log b = (1 - f) m_j +
f (log c - log K^T a) with f = lambda / (lambda + eps), and b is rescaled by its maximum (any constant cancels in the
row normalisation).
"""

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce over processes in place; a no-op outside torch.distributed."""
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor,
    word_prior: torch.Tensor,
    epsilon: float = 0.01,
    iterations: int = 3,
    marginal_weight: float | None = None,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Assign each sample to words under a word-prior marginal.

    Args:
        scores: `[B, V]` similarity of each sample to each word (VLAP: cosine similarities). Any float
            dtype; computed in float32.
        word_prior: `[V]` positive word marginal summing to 1.
        epsilon: entropic regularisation; smaller is closer to a hard assignment.
        iterations: number of (column, row) normalisation rounds.
        marginal_weight: None for the balanced plan (the word marginal is a constraint); lambda >= 0 for the
            semi-relaxed plan (the word marginal is a KL penalty of weight lambda; 0 gives the row softmax).
        row_weights: `[B]` positive counts: row i stands for `row_weights[i]` identical samples. The plan is exactly
            that of the batch with each row repeated (identical rows get identical scalings), at the cost of the
            distinct rows only; B is then the (global) sum of the weights.

    Returns:
        `[B, V]` float32 Q. Rows sum to 1; columns sum to B * word_prior (B global) as iterations grow (balanced).

    Example:
        >>> import torch
        >>> scores = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])  # 2 samples, 3 words
        >>> q = sinkhorn_knopp(scores, torch.full((3,), 1 / 3), epsilon=0.05, iterations=50)
        >>> q.sum(dim=1)  # each sample's assignment is a distribution over words
        tensor([1., 1.])
        >>> q.argmax(dim=1)  # sample 0 goes to word 0, sample 1 to word 2
        tensor([0, 2])
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, vocab], got shape {tuple(scores.shape)}")
    if word_prior.shape != scores.shape[1:]:
        raise ValueError(f"word_prior has shape {tuple(word_prior.shape)}, expected ({scores.shape[1]},)")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if marginal_weight is not None and marginal_weight < 0:
        raise ValueError(f"marginal_weight must be >= 0 or None (balanced), got {marginal_weight}")
    if row_weights is None:
        row_weights = torch.ones(scores.shape[0], device=scores.device)
    elif row_weights.shape != scores.shape[:1] or (row_weights <= 0).any():
        raise ValueError(f"row_weights must be {scores.shape[0]} positive counts, got {row_weights.tolist()}")
    row_weights = row_weights.float()
    batch = _all_reduce(row_weights.sum())
    prior = word_prior.float()

    column_max = _all_reduce(scores.amax(dim=0).float(), dist.ReduceOp.MAX)
    kernel = torch.sub(scores, column_max)  # the one B x V buffer, float32 whatever the input dtype; a 0 per column
    kernel.sub_(kernel.amax(dim=1, keepdim=True))  # and a 0 per row; every entry <= 0
    kernel.div_(epsilon).exp_()  # K = exp(S / eps - m_j - n_i): entries in (0, 1], a 1 in every row and column

    row_scale = torch.ones(kernel.shape[0], device=kernel.device)
    for _ in range(iterations):
        column_mass = _all_reduce((row_weights * row_scale) @ kernel)  # K^T a over the global batch, repeats counted
        if marginal_weight is None:
            column_scale = batch * prior / column_mass  # columns sum to B * prior (global batch)
        else:  # semi-relaxed: b = (c / K^T a)^f in the unshifted kernel, i.e. log b = (1 - f) m_j + f log(c / K^T a)
            f = marginal_weight / (marginal_weight + epsilon)
            log_scale = (1 - f) * column_max.div(epsilon) + f * (prior.log() - column_mass.log())
            column_scale = (log_scale - log_scale.max()).exp()
        row_scale = 1.0 / (kernel @ column_scale)  # rows sum to 1 (a row lives on one process)
    return kernel.mul_(row_scale.unsqueeze(1)).mul_(column_scale.unsqueeze(0))
