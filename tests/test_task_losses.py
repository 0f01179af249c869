"""EK-100 MIR's adaptive max-margin ranking loss and Charades-Ego's NormSoftmaxLoss against
plain float64 transcriptions of the original's definitions, and their all-gathered forms: two
gloo processes give the one-process loss and gradients on the same global batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from egovlpv2_rt.modeling.model import sim_matrix
from egovlpv2_rt.train.distributed import DistInfo
from egovlpv2_rt.train.losses import (
    MIR_MARGIN,
    NORM_SOFTMAX_TEMPERATURE,
    adaptive_max_margin_ranking_loss,
    gathered_max_margin_loss,
    gathered_norm_softmax_loss,
    norm_softmax_loss,
)


def _max_margin_reference(s: list[list[float]], w: list[float], m: float) -> float:
    """The original's AdaptiveMaxMarginRankingLoss(fix_norm=True), written out: for every
    ordered pair i != j, relu(w_i m - (S_ii - S_ij)) and relu(w_i m - (S_ii - S_ji)); mean of
    the 2 N (N - 1) terms."""
    n = len(s)
    terms = []
    for i in range(n):
        for j in range(n):
            if i != j:
                terms.append(max(0.0, w[i] * m - (s[i][i] - s[i][j])))
    for i in range(n):
        for j in range(n):
            if i != j:
                terms.append(max(0.0, w[i] * m - (s[i][i] - s[j][i])))
    return math.fsum(terms) / len(terms)


def _norm_softmax_reference(s: list[list[float]], t: float) -> float:
    """-mean_i log softmax(S/t)_ii - mean_j log softmax(S^T/t)_jj, with math.log/exp."""
    n = len(s)

    def log_softmax_diag(rows: list[list[float]]) -> list[float]:
        out = []
        for i, row in enumerate(rows):
            z = [x / t for x in row]
            top = max(z)
            lse = top + math.log(math.fsum(math.exp(x - top) for x in z))
            out.append(z[i] - lse)
        return out

    transposed = [[s[j][i] for j in range(n)] for i in range(n)]
    return -math.fsum(log_softmax_diag(s)) / n - math.fsum(log_softmax_diag(transposed)) / n


def _random_sim(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 8, generator=g, dtype=torch.float64)
    v = torch.randn(n, 8, generator=g, dtype=torch.float64)
    return sim_matrix(t, v)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_max_margin_matches_the_transcription_with_relevancy_weights(seed, n):
    sim = _random_sim(n, seed)
    g = torch.Generator().manual_seed(100 + seed)
    # Relevancies as EK-100 pairs them: 1 for own narrations, (0.1, 1] for sampled captions.
    w = torch.where(
        torch.rand(n, generator=g) < 0.3,
        torch.ones(n, dtype=torch.float64),
        0.1 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64),
    )
    got = adaptive_max_margin_ranking_loss(sim, w, MIR_MARGIN)
    want = _max_margin_reference(sim.tolist(), w.tolist(), MIR_MARGIN)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10)
    # A larger margin (the class default 0.4) makes every hinge active on these inputs' scale.
    got = adaptive_max_margin_ranking_loss(sim, w, 0.4)
    assert got.item() == pytest.approx(
        _max_margin_reference(sim.tolist(), w.tolist(), 0.4), rel=1e-10
    )


def test_max_margin_hand_computed():
    # N = 2, S = [[0.9, 0.45], [0.2, 0.6]], w = [1, 0.5], m = 0.2 (so w_1 m = 0.1).
    # Pair (0, 1): row term relu(0.2 - (0.9 - 0.45)) = 0, column relu(0.2 - (0.9 - 0.2)) = 0.
    # Pair (1, 0): row term relu(0.1 - (0.6 - 0.2)) = 0, column relu(0.1 - (0.6 - 0.45)) = 0.
    # All hinges inactive -> 0. With S_01 = 0.8: row term (0, 1) = 0.2 - 0.1 = 0.1, and pair
    # (1, 0)'s column term reads S_01: relu(0.1 - (0.6 - 0.8)) = 0.3; mean of 4 terms = 0.1.
    # (Both terms use the row's weight: with w_0 and w_1 swapped the column term would be 0.4.)
    sim = torch.tensor([[0.9, 0.45], [0.2, 0.6]], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert adaptive_max_margin_ranking_loss(sim, w, 0.2).item() == 0.0
    sim[0, 1] = 0.8
    assert adaptive_max_margin_ranking_loss(sim, w, 0.2).item() == pytest.approx(0.1, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 4, 16])
def test_norm_softmax_matches_the_transcription(seed, n):
    sim = _random_sim(n, seed)
    got = norm_softmax_loss(sim, NORM_SOFTMAX_TEMPERATURE)
    want = _norm_softmax_reference(sim.tolist(), NORM_SOFTMAX_TEMPERATURE)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_norm_softmax_hand_computed():
    # S = [[1, 0], [0, 1]], T = 1: each log-softmax diagonal is 1 - log(e + 1); the loss is
    # twice its negative: 2 (log(1 + e) - 1).
    sim = torch.eye(2, dtype=torch.float64)
    want = 2 * (math.log(1 + math.e) - 1)
    assert norm_softmax_loss(sim, 1.0).item() == pytest.approx(want, rel=1e-14)


def test_task_losses_bad_input():
    sim = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"weights must be \[3\]"):
        adaptive_max_margin_ranking_loss(sim, torch.ones(2))
    with pytest.raises(ValueError, match="N >= 2"):
        adaptive_max_margin_ranking_loss(torch.zeros(1, 1), torch.ones(1))
    with pytest.raises(ValueError, match="square"):
        adaptive_max_margin_ranking_loss(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        norm_softmax_loss(sim, 0.0)
    with pytest.raises(TypeError, match="floating"):
        norm_softmax_loss(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"both be \[B, P\]"):
        gathered_norm_softmax_loss(torch.zeros(2, 4), torch.zeros(3, 4), DistInfo())


# -- gathered over 2 gloo processes ---------------------------------------------------------------

WORLD = 2
LOCAL = 3


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    text = torch.randn(WORLD * LOCAL, 8, generator=g, dtype=torch.float64)
    video = torch.randn(WORLD * LOCAL, 8, generator=g, dtype=torch.float64)
    weights = 0.1 + 0.9 * torch.rand(WORLD * LOCAL, generator=g, dtype=torch.float64)
    return text, video, weights


def _losses_and_grads(text, video, weights, info: DistInfo) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("mir", "nce"):
        t = text.clone().requires_grad_(True)
        v = video.clone().requires_grad_(True)
        if name == "mir":
            loss = gathered_max_margin_loss(t, v, weights, info, MIR_MARGIN)
        else:
            loss = gathered_norm_softmax_loss(t, v, info, NORM_SOFTMAX_TEMPERATURE)
        loss.backward()
        out[f"{name}_loss"] = loss.detach()
        out[f"{name}_grad_text"] = t.grad
        out[f"{name}_grad_video"] = v.grad
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        info = DistInfo(rank=rank, world_size=WORLD, local_rank=rank)
        text, video, weights = _global_batch()
        sl = slice(rank * LOCAL, (rank + 1) * LOCAL)
        result = _losses_and_grads(text[sl], video[sl], weights[sl], info)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gathered_losses_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    text, video, weights = _global_batch()
    one = _losses_and_grads(text, video, weights, DistInfo())
    # The single-process gathered form is the plain loss on the plain similarity.
    plain = adaptive_max_margin_ranking_loss(sim_matrix(text, video), weights, MIR_MARGIN)
    assert one["mir_loss"].item() == plain.item()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        sl = slice(rank * LOCAL, (rank + 1) * LOCAL)
        for name in ("mir", "nce"):
            torch.testing.assert_close(got[f"{name}_loss"], one[f"{name}_loss"], rtol=1e-5, atol=0)
            # Each rank's gradient for its rows is WORLD times the one-process gradient (the
            # all-gather's backward sums the identical per-rank losses); DDP's average undoes it.
            for part in ("text", "video"):
                key = f"{name}_grad_{part}"
                torch.testing.assert_close(got[key] / WORLD, one[key][sl], rtol=1e-5, atol=1e-12)
