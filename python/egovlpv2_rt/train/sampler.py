"""Deterministic global-batch sampler, independent of the number of ranks and resumable.

The global batch of step ``s`` is a pure function of (seed, epoch, position in the epoch): the
same whether one process or several consume it, and the same after a restart. Each rank takes
the contiguous slice ``[rank * B, (rank + 1) * B)`` of it.

With scene-aware pairing (the original's ``neg_param``), each anchor is followed by a partner
clip from the same segment of the same video (another clip when the segment has one), so a batch
holds hard same-scene negatives for EgoNCE and VTM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

__all__ = ["GlobalBatchSampler"]


class GlobalBatchSampler:
    """Yields global batches of dataset indices.

    Args:
        num_items: dataset size.
        global_batch_size: G.
        seed: base seed.
        groups: optional group id per item (segment ids); enables pairing, G must be even.
    """

    def __init__(
        self, num_items: int, global_batch_size: int, seed: int, groups: Sequence[str] | None = None
    ) -> None:
        self.pairs = groups is not None
        if self.pairs and global_batch_size % 2:
            raise ValueError(
                f"global_batch_size must be even with pairing, got {global_batch_size}"
            )
        per_step = global_batch_size // 2 if self.pairs else global_batch_size
        if num_items < per_step:
            raise ValueError(
                f"the dataset has {num_items} items, fewer than the {per_step} "
                f"anchors a global batch of {global_batch_size} needs"
            )
        if groups is not None and len(groups) != num_items:
            raise ValueError(f"groups has {len(groups)} entries for {num_items} items")
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.per_step = per_step
        self.steps_per_epoch = num_items // per_step
        self._members: dict[str, list[int]] = defaultdict(list)
        self._groups = list(groups) if groups is not None else None
        if groups is not None:
            for i, gid in enumerate(groups):
                self._members[gid].append(i)
        self._epoch_cache: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        perm = torch.randperm(self.num_items, generator=gen)
        partners = None
        if self._groups is not None:
            u = torch.rand(self.num_items, generator=gen)
            partners = torch.empty(self.num_items, dtype=torch.long)
            for i in range(self.num_items):
                mates = [j for j in self._members[self._groups[i]] if j != i]
                if not mates:
                    mates = [i]
                partners[i] = mates[min(int(u[i] * len(mates)), len(mates) - 1)]
        self._epoch_cache = (epoch, perm, partners)
        return perm, partners

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of a global step."""
        return divmod(step, self.steps_per_epoch)

    def global_indices(self, step: int) -> list[int]:
        """The G dataset indices of global step ``step`` (anchor, partner, anchor, ...)."""
        epoch, k = self.position(step)
        perm, partners = self._epoch(epoch)
        anchors = perm[k * self.per_step : (k + 1) * self.per_step]
        if partners is None:
            return anchors.tolist()
        out: list[int] = []
        for a in anchors.tolist():
            out.extend((a, int(partners[a])))
        return out

    def local_indices(self, step: int, rank: int, world_size: int) -> list[int]:
        """This rank's slice of the global batch."""
        if self.global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"the world size {world_size}"
            )
        b = self.global_batch_size // world_size
        return self.global_indices(step)[rank * b : (rank + 1) * b]

    def state_dict(self) -> dict:
        return {
            "num_items": self.num_items,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "pairs": self.pairs,
        }

    def check_state(self, state: dict) -> None:
        """Raise if a checkpoint's sampler differs from this one (resume would diverge)."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                f"checkpoint sampler differs from the configured one (checkpoint, config): {diff}"
            )
