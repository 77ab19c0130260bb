import os
import socket

import numpy as np
import ot
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_vlap.optimal_transport import sinkhorn_knopp


def cosine_scores(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(batch, 16, generator=generator), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(vocab, 16, generator=generator), dim=-1)
    return a @ b.T


def random_prior(vocab: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.rand(vocab, generator=generator) / 0.25, dim=0)


def test_rows_are_distributions_and_columns_approach_the_prior():
    scores, prior = cosine_scores(16, 40), random_prior(40)
    column_errors = []
    for iterations in (1, 3, 30, 300):
        q = sinkhorn_knopp(scores, prior, epsilon=0.05, iterations=iterations)
        assert q.shape == (16, 40) and q.dtype == torch.float32
        torch.testing.assert_close(q.sum(dim=1), torch.ones(16), atol=1e-5, rtol=0)
        column_errors.append((q.sum(dim=0) - 16 * prior).abs().max().item())
    assert column_errors == sorted(column_errors, reverse=True)
    assert column_errors[-1] < 1e-4


@pytest.mark.parametrize("epsilon", [0.01, 0.05])
def test_converged_plan_matches_pot_sinkhorn_log(epsilon):
    batch, vocab = 8, 30
    scores, prior = cosine_scores(batch, vocab, seed=2), random_prior(vocab, seed=3)
    ours = sinkhorn_knopp(scores, prior, epsilon=epsilon, iterations=3000)
    reference = ot.sinkhorn(
        np.full(batch, 1.0 / batch),
        prior.double().numpy(),
        -scores.double().numpy(),
        reg=epsilon,
        method="sinkhorn_log",
        numItermax=3000,
        stopThr=1e-10,
        warn=False,
    )
    np.testing.assert_allclose(ours.numpy(), batch * reference, atol=1e-4)


def test_three_iterations_match_a_plain_float64_loop():
    """The log-domain solver computes exactly what the textbook exp-domain alternation computes."""
    scores, prior = cosine_scores(6, 12, seed=4), random_prior(12, seed=5)
    q = torch.exp(scores.double() / 0.1)
    for _ in range(3):
        q = q / q.sum(dim=0, keepdim=True) * prior.double() * 6
        q = q / q.sum(dim=1, keepdim=True)
    torch.testing.assert_close(sinkhorn_knopp(scores, prior, 0.1, 3).double(), q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_for_low_precision_scores(dtype):
    scores = cosine_scores(32, 500, seed=6).to(dtype)
    scores[0, :] = 1.0  # extreme ties at the largest cosine: exp(1 / 0.01) overflows float32
    q = sinkhorn_knopp(scores, random_prior(500), epsilon=0.01, iterations=3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32), atol=1e-4, rtol=0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="word_prior"):
        sinkhorn_knopp(torch.zeros(2, 5), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="batch, vocab"):
        sinkhorn_knopp(torch.zeros(5), torch.full((5,), 0.2))


@pytest.mark.parametrize("marginal_weight", [None, 0.01])
def test_row_weights_give_the_plan_of_the_repeated_rows(marginal_weight):
    scores, prior = cosine_scores(5, 30, seed=9), random_prior(30, seed=10)
    counts = torch.tensor([1, 3, 2, 1, 4])
    repeated = sinkhorn_knopp(scores.repeat_interleave(counts, dim=0), prior, 0.05, 3, marginal_weight)
    weighted = sinkhorn_knopp(scores, prior, 0.05, 3, marginal_weight, row_weights=counts)
    torch.testing.assert_close(weighted.repeat_interleave(counts, dim=0), repeated, atol=1e-6, rtol=1e-5)
    # Weights matter: the same distinct rows with unit weights give another plan.
    assert (sinkhorn_knopp(scores, prior, 0.05, 3, marginal_weight) - weighted).abs().max() > 1e-3
    for bad in (torch.tensor([1, 2]), torch.tensor([1, 0, 1, 1, 1])):
        with pytest.raises(ValueError, match="row_weights"):
            sinkhorn_knopp(scores, prior, row_weights=bad)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sinkhorn_on_a_shard(rank, world_size, port, scores, prior, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        shard = scores.chunk(world_size)[rank]
        results[rank] = sinkhorn_knopp(shard, prior, epsilon=0.05, iterations=3)
        weights = torch.arange(1, len(scores) + 1).chunk(world_size)[rank]
        results[f"weighted{rank}"] = sinkhorn_knopp(shard, prior, epsilon=0.05, iterations=3, row_weights=weights)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_one_global_sample_marginal():
    """Each process holds half the batch; together they must compute the plan of the whole batch."""
    scores, prior = cosine_scores(10, 24, seed=7), random_prior(24, seed=8)
    results = mp.Manager().dict()
    mp.spawn(_sinkhorn_on_a_shard, args=(2, _free_port(), scores, prior, results), nprocs=2, join=True)
    distributed = torch.cat([results[0], results[1]])
    torch.testing.assert_close(distributed, sinkhorn_knopp(scores, prior, epsilon=0.05, iterations=3))
    # The local-only plan differs: the marginal really spans both processes.
    local = torch.cat([sinkhorn_knopp(half, prior, epsilon=0.05, iterations=3) for half in scores.chunk(2)])
    assert (local - distributed).abs().max() > 1e-3
    # Row weights (repeat counts) are global too: the weighted shards give the weighted plan of the whole batch.
    weights = torch.arange(1, 11)
    torch.testing.assert_close(
        torch.cat([results["weighted0"], results["weighted1"]]),
        sinkhorn_knopp(scores, prior, epsilon=0.05, iterations=3, row_weights=weights),
    )


@pytest.mark.parametrize("marginal_weight", [0.0, 0.02, 1.0])
def test_semi_relaxed_plan_matches_pot_unbalanced(marginal_weight):
    batch, vocab, epsilon = 6, 40, 0.05
    scores, prior = cosine_scores(batch, vocab, seed=4), random_prior(vocab, seed=5)
    ours = sinkhorn_knopp(scores, prior, epsilon=epsilon, iterations=3000, marginal_weight=marginal_weight)
    reference = ot.unbalanced.sinkhorn_unbalanced(
        np.full(batch, 1.0 / batch),
        prior.double().numpy(),
        -scores.double().numpy(),
        epsilon,
        (float("inf"), marginal_weight),
        reg_type="entropy",
        numItermax=20000,
        stopThr=1e-12,
    )
    np.testing.assert_allclose(ours.numpy(), batch * reference, atol=1e-5)
    torch.testing.assert_close(ours.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)


def test_semi_relaxed_limits_are_the_row_softmax_and_the_balanced_plan():
    scores, prior = cosine_scores(8, 30, seed=6), random_prior(30, seed=7)
    row_softmax = sinkhorn_knopp(scores, prior, epsilon=0.01, iterations=3, marginal_weight=0.0)
    torch.testing.assert_close(row_softmax, torch.softmax(scores / 0.01, dim=1), atol=1e-6, rtol=0)
    balanced = sinkhorn_knopp(scores, prior, epsilon=0.05, iterations=50)
    nearly = sinkhorn_knopp(scores, prior, epsilon=0.05, iterations=50, marginal_weight=1e6)
    torch.testing.assert_close(nearly, balanced, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="marginal_weight"):
        sinkhorn_knopp(scores, prior, marginal_weight=-1.0)
