"""Which frames a read decodes: ``plan_clip`` (probe + the sampling rule of sampling.py) and
``frame_indices``, shared by every backend, and the seeding of 'rand' sampling."""

from __future__ import annotations

import os

import numpy as np
import torch

from .probe import probe
from .sampling import (
    ClipPlan,
    EgoClipLayout,
    OutOfRange,
    Sampling,
    Seed,
    ShortPolicy,
    plan_egoclip,
    plan_file,
)

__all__ = ["frame_indices", "plan_clip", "split_seed"]


def split_seed(seed: int | None) -> tuple[np.random.Generator | None, torch.Generator | None]:
    """Independent generators for frame sampling and the train transform from one seed."""
    if seed is None:
        return None, None
    ss = np.random.SeedSequence(int(seed))
    a, b = ss.spawn(2)
    g = torch.Generator()
    g.manual_seed(int(b.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(a), g


def plan_clip(
    path: str | os.PathLike,
    start_sec: float | None = None,
    end_sec: float | None = None,
    num_frames: int = 4,
    sampling: Sampling = "uniform",
    seed: Seed = None,
    *,
    layout: EgoClipLayout | None = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
) -> ClipPlan:
    """The frames a read would decode (see sampling.py for the rule). ``seed``: int, Generator
    or None."""
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if sampling not in ("uniform", "rand"):
        raise ValueError(f"sampling must be 'uniform' or 'rand', got {sampling!r}")
    if layout is None:
        info = probe(path)
        return plan_file(
            info, start_sec, end_sec, int(num_frames), sampling, seed, out_of_range, short
        )
    return plan_egoclip(
        path,
        start_sec,
        end_sec,
        int(num_frames),
        layout,
        lambda k: probe(layout.chunk_path(path, k)).num_frames,
        sampling,
        seed,
        out_of_range,
        short,
    )


def frame_indices(
    path: str | os.PathLike,
    start_sec: float | None = None,
    end_sec: float | None = None,
    num_frames: int = 4,
    sampling: Sampling = "uniform",
    seed: int | None = None,
    *,
    layout: EgoClipLayout | None = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
) -> list[int]:
    """Frame indices ``read_clip`` decodes for the same arguments (any backend).

    Indices count frames in presentation order from 0; in the EgoClip layout they are global
    (chunk ``k`` starts at ``k * 18000``). With ``sampling='rand'`` the same ``seed`` gives the
    same indices here and in ``read_clip``.
    """
    rng, _ = split_seed(seed)
    plan = plan_clip(
        path,
        start_sec,
        end_sec,
        num_frames,
        sampling,
        rng,
        layout=layout,
        out_of_range=out_of_range,
        short=short,
    )
    return [int(i) for i in plan.indices]
