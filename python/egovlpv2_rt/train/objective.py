"""One pre-training step's losses: EgoNCE on the dual towers, MLM and VTM on the fusion encoder.

The objective is an ``nn.Module`` whose ``forward`` runs every model call of the step, so that
a single ``DistributedDataParallel`` wrapper sees all of them.

World-size independence: captions, tags and MLM masks are built for the whole global batch on
every rank (they are cheap), the VTM pairs are drawn on the gathered similarity matrix with a
generator seeded by the step, and each rank only runs the model on its own slice. The losses
are global means; each rank's backward surrogate is scaled so that DDP's gradient average
equals the gradient of the global loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.model import EgoVLPv2, sim_matrix
from .distributed import DistInfo, all_gather_no_grad, all_gather_with_grad, all_reduce_sum
from .losses import (
    LossWeights,
    egonce_loss,
    mlm_loss,
    sample_vtm_pairs,
    with_object_negatives,
    with_time_reversal,
)

__all__ = ["GlobalBatch", "PretrainObjective", "StepLosses"]


@dataclass
class GlobalBatch:
    """Inputs of one step. ``G`` = global batch, ``B`` = this rank's share (``G / world``),
    this rank's rows are ``offset:offset + B``.

    Attributes:
        video: ``[B, F, 3, H, W]`` float, this rank's clips.
        input_ids, attention_mask: ``[G, L]`` int64, every caption of the global batch.
        mlm_ids, mlm_labels: ``[G, L]`` int64 masked captions and MLM labels (-100 elsewhere).
        mask_v, mask_n: ``[G, G]`` float 0/1 verb / noun overlap (None to disable a term).
        offset: index of this rank's first row in the global batch.
        step: global step (seeds the VTM draw).
    """

    video: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    mlm_ids: Tensor
    mlm_labels: Tensor
    mask_v: Tensor | None
    mask_n: Tensor | None
    offset: int
    step: int


@dataclass
class StepLosses:
    """``total`` drives the backward pass (per-rank surrogate); the others are the global
    values for logging (detached)."""

    total: Tensor
    loss: Tensor
    egonce: Tensor | None
    mlm: Tensor | None
    vtm: Tensor | None
    vtm_accuracy: Tensor | None


def reversible_clips(mask_v: Tensor | None, n: int) -> Tensor | None:
    """``[N]`` bool on ``mask_v``'s device: the clips whose caption has a verb (``mask_v``'s
    diagonal), or None when every clip counts (no verb mask). A clip without a verb tag (e.g.
    a still "There is a red square" clip) shows nothing happening: played backwards it is the
    same clip, so it gets no time-reversal negative, which would be a copy of its positive."""
    if mask_v is None:
        return None
    if tuple(mask_v.shape) != (n, n):
        raise ValueError(f"mask_v must be [{n}, {n}], got {tuple(mask_v.shape)}")
    return mask_v.diagonal() > 0


class PretrainObjective(nn.Module):
    """EgoNCE + MLM + VTM on one model.

    Args:
        model: the EgoVLPv2 model.
        weights: loss weights; a zero weight skips its term entirely.
        temperature: EgoNCE (and VTM hard-negative) temperature.
        info: rank facts.
        seed: base seed of the VTM draws.
        mlm_start_step, vtm_start_step: steps before these have the MLM / VTM weight 0.
        mlm_stop_step: steps from this one on have the MLM weight 0 (0: MLM never stops).
        vtm_negatives: ``hard`` (drawn by similarity) or ``random`` (uniform over the
            non-positives) VTM negatives.
        time_reversal: each caption's clip played backwards is an extra EgoNCE negative of
            that caption, and ``time_reversal_share`` of the VTM negatives (half by default)
            are such clips (see ``LossSection.time_reversal``).
        object_negatives: share of the other VTM negatives redrawn among the pairs that
            differ in the object only (:func:`~egovlpv2_rt.train.losses.with_object_negatives`;
            needs the verb and noun masks).
    """

    def __init__(
        self,
        model: EgoVLPv2,
        weights: LossWeights,
        temperature: float,
        info: DistInfo,
        seed: int,
        mlm_start_step: int = 0,
        vtm_start_step: int = 0,
        mlm_stop_step: int = 0,
        vtm_negatives: str = "hard",
        time_reversal: bool = False,
        object_negatives: float = 0.0,
        time_reversal_share: float = 0.5,
    ) -> None:
        super().__init__()
        if vtm_negatives not in ("hard", "random"):
            raise ValueError(f"vtm_negatives must be 'hard' or 'random', got {vtm_negatives!r}")
        if not 0.0 <= object_negatives <= 1.0:
            raise ValueError(f"object_negatives must be in [0, 1], got {object_negatives}")
        self.object_negatives = object_negatives
        if not 0.0 <= time_reversal_share <= 1.0:
            raise ValueError(f"time_reversal_share must be in [0, 1], got {time_reversal_share}")
        self.time_reversal_share = time_reversal_share
        self.vtm_negatives = vtm_negatives
        self.time_reversal = time_reversal
        self.model = model
        self.weights = weights
        self.temperature = temperature
        self.info = info
        self.seed = seed
        self.mlm_start_step = mlm_start_step
        self.vtm_start_step = vtm_start_step
        self.mlm_stop_step = mlm_stop_step

    @property
    def every_term_every_step(self) -> bool:
        """All three terms (so every parameter) take part in every step; when not, DDP must
        look for parameters without a gradient (``find_unused_parameters``)."""
        w = self.weights
        return (
            w.egonce != 0
            and w.mlm != 0
            and w.vtm != 0
            and self.mlm_start_step == 0
            and self.vtm_start_step == 0
            and self.mlm_stop_step == 0
        )

    def weights_at(self, step: int) -> LossWeights:
        """The loss weights of global step ``step`` (0-based)."""
        w = self.weights
        mlm_on = step >= self.mlm_start_step and (
            self.mlm_stop_step == 0 or step < self.mlm_stop_step
        )
        mlm = w.mlm if mlm_on else 0.0
        vtm = w.vtm if step >= self.vtm_start_step else 0.0
        if w.egonce == 0 and mlm == 0 and vtm == 0:
            raise ValueError(
                f"step {step} has no loss: the EgoNCE weight is 0, the step is "
                f"outside MLM's steps (loss.mlm_start_step {self.mlm_start_step}, "
                f"loss.mlm_stop_step {self.mlm_stop_step}) and before "
                f"loss.vtm_start_step ({self.vtm_start_step})"
            )
        return LossWeights(w.egonce, mlm, vtm)

    def forward(self, batch: GlobalBatch) -> StepLosses:
        info, w = self.info, self.weights_at(batch.step)
        b = batch.video.shape[0]
        g = batch.input_ids.shape[0]
        if b * info.world_size != g:
            raise ValueError(
                f"local video batch {b} x world {info.world_size} != global caption batch {g}"
            )
        sl = slice(batch.offset, batch.offset + b)
        ids, am = batch.input_ids, batch.attention_mask
        scale = float(info.world_size)  # undoes DDP's gradient average for per-rank sums

        need_sim = w.egonce != 0 or w.vtm != 0
        # Decided once per step for EgoNCE and VTM alike (the VTM draw moves it to the CPU).
        directed = reversible_clips(batch.mask_v, g) if self.time_reversal else None
        egonce = sim = pos = None
        total: Tensor | None = None
        if need_sim:
            reverse = self.time_reversal and w.egonce != 0
            video = batch.video
            if reverse:  # one tower pass for the clips and their reversals
                video = torch.cat([video, video.flip(1)])
            v_emb = self.model.encode_video(video)
            r_all = None
            if reverse:
                v_emb, r_emb = v_emb[:b], v_emb[b:]
                r_all = all_gather_with_grad(r_emb, info)
            t_emb = self.model.encode_text(ids[sl], am[sl])
            if w.egonce == 0:  # the similarities only steer the VTM draw
                v_emb, t_emb = v_emb.detach(), t_emb.detach()
            v_all = all_gather_with_grad(v_emb, info)
            t_all = all_gather_with_grad(t_emb, info)
            # The similarity and EgoNCE stay in float32 or wider, even under bf16 autocast:
            # at temperature 0.05 bf16 logits would lose most of their resolution.
            acc = torch.promote_types(v_all.dtype, torch.float32)
            with torch.autocast(device_type=v_all.device.type, enabled=False):
                sim = sim_matrix(t_all.to(acc), v_all.to(acc))
                rev_sim = None
                if r_all is not None:
                    rev_sim = sim_matrix(t_all.to(acc), r_all.to(acc)).diagonal()
                    if directed is not None:
                        rev_sim = rev_sim.masked_fill(~directed.to(rev_sim.device), float("-inf"))
                egonce, pos = egonce_loss(
                    sim, batch.mask_v, batch.mask_n, self.temperature, reversed_sim=rev_sim
                )
            if w.egonce != 0:
                total = w.egonce * egonce

        mlm_value = None
        if w.mlm != 0:
            count = int((batch.mlm_labels != -100).sum())
            logits = self.model.mlm_logits(batch.video, batch.mlm_ids[sl], am[sl])
            local_sum = mlm_loss(logits, batch.mlm_labels[sl], reduction="sum")
            term = local_sum * (scale / max(count, 1))
            total = w.mlm * term if total is None else total + w.mlm * term
            mlm_value = all_reduce_sum(local_sum, info) / max(count, 1)

        vtm_value = vtm_acc = None
        if w.vtm != 0:
            assert sim is not None and pos is not None  # need_sim
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + batch.step)
            pairs = sample_vtm_pairs(
                sim.detach(), pos, self.temperature, gen, negatives=self.vtm_negatives
            )
            if self.time_reversal:
                pairs = with_time_reversal(pairs, gen, directed, self.time_reversal_share)
            if self.object_negatives > 0:
                if batch.mask_v is None or batch.mask_n is None:
                    raise ValueError(
                        "object negatives need the verb and noun tag masks "
                        "(loss.use_verb and loss.use_noun with contrastive 'egonce')"
                    )
                pairs = with_object_negatives(
                    pairs,
                    sim.detach(),
                    batch.mask_v,
                    batch.mask_n,
                    self.object_negatives,
                    self.temperature,
                    gen,
                )
            pairs = pairs.slice(batch.offset, batch.offset + b)
            all_video = all_gather_no_grad(batch.video, info)
            dev = batch.video.device
            v_idx = pairs.video_index.to(dev)
            t_idx = pairs.text_index.to(dev)
            labels = pairs.labels.to(dev)
            pair_video = all_video[v_idx]
            if pairs.reversed is not None:
                flip = pairs.reversed.to(dev)[:, None, None, None, None]
                pair_video = torch.where(flip, pair_video.flip(1), pair_video)
            logits = self.model.vtm_logits(pair_video, ids[t_idx], am[t_idx])
            local_sum = F.cross_entropy(
                logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="sum"
            )
            term = local_sum * (scale / g)
            total = w.vtm * term if total is None else total + w.vtm * term
            vtm_value = all_reduce_sum(local_sum, info) / g
            correct = (logits.argmax(-1) == labels).sum().double()
            vtm_acc = all_reduce_sum(correct, info) / g

        if total is None:
            raise ValueError("every loss weight is zero")
        loss = torch.zeros((), dtype=torch.float64)
        for wt, val in ((w.egonce, egonce), (w.mlm, mlm_value), (w.vtm, vtm_value)):
            if wt != 0:
                assert val is not None  # computed whenever its weight is not 0
                loss = loss + wt * val.detach().double().cpu()
        return StepLosses(
            total,
            loss,
            egonce.detach() if egonce is not None else None,
            mlm_value,
            vtm_value,
            vtm_acc,
        )
