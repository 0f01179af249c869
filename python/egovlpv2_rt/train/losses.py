"""Objectives of EgoVLPv2: EgoNCE, masked language modelling and video-text matching
(pre-training), the adaptive max-margin ranking loss (EK-100 MIR) and the symmetric InfoNCE
``NormSoftmaxLoss`` (Charades-Ego), with their all-gathered forms for multi-process training.

Shapes use ``N`` for the (global) batch, ``B`` for a local batch, ``L`` for tokens, ``V`` for
the vocabulary. Similarity matrices are ``[texts, videos]`` (rows are texts), as the original's
``sim_matrix(text_embeds, video_embeds)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling.model import sim_matrix
from .distributed import DistInfo, all_gather_no_grad, all_gather_with_grad

__all__ = [
    "EGONCE_TEMPERATURE",
    "MIR_MARGIN",
    "NORM_SOFTMAX_TEMPERATURE",
    "LossWeights",
    "VTMPairs",
    "adaptive_max_margin_ranking_loss",
    "combine_losses",
    "egonce_loss",
    "egonce_positive_mask",
    "gathered_max_margin_loss",
    "gathered_norm_softmax_loss",
    "mlm_loss",
    "norm_softmax_loss",
    "object_negative_weights",
    "random_negative_weights",
    "sample_vtm_pairs",
    "vtm_negative_weights",
    "with_object_negatives",
    "with_time_reversal",
]

EGONCE_TEMPERATURE = 0.05
# EK-100 MIR: the original's config sets margin 0.2 (the class default is 0.4).
MIR_MARGIN = 0.2
# Charades-Ego: NormSoftmaxLoss(temperature=0.05).
NORM_SOFTMAX_TEMPERATURE = 0.05


def _check_square(name: str, t: Tensor, n: int | None = None) -> None:
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] matrix, got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(
            f"{name} must be [{n}, {n}] to match the similarity matrix, got {tuple(t.shape)}"
        )


def egonce_positive_mask(mask_v: Tensor | None, mask_n: Tensor | None, n: int) -> Tensor:
    """EgoNCE positives: ``(mask_v * mask_n + I) > 0``.

    Args:
        mask_v: ``[N, N]`` verb overlap (0/1 or any non-negative score), or None (no verb term).
        mask_n: ``[N, N]`` noun overlap, or None.
        n: batch size N.

    Returns:
        ``[N, N]`` bool; ``[i, j]`` True when text ``i`` and video ``j`` count as a positive.
        With both masks None only the diagonal is positive (plain InfoNCE).
    """
    ref = mask_v if mask_v is not None else mask_n
    eye = torch.eye(n, dtype=torch.float64, device=ref.device if ref is not None else None)
    if ref is None:  # neither mask
        return eye > 0
    if mask_v is not None:
        _check_square("mask_v", mask_v, n)
    if mask_n is not None:
        _check_square("mask_n", mask_n, n)
    if mask_v is not None and mask_n is not None:
        m = mask_v.double() * mask_n.double()
    else:
        m = ref.double()  # the one mask given
    return (m + eye) > 0


def egonce_loss(
    sim: Tensor,
    mask_v: Tensor | None = None,
    mask_n: Tensor | None = None,
    temperature: float = EGONCE_TEMPERATURE,
    reversed_sim: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """EgoNCE (the original's loss, both directions, same positive mask in both).

    ::

        loss = -mean_i log sum_j softmax(sim/T)_ij pos_ij
               -mean_i log sum_j softmax(sim^T/T)_ij pos_ij

    The log of the positive softmax mass is computed as a difference of two logsumexps, which is
    the same quantity without the underflow of ``log(sum(softmax * pos))`` at small T.

    With ``reversed_sim`` (time-reversal negatives, not in the original: Bagad et al., "Test of
    Time", CVPR 2023) row i of the text-to-video term has one more negative, text i against its
    own clip played backwards, so a caption whose action has a temporal direction ("picks up" /
    "puts down") is pulled away from the frames in the wrong order. The video-to-text term is
    unchanged.

    Args:
        sim: ``[N, N]`` float text-video similarity, rows are texts.
        mask_v, mask_n: ``[N, N]`` verb / noun overlap masks (see :func:`egonce_positive_mask`).
        temperature: softmax temperature (0.05 in EgoVLPv2).
        reversed_sim: ``[N]`` float similarity of text i and video i with its frames reversed,
            or None; ``-inf`` where text i has no such negative.

    Returns:
        ``(loss, pos)``: scalar loss in ``sim``'s dtype, and the ``[N, N]`` bool positive mask.
    """
    _check_square("sim", sim)
    if not sim.is_floating_point():
        raise TypeError(f"sim must be a floating tensor, got {sim.dtype}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reversed_sim is not None and tuple(reversed_sim.shape) != (sim.shape[0],):
        raise ValueError(
            f"reversed_sim must be [{sim.shape[0]}] (one per text), got {tuple(reversed_sim.shape)}"
        )
    pos = egonce_positive_mask(mask_v, mask_n, sim.shape[0]).to(sim.device)
    logits = sim / temperature
    neg_inf = torch.finfo(sim.dtype).min
    # Row i of the first term: text i over videos; the second term reads sim^T with the same
    # (untransposed) mask, as the original does.
    if reversed_sim is None:
        lse_all_i = torch.logsumexp(logits, dim=1)
    else:
        rev = (reversed_sim.to(sim.dtype) / temperature)[:, None]
        lse_all_i = torch.logsumexp(torch.cat([logits, rev], dim=1), dim=1)
    lse_pos_i = torch.logsumexp(logits.masked_fill(~pos, neg_inf), dim=1)
    logits_t = logits.t()
    lse_all_j = torch.logsumexp(logits_t, dim=1)
    lse_pos_j = torch.logsumexp(logits_t.masked_fill(~pos, neg_inf), dim=1)
    loss = -(lse_pos_i - lse_all_i).mean() - (lse_pos_j - lse_all_j).mean()
    return loss, pos


# --------------------------------------------------------------------------------------------
# Masked language modelling
# --------------------------------------------------------------------------------------------


def mlm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy on the selected tokens.

    Args:
        logits: ``[B, L, V]`` float.
        labels: ``[B, L]`` int64, -100 where not selected.
        reduction: ``"mean"`` over selected tokens (0 with a graph when none is selected) or
            ``"sum"`` (used by the trainer, which divides by the global count across ranks).

    Returns:
        scalar float tensor.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"mlm_loss expects logits [B, L, V] and labels [B, L], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = F.cross_entropy(
        wide.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    if reduction == "sum":
        return flat
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    count = (labels != -100).sum()
    return flat / count.clamp(min=1)


# --------------------------------------------------------------------------------------------
# Video-text matching with hard negatives
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VTMPairs:
    """Pairs fed to the fusion encoder for VTM, indices into the (global) batch.

    Attributes:
        video_index: ``[N]`` int64, which video of the batch each pair uses.
        text_index: ``[N]`` int64, which caption.
        labels: ``[N]`` int64, 1 = matching pair, 0 = hard negative.
        reversed: ``[N]`` bool, the pair's video is played backwards (a time-reversal
            negative, :func:`with_time_reversal`), or None (no pair is).
    """

    video_index: Tensor
    text_index: Tensor
    labels: Tensor
    reversed: Tensor | None = None

    def slice(self, start: int, stop: int) -> VTMPairs:
        """Pairs ``start:stop`` (one rank's share of a global batch)."""
        return VTMPairs(
            self.video_index[start:stop],
            self.text_index[start:stop],
            self.labels[start:stop],
            None if self.reversed is None else self.reversed[start:stop],
        )


def vtm_negative_weights(sim: Tensor, pos: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Hard-negative sampling weights, positives zeroed.

    Args:
        sim: ``[N, N]`` text-video similarity (rows texts).
        pos: ``[N, N]`` bool EgoNCE positives (``pos[t, v]``: caption t matches video v).
        temperature: softmax temperature (EgoNCE's).

    Returns:
        ``(w_video_for_text, w_text_for_video)``, both ``[N, N]`` float64 and unnormalised:
        row i of the first is the distribution over videos for a negative of caption i,
        ``softmax(sim[i, :] / T)`` with ``pos[i, :]`` zeroed; row i of the second is the
        distribution over captions for a negative of video i, ``softmax(sim[:, i] / T)`` with
        ``pos[:, i]`` zeroed.
    """
    _check_square("sim", sim)
    _check_square("pos", pos, sim.shape[0])
    s = sim.detach().double()
    p = pos.to(s.device).bool()
    w_v = torch.softmax(s / temperature, dim=1).masked_fill(p, 0.0)
    w_t = torch.softmax(s.t() / temperature, dim=1).masked_fill(p.t(), 0.0)
    return w_v, w_t


def random_negative_weights(pos: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Uniform negative weights, positives zeroed: ``(w_video_for_text, w_text_for_video)``,
    both ``[N, N]`` float64, 1 where ``pos`` (``[N, N]`` bool, rows texts) is False."""
    _check_square("pos", pos, n)
    p = pos.bool()
    return (~p).double(), (~p.t()).double()


def sample_vtm_pairs(
    sim: Tensor,
    pos: Tensor,
    temperature: float = EGONCE_TEMPERATURE,
    generator: torch.Generator | None = None,
    negatives: str = "hard",
) -> VTMPairs:
    """Draw the VTM batch: half matching pairs, half hard negatives (the original's recipe).

    ``negatives="random"`` (the ablation's "random negatives"): the same draw with the weights
    uniform over every non-positive (:func:`random_negative_weights`) instead of the
    similarity softmax.

    A random half of the N slots (``N // 2`` of them) keep their own (video i, caption i) pair.
    Each remaining slot i flips a fair coin: either caption i with a negative video drawn from
    row i of ``w_video_for_text``, or video i with a negative caption drawn from row i of
    ``w_text_for_video`` (see :func:`vtm_negative_weights`). A positive (the diagonal and every
    EgoNCE positive) has weight 0 and is never drawn; the original adds 1e-9 to the weights, which
    can draw a positive, and we do not. When one direction has no negative left the other is
    used; when neither has one the slot becomes a matching pair (label 1).

    Every rank calls this on the gathered global ``sim`` with an identically seeded generator,
    so the draw does not depend on the number of ranks.

    Args:
        sim: ``[N, N]`` text-video similarity (rows texts), gathered over ranks.
        pos: ``[N, N]`` bool EgoNCE positives.
        temperature: softmax temperature.
        generator: CPU generator; all draws come from it.

    Returns:
        :class:`VTMPairs` on the CPU.
    """
    n = sim.shape[0]
    if negatives == "hard":
        w_v, w_t = vtm_negative_weights(sim.cpu(), pos.cpu(), temperature)
    elif negatives == "random":
        w_v, w_t = random_negative_weights(pos.cpu(), n)
    else:
        raise ValueError(f"negatives must be 'hard' or 'random', got {negatives!r}")
    labels = torch.cat(
        [torch.ones(n // 2, dtype=torch.long), torch.zeros(n - n // 2, dtype=torch.long)]
    )
    labels = labels[torch.randperm(n, generator=generator)]
    coin = torch.rand(n, generator=generator) > 0.5  # True: negative video for caption i
    has_v = w_v.sum(1) > 0
    has_t = w_t.sum(1) > 0
    neg_video = (coin & has_v) | (~has_t & has_v)
    neg_text = ~neg_video & has_t
    video_index = torch.arange(n)
    text_index = torch.arange(n)
    is_neg = labels == 0
    labels = torch.where(is_neg & ~has_v & ~has_t, torch.ones_like(labels), labels)
    rows = torch.where(is_neg & (neg_video | neg_text))[0]
    if rows.numel():
        weights = torch.where(neg_video[rows, None], w_v[rows], w_t[rows])
        # One draw per negative slot, in slot order, from the generator.
        picks = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        nv = neg_video[rows]
        video_index[rows[nv]] = picks[nv]
        text_index[rows[~nv]] = picks[~nv]
    return VTMPairs(video_index, text_index, labels)


def with_time_reversal(
    pairs: VTMPairs,
    generator: torch.Generator,
    reversible: Tensor | None = None,
    share: float = 0.5,
) -> VTMPairs:
    """Turn a random share (half by default) of the negative slots into time-reversal negatives.

    Each negative slot (label 0) flips a coin from ``generator`` that lands heads with chance
    ``share`` (one uniform draw per slot, heads when it is above ``1 - share``, so 0.5 is the
    fair coin of earlier versions, draw for draw); on heads it becomes
    (its caption, the caption's own video played backwards), label 0, unless the caption's clip
    is not ``reversible`` (then the slot keeps its drawn negative). Matching pairs are kept.
    The same draw on every rank (see :func:`sample_vtm_pairs`), whatever ``reversible`` holds.

    Args:
        pairs: the VTM draw (``reversed`` None).
        generator: CPU generator, after the VTM draw.
        reversible: ``[N]`` bool per caption (global batch), or None (all).
        share: chance in ``[0, 1]`` that a negative slot becomes a time reversal.

    Returns:
        :class:`VTMPairs` with ``reversed`` set.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    n = pairs.labels.shape[0]
    heads = torch.rand(n, generator=generator) > 1.0 - share
    rev = heads & (pairs.labels == 0)
    if reversible is not None:
        rev = rev & reversible.to(rev.device)[pairs.text_index]
    video_index = torch.where(rev, pairs.text_index, pairs.video_index)
    return VTMPairs(video_index, pairs.text_index, pairs.labels, rev)


def object_negative_weights(
    sim: Tensor, mask_v: Tensor, mask_n: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Hard-negative weights restricted to the pairs that differ in the object only: clip j is
    an object negative of caption i when they share a verb tag and no noun tag ("picks up the
    red square" against a clip that picks up the blue circle), never i itself.

    Args:
        sim: ``[N, N]`` text-video similarity (rows texts).
        mask_v, mask_n: ``[N, N]`` 0/1 verb / noun tag overlap (symmetric).
        temperature: softmax temperature.

    Returns:
        ``(w_video_for_text, w_text_for_video)`` as :func:`vtm_negative_weights`, both
        ``[N, N]`` float64 and zero outside the object-negative pairs.
    """
    _check_square("sim", sim)
    n = sim.shape[0]
    _check_square("mask_v", mask_v, n)
    _check_square("mask_n", mask_n, n)
    pool = (mask_v.to(sim.device) > 0) & ~(mask_n.to(sim.device) > 0)
    pool &= ~torch.eye(n, dtype=torch.bool, device=sim.device)
    # The plain hard-negative weights with everything outside the pool zeroed like a positive.
    return vtm_negative_weights(sim, ~pool, temperature)


def with_object_negatives(
    pairs: VTMPairs,
    sim: Tensor,
    mask_v: Tensor,
    mask_n: Tensor,
    share: float,
    temperature: float,
    generator: torch.Generator,
) -> VTMPairs:
    """Redraw a share of the VTM negatives among the pairs that differ in the object only.

    The similarity-drawn negatives of a caption are mostly clips of the same object with
    another verb (the dual encoder tells objects apart best), and the time-reversal negatives
    differ in the verb's direction, so VTM rarely has to check which object the hand acts on;
    EgoMCQ's fusion encoder then picks a clip with the query's verb on another object
    (bench/RESULTS.md, QFVS). Each negative slot that is not a time-reversal negative flips a
    biased coin (``share``); on heads its negative is redrawn from
    :func:`object_negative_weights` in the same direction (a video for its caption, or a caption
    for its video), or in the other direction when that one has none; a slot with no object
    negative either way keeps its negative. The same draw on every rank (see
    :func:`sample_vtm_pairs`).

    Args:
        pairs: the VTM draw (after :func:`with_time_reversal`, if used).
        sim: ``[N, N]`` text-video similarity (rows texts), gathered over ranks.
        mask_v, mask_n: ``[N, N]`` verb / noun tag overlap.
        share: chance in ``[0, 1]`` that a slot's negative is redrawn.
        temperature: softmax temperature.
        generator: CPU generator, after the earlier draws.

    Returns:
        :class:`VTMPairs` with the redrawn slots (``reversed`` kept).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    n = pairs.labels.shape[0]
    w_v, w_t = object_negative_weights(sim.cpu(), mask_v.cpu(), mask_n.cpu(), temperature)
    heads = torch.rand(n, generator=generator) < share
    slot = torch.arange(n)
    rev = pairs.reversed if pairs.reversed is not None else torch.zeros(n, dtype=torch.bool)
    redraw = heads & (pairs.labels == 0) & ~rev
    has_v = w_v.sum(1) > 0
    has_t = w_t.sum(1) > 0
    # The slot's direction: its own caption with another video, or its own video with another
    # caption.
    wants_video = pairs.text_index == slot
    neg_video = redraw & ((wants_video & has_v) | (~has_t & has_v))
    neg_text = redraw & ~neg_video & has_t
    video_index = pairs.video_index.clone()
    text_index = pairs.text_index.clone()
    rows = torch.where(neg_video | neg_text)[0]
    if rows.numel():
        weights = torch.where(neg_video[rows, None], w_v[rows], w_t[rows])
        picks = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        nv = neg_video[rows]
        video_index[rows] = torch.where(nv, picks, rows)
        text_index[rows] = torch.where(nv, rows, picks)
    return VTMPairs(video_index, text_index, pairs.labels, pairs.reversed)


# --------------------------------------------------------------------------------------------
# Combination
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three objectives in the total loss.

    ``total = egonce * EgoNCE + mlm * MLM + vtm * VTM``. Use :meth:`paper` for the paper's
    convex form and :meth:`original` for the released code's (1, 1, 2).
    """

    egonce: float = 1.0
    mlm: float = 1.0
    vtm: float = 2.0

    @classmethod
    def paper(cls, gamma: float, delta: float) -> LossWeights:
        """``(1 - gamma - delta) * EgoNCE + gamma * MLM + delta * VTM``."""
        if gamma < 0 or delta < 0 or gamma + delta > 1:
            raise ValueError(
                f"paper loss weights need gamma, delta >= 0 and gamma + delta <= 1, "
                f"got gamma={gamma}, delta={delta}"
            )
        return cls(1.0 - gamma - delta, gamma, delta)

    @classmethod
    def original(cls) -> LossWeights:
        """The released trainer's ``EgoNCE + MLM + 2 * VTM``."""
        return cls(1.0, 1.0, 2.0)


def combine_losses(
    weights: LossWeights, egonce: Tensor | None, mlm: Tensor | None, vtm: Tensor | None
) -> Tensor:
    """Weighted sum of the objectives that are present (a None term must have weight 0)."""
    total = None
    for name, w, term in (
        ("egonce", weights.egonce, egonce),
        ("mlm", weights.mlm, mlm),
        ("vtm", weights.vtm, vtm),
    ):
        if term is None:
            if w != 0:
                raise ValueError(f"loss term {name!r} has weight {w} but was not computed")
            continue
        total = w * term if total is None else total + w * term
    if total is None:
        raise ValueError("no loss term was computed")
    return total


# --------------------------------------------------------------------------------------------
# Downstream retrieval losses (EK-100 MIR, Charades-Ego)
# --------------------------------------------------------------------------------------------


def adaptive_max_margin_ranking_loss(
    sim: Tensor, weights: Tensor, margin: float = MIR_MARGIN
) -> Tensor:
    """The original's ``AdaptiveMaxMarginRankingLoss(margin, fix_norm=True)`` (EK-100 MIR).

    A bidirectional hinge whose margin is scaled per row by the relevancy of the positive pair;
    the diagonal is excluded and every off-diagonal pair is a negative (no relevancy masking,
    as in the original)::

        loss = mean over i != j of  relu(w_i m - (S_ii - S_ij))  and  relu(w_i m - (S_ii - S_ji))

    that is ``2 N (N - 1)`` terms averaged. Both terms of pair ``(i, j)`` use the row's weight
    ``w_i``.

    Args:
        sim: ``[N, N]`` float, ``N >= 2``: ``S = cos(text, video)``, rows are texts, columns
            videos (``sim_matrix(text_embeds, video_embeds)``).
        weights: ``[N]`` relevancy of each row's positive pair (1 for a clip's own narration).
        margin: the base margin ``m`` (0.2 for EK-100).

    Returns:
        scalar in ``sim``'s dtype.
    """
    _check_square("sim", sim)
    if not sim.is_floating_point():
        raise TypeError(f"sim must be a floating tensor, got {sim.dtype}")
    n = sim.shape[0]
    if n < 2:
        raise ValueError(f"the max-margin loss needs N >= 2 pairs (no negatives), got N = {n}")
    if weights.shape != (n,):
        raise ValueError(f"weights must be [{n}] (one per row of sim), got {tuple(weights.shape)}")
    if not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin}")
    w = weights.to(device=sim.device, dtype=sim.dtype).detach()[:, None]
    diag = sim.diagonal()[:, None]
    off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    to_videos = F.relu(w * margin - (diag - sim))  # [i, j]: S_ij, text i against video j
    to_texts = F.relu(w * margin - (diag - sim.t()))  # [i, j]: S_ji, video i against text j
    return (to_videos[off].sum() + to_texts[off].sum()) / (2 * n * (n - 1))


def norm_softmax_loss(sim: Tensor, temperature: float = NORM_SOFTMAX_TEMPERATURE) -> Tensor:
    """The original's ``NormSoftmaxLoss`` (Charades-Ego): symmetric InfoNCE on ``sim``::

        loss = -mean_i log softmax(S / T)_ii - mean_j log softmax(S^T / T)_jj

    Other pairs of one batch are negatives even when they share a class, as in the original.

    Args:
        sim: ``[N, N]`` float cosine similarities, rows texts, columns videos.
        temperature: ``T`` (0.05).

    Returns:
        scalar in ``sim``'s dtype.
    """
    _check_square("sim", sim)
    if not sim.is_floating_point():
        raise TypeError(f"sim must be a floating tensor, got {sim.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = sim / temperature
    i_diag = F.log_softmax(logits, dim=1).diagonal()
    j_diag = F.log_softmax(logits.t(), dim=1).diagonal()
    return -i_diag.mean() - j_diag.mean()


def _gathered_sim(text_embeds: Tensor, video_embeds: Tensor, info: DistInfo) -> Tensor:
    """``sim_matrix`` of the all-gathered embeddings ``[world * B, P]`` each, in float32 or
    wider even under autocast (at temperature 0.05 bf16 logits lose their resolution)."""
    if text_embeds.dim() != 2 or text_embeds.shape != video_embeds.shape:
        raise ValueError(
            "text_embeds and video_embeds must both be [B, P], got "
            f"{tuple(text_embeds.shape)} and {tuple(video_embeds.shape)}"
        )
    t_all = all_gather_with_grad(text_embeds, info)
    v_all = all_gather_with_grad(video_embeds, info)
    acc = torch.promote_types(t_all.dtype, torch.float32)
    with torch.autocast(device_type=t_all.device.type, enabled=False):
        return sim_matrix(t_all.to(acc), v_all.to(acc))


def gathered_max_margin_loss(
    text_embeds: Tensor,
    video_embeds: Tensor,
    weights: Tensor,
    info: DistInfo,
    margin: float = MIR_MARGIN,
) -> Tensor:
    """:func:`adaptive_max_margin_ranking_loss` over the batch gathered across ranks, as the
    original trains EK-100 MIR (``N = world * B``).

    Args:
        text_embeds, video_embeds: ``[B, P]`` this rank's embeddings (pair ``b`` is row ``b``);
            every rank passes the same ``B``.
        weights: ``[B]`` this rank's relevancies, gathered without gradient.
        info: the process group (a single process: no gathering).

    Returns:
        the global loss, identical on every rank. Its gradient for this rank's rows is
        ``world_size`` times that of the same loss computed in one process on the global batch
        (the all-gather's backward sums the identical per-rank losses); DDP's gradient average
        turns it back into the one-process gradient.
    """
    sim = _gathered_sim(text_embeds, video_embeds, info)
    w_all = all_gather_no_grad(weights.to(sim.device), info)
    with torch.autocast(device_type=sim.device.type, enabled=False):
        return adaptive_max_margin_ranking_loss(sim, w_all, margin)


def gathered_norm_softmax_loss(
    text_embeds: Tensor,
    video_embeds: Tensor,
    info: DistInfo,
    temperature: float = NORM_SOFTMAX_TEMPERATURE,
) -> Tensor:
    """:func:`norm_softmax_loss` over the batch gathered across ranks (Charades-Ego); shapes
    and gradient scale as :func:`gathered_max_margin_loss`."""
    sim = _gathered_sim(text_embeds, video_embeds, info)
    with torch.autocast(device_type=sim.device.type, enabled=False):
        return norm_softmax_loss(sim, temperature)
