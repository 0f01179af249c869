"""Latency of the runtime's public calls on synthetic inputs (``egovlpv2 bench``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .api import Runtime

__all__ = ["benchmark"]


def _time(
    fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]
) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1e3
    return {
        "median_ms": float(np.median(arr)),
        "min_ms": float(arr.min()),
        "p90_ms": float(np.percentile(arr, 90)),
        "repeats": repeats,
    }


def benchmark(
    rt: Runtime,
    *,
    cases: Sequence[str] = ("text_b1", "video_b1", "video_b8"),
    repeats: int = 10,
    warmup: int = 2,
    text_length: int = 16,
) -> list[dict[str, Any]]:
    """Latency of the public calls on synthetic inputs (decoding excluded: pixels are given
    as tensors; the text cache is bypassed). ``cases``: ``text_bN``, ``video_bN``,
    ``score_bN`` (fusion, pairwise). Returns one row per case."""
    p = rt.preprocessing
    gen = torch.Generator().manual_seed(0)
    words = ["the", "red", "square", "moves", "left", "picks", "up", "blue", "circle", "C"]
    sync = (
        (lambda: torch.cuda.synchronize(rt.device)) if rt.device.type == "cuda" else (lambda: None)
    )
    rows = []
    for case in cases:
        kind, _, b = case.partition("_b")
        if kind not in ("text", "video", "score") or not b.isdigit():
            raise ValueError(f"benchmark case {case!r}: expected text_bN, video_bN or score_bN")
        n = int(b)
        video = torch.randn(
            n, p.num_frames, rt.config.video.in_chans, p.size, p.size, generator=gen
        )
        texts = [
            " ".join(words[(i + k) % len(words)] for k in range(max(2, text_length - 2)))
            for i in range(n)
        ]
        fn: Callable[[], object]
        if kind == "text":
            fn = functools.partial(rt.encode_text, texts, cache=False)
        elif kind == "video":
            fn = functools.partial(rt.encode_video, video)
        else:
            fn = functools.partial(rt.score, video, texts)
        row: dict[str, Any] = {
            "case": case,
            "backend": rt.backend,
            "device": str(rt.device),
            "precision": rt.precision,
        }
        row.update(_time(fn, repeats, warmup, sync))
        rows.append(row)
    return rows
