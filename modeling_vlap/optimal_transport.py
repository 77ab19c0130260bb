"""Sinkhorn-Knopp assignment for VLAP's assignment prediction objective (remote code: torch only).

The assignment of B samples to V words is the entropic optimal-transport plan

    P* = argmax_{P in U(r, c)}  <P, S> + eps * H(P),
    U(r, c) = {P >= 0 : P 1_V = r,  P^T 1_B = c},   r = 1_B / B,   c = word_prior,

whose solution has the form P* = diag(a) exp(S / eps) diag(b).  Sinkhorn-Knopp finds the scalings by
alternately matching the column (word) and row (sample) marginals.  We keep everything in the log
domain: S / eps reaches 100 for cosine scores at eps = 0.01, far outside what exp() can hold in
float32, let alone bf16/fp16.  Returned Q = B * P, so every row is a distribution over words and,
once converged, the column sums are B * word_prior.

With torch.distributed initialised, B is the global batch: the column marginal is taken over the
samples of all processes (two all-reduces per iteration), as in SwAV's distributed Sinkhorn.
"""

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_logsumexp_over_samples(log_q: torch.Tensor) -> torch.Tensor:
    """logsumexp over dim 0 (samples) of a [B, V] tensor, spanning every process's samples -> [1, V]."""
    if not _distributed():
        return torch.logsumexp(log_q, dim=0, keepdim=True)
    # Exact distributed logsumexp: a shared per-column maximum, then a sum of the shifted exponentials.
    column_max = log_q.amax(dim=0, keepdim=True)
    dist.all_reduce(column_max, op=dist.ReduceOp.MAX)
    column_max = torch.where(torch.isfinite(column_max), column_max, torch.zeros_like(column_max))
    shifted_sum = torch.exp(log_q - column_max).sum(dim=0, keepdim=True)
    dist.all_reduce(shifted_sum)
    return column_max + torch.log(shifted_sum)


def global_batch_size(local_batch_size: int, device: torch.device) -> int:
    """Number of samples across all processes (the local size when not distributed)."""
    if not _distributed():
        return local_batch_size
    size = torch.tensor([local_batch_size], device=device, dtype=torch.long)
    dist.all_reduce(size)
    return int(size.item())


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, word_prior: torch.Tensor, epsilon: float = 0.01, iterations: int = 3
) -> torch.Tensor:
    """Assign each sample to words under a word-prior marginal.

    Args:
        scores: `[B, V]` similarity of each sample to each word (VLAP: cosine similarities). Any float
            dtype; computed in float32.
        word_prior: `[V]` positive word marginal summing to 1.
        epsilon: entropic regularisation; smaller is closer to a hard assignment.
        iterations: number of (column, row) normalisation rounds.

    Returns:
        `[B, V]` float32 Q. Rows sum to 1; columns sum to B * word_prior (B global) as iterations grow.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, vocab], got shape {tuple(scores.shape)}")
    if word_prior.shape != scores.shape[1:]:
        raise ValueError(f"word_prior has shape {tuple(word_prior.shape)}, expected ({scores.shape[1]},)")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    batch = global_batch_size(scores.shape[0], scores.device)
    # Q = B * P: rows sum to 1, columns to B * prior. Working with Q instead of P only shifts logs.
    log_column_marginal = torch.log(word_prior.float() * batch).unsqueeze(0)  # [1, V]

    log_q = scores.float() / epsilon  # log of the Gibbs kernel exp(S / eps)
    for _ in range(iterations):
        # Columns: each word receives B * prior of the mass, summed over the global batch.
        log_q = log_q - _global_logsumexp_over_samples(log_q) + log_column_marginal
        # Rows: each sample is a distribution over words (a row lives on one process: no all-reduce).
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return torch.exp(log_q)
