"""Synthetic EgoNLQ feature dicts (the layout of the extractor's ``*.pt`` files) with a learnable
answer: the query's tokens encode one of ``classes`` classes; the clip's windows carry that
class's pattern inside the answer span and another class's pattern in a distractor span, plus
noise everywhere. Tiny sizes, for the head's tests."""

from __future__ import annotations

import numpy as np
import torch

from egovlpv2_rt.tasks.episodic.spans import time_to_index

VIDEO_DIM = 16
TEXT_DIM = 8
QUERY_LEN = 6


def _patterns(classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)  # the "world": the same for every split
    video = rng.normal(size=(classes, VIDEO_DIM))
    video *= 1.5 / np.linalg.norm(video, axis=1, keepdims=True) * np.sqrt(VIDEO_DIM) / 2
    text = rng.normal(size=(classes, TEXT_DIM))
    return video, text


def synthetic_feature_dicts(
    n: int,
    seed: int,
    *,
    classes: int = 4,
    max_pos_len: int = 32,
    windows: tuple[int, int] = (20, 48),
    duration: float = 60.0,
) -> list[dict]:
    """``n`` feature dicts; clips of ``windows`` windows (some above ``max_pos_len``, so they
    are pooled at load)."""
    rng = np.random.default_rng(seed)
    vpat, tpat = _patterns(classes)
    out = []
    for i in range(n):
        n_win = int(rng.integers(windows[0], windows[1] + 1))
        c, other = rng.choice(classes, size=2, replace=False)
        length = int(rng.integers(max(2, n_win // 10), max(3, n_win // 4) + 1))
        # Answer and distractor spans in the two halves, in random order.
        half = n_win // 2
        spans = (
            int(rng.integers(0, half - length + 1)),
            int(rng.integers(half, n_win - length + 1)),
        )
        a0, d0 = spans if rng.random() < 0.5 else spans[::-1]
        video = 0.7 * rng.normal(size=(n_win, VIDEO_DIM))
        video[a0 : a0 + length] += vpat[c]
        video[d0 : d0 + length] += vpat[other]
        q_len = int(rng.integers(3, QUERY_LEN + 1))
        text = rng.normal(size=(1, QUERY_LEN, TEXT_DIM))  # padded tokens: noise, masked out
        text[0, :q_len] = tpat[c] + 0.3 * rng.normal(size=(q_len, TEXT_DIM))
        mask = np.zeros((1, QUERY_LEN), dtype=np.int64)
        mask[0, :q_len] = 1
        s_time = a0 * duration / n_win
        e_time = (a0 + length) * duration / n_win
        v_len = min(max_pos_len, n_win)
        s_ind, e_ind = time_to_index(s_time, e_time, v_len, duration)
        out.append(
            {
                "fused_video_features": torch.from_numpy(video.astype(np.float32)),
                "dual_text_features": torch.from_numpy(text.astype(np.float32)),
                "text_token.attention_mask": torch.from_numpy(mask),
                "sample_id": i,
                "vid": f"clip{seed}_{i}",
                "s_time": float(s_time),
                "e_time": float(e_time),
                "duration": float(duration),
                "query": f"where is class {c}?",
                "s_ind": int(s_ind),
                "e_ind": int(e_ind),
                "v_len": int(v_len),
                "annotation_uid": f"ann{seed}_{i}",
                "query_idx": 0,
            }
        )
    return out
