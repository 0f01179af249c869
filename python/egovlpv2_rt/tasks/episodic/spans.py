"""Seconds <-> feature-index spans on a uniform grid, as the Ego4D VSLNet baseline defines them.

A clip of ``duration`` seconds cut into ``num_units`` equal cells: cell ``i`` covers
``[i, i + 1) * duration / num_units``. The grid edges are computed in float32 (as the
original's ``np.arange(...).astype(np.float32)``), the overlaps in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["index_to_time", "temporal_iou", "time_to_index"]


def temporal_iou(spans: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """IoU of each row of ``spans`` [N, 2] (start, end) with one ``span``; float64 [N].

    Intersections below 0 count as 0 and unions are clamped to 1e-12, as the original's
    ``compute_overlap``.
    """
    s = np.asarray(spans, dtype=np.float64).reshape(-1, 2)
    g0, g1 = float(span[0]), float(span[1])
    inter = np.maximum(0.0, np.minimum(s[:, 1], g1) - np.maximum(s[:, 0], g0))
    union = np.maximum(1e-12, np.maximum(s[:, 1], g1) - np.minimum(s[:, 0], g0))
    return inter / union


def _edges(num_units: int, duration: float) -> tuple[np.ndarray, np.ndarray]:
    if num_units < 1 or not duration > 0:
        raise ValueError(f"num_units must be >= 1 and duration > 0, got {num_units}, {duration}")
    starts = np.arange(0, num_units).astype(np.float32) / float(num_units) * duration
    ends = np.arange(1, num_units + 1).astype(np.float32) / float(num_units) * duration
    return starts, ends


def time_to_index(
    start_time: float, end_time: float, num_units: int, duration: float
) -> tuple[int, int]:
    """The (start cell, end cell) pair whose span has the best IoU with ``[start_time,
    end_time]`` (seconds); the first maximum in row-major (start, end) order wins, pairs with
    end < start included, as in the original."""
    starts, ends = _edges(num_units, duration)
    cand = np.stack(
        [
            np.repeat(starts[:, None], num_units, axis=1),
            np.repeat(ends[None, :], num_units, axis=0),
        ],
        axis=2,
    ).reshape(-1, 2)
    best = int(np.argmax(temporal_iou(cand.astype(np.float64), (start_time, end_time))))
    return best // num_units, best % num_units


def index_to_time(
    start_index: int, end_index: int, num_units: int, duration: float
) -> tuple[float, float]:
    """Seconds (start of cell ``start_index``, end of cell ``end_index``)."""
    starts, ends = _edges(num_units, duration)
    for name, i in (("start_index", start_index), ("end_index", end_index)):
        if not 0 <= i < num_units:
            raise ValueError(f"{name} must be in [0, {num_units}), got {i}")
    return float(starts[start_index]), float(ends[end_index])
