"""EgoNLQ feature files -> validated samples and padded training batches.

One file per query, ``*.pt``, a dict (the original's ``feat_{idx}.pt`` layout, also what
``egovlpv2 features --task nlq`` writes):

- ``fused_video_features`` ``[N_win, Dv]`` float32: the query-conditioned fused video CLS of
  every window of the clip;
- ``dual_text_features`` ``[1, L, Dt]`` float32: the query's unfused RoBERTa token states;
- ``text_token.attention_mask`` ``[1, L]`` integer 0/1 (also accepted nested, as the original
  writes it: ``text_token = {"attention_mask": ...}``);
- ``sample_id`` int, ``vid`` str (clip_uid), ``s_time``, ``e_time``, ``duration`` float
  seconds, ``query`` str, ``s_ind``, ``e_ind``, ``v_len`` int, ``annotation_uid`` str,
  ``query_idx`` int (Python numbers or 0-d tensors, as the original's data loader leaves them).

Files are read with ``torch.load(weights_only=True)`` only; anything else in the pickle is
refused with :class:`~egovlpv2_rt.errors.UnsafeFileError`. At load, the video features are
average-pooled to at most ``max_pos_len`` positions (:func:`visual_feature_sampling`), and
``v_len`` must equal the pooled length, ``min(max_pos_len, N_win)``.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError, UnsafeFileError

__all__ = [
    "NLQBatch",
    "NLQSample",
    "collate_nlq",
    "highlight_labels",
    "load_nlq_feature_file",
    "load_nlq_features",
    "parse_nlq_feature_dict",
    "visual_feature_sampling",
]

HIGHLIGHT_EXTEND = 0.1


@dataclass
class NLQSample:
    """One query of one clip, features pooled and checked.

    ``video`` ``[v_len, Dv]`` float32; ``text`` ``[L, Dt]`` float32; ``text_mask`` ``[L]`` int64.
    ``s_ind``/``e_ind`` are the label cells on the ``v_len``-cell grid over ``duration``.
    """

    video: Tensor
    text: Tensor
    text_mask: Tensor
    sample_id: int
    vid: str
    s_time: float
    e_time: float
    duration: float
    query: str
    s_ind: int
    e_ind: int
    v_len: int
    annotation_uid: str
    query_idx: int
    source: str = ""


def visual_feature_sampling(features: Tensor, max_num_clips: int) -> Tensor:
    """Average-pool ``[N, D]`` window features to ``max_num_clips`` rows when ``N`` exceeds it
    (else return them unchanged), as the original's ``visual_feature_sampling``.

    Row ``i`` averages rows ``[b_i, b_{i+1})`` with ``b = round(arange(M + 1) / M * N)`` (numpy's
    half-to-even rounding, clamped to ``N - 1``); an empty range takes row ``b_i``. Means are
    summed in float64 and returned in the input's dtype.
    """
    n = features.shape[0]
    if n <= max_num_clips:
        return features
    bounds = np.round(np.arange(0, max_num_clips + 1, 1.0) / max_num_clips * n).astype(np.int64)
    bounds[bounds > n - 1] = n - 1
    s = torch.from_numpy(bounds[:-1])
    e = torch.from_numpy(bounds[1:])
    x = features.to(torch.float64)
    csum = torch.cat([x.new_zeros(1, x.shape[1]), x.cumsum(0)])
    count = (e - s).clamp(min=1).to(torch.float64)[:, None]
    means = (csum[e] - csum[s]) / count
    pooled = torch.where((s < e)[:, None], means, x[s])
    return pooled.to(features.dtype)


def highlight_labels(s_ind: int, e_ind: int, length: int, extend: float = HIGHLIGHT_EXTEND):
    """0/1 int64 ``[length]``: the label span ``[s_ind, e_ind]`` widened on each side by
    ``round(extend * (e_ind - s_ind + 1))`` cells (Python's half-to-even ``round``), clipped to
    the sample, as the original's ``train_collate_fn``."""
    out = torch.zeros(length, dtype=torch.int64)
    ext = round(extend * float(e_ind - s_ind + 1))
    if ext > 0:
        out[max(0, s_ind - ext) : min(e_ind + ext, length - 1) + 1] = 1
    else:
        out[s_ind : e_ind + 1] = 1
    return out


@dataclass
class NLQBatch:
    """Padded batch. ``video`` ``[B, T, Dv]``, ``v_mask`` ``[B, T]`` float 0/1, ``text``
    ``[B, L, Dt]``, ``q_mask`` ``[B, L]`` float 0/1, ``s_ind``/``e_ind`` ``[B]`` int64,
    ``highlight`` ``[B, T]`` int64."""

    video: Tensor
    v_mask: Tensor
    text: Tensor
    q_mask: Tensor
    s_ind: Tensor
    e_ind: Tensor
    highlight: Tensor

    def to(self, device: torch.device) -> NLQBatch:
        return NLQBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate_nlq(samples: list[NLQSample]) -> NLQBatch:
    """Zero-pad videos and queries to the longest in the batch; build the masks and labels."""
    b = len(samples)
    t = max(s.video.shape[0] for s in samples)
    lq = max(s.text.shape[0] for s in samples)
    video = torch.zeros(b, t, samples[0].video.shape[1])
    v_mask = torch.zeros(b, t)
    text = torch.zeros(b, lq, samples[0].text.shape[1])
    q_mask = torch.zeros(b, lq)
    hl = torch.zeros(b, t, dtype=torch.int64)
    for i, s in enumerate(samples):
        n, m = s.video.shape[0], s.text.shape[0]
        video[i, :n] = s.video
        v_mask[i, :n] = 1.0
        text[i, :m] = s.text
        q_mask[i, :m] = s.text_mask.to(q_mask.dtype)
        hl[i, :n] = highlight_labels(s.s_ind, s.e_ind, n)
    s_ind = torch.tensor([s.s_ind for s in samples], dtype=torch.int64)
    e_ind = torch.tensor([s.e_ind for s in samples], dtype=torch.int64)
    return NLQBatch(video, v_mask, text, q_mask, s_ind, e_ind, hl)


# -- reading and checking one file -----------------------------------------------------------------

_INT_FIELDS = ("sample_id", "s_ind", "e_ind", "v_len", "query_idx")
_FLOAT_FIELDS = ("s_time", "e_time", "duration")
_STR_FIELDS = ("vid", "query", "annotation_uid")


def _scalar(d: dict, key: str, where: str, kind: type) -> float:
    if key not in d:
        raise InputError(f"{where}: missing key {key!r}")
    v = d[key]
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise InputError(
                f"{where}: {key!r} must be a single number, got a tensor {tuple(v.shape)}"
            )
        if kind is int and (v.dtype.is_floating_point or v.dtype == torch.bool):
            raise InputError(f"{where}: {key!r} must be an integer, got a {v.dtype} tensor")
        if v.dtype == torch.bool or v.dtype.is_complex:
            raise InputError(f"{where}: {key!r} must be a number, got a {v.dtype} tensor")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{where}: {key!r} must be a number, got {type(v).__name__} {v!r}")
    if kind is int:
        if isinstance(v, (float, np.floating)) and not float(v).is_integer():
            raise InputError(f"{where}: {key!r} must be an integer, got {v!r}")
        return int(v)
    if not math.isfinite(float(v)):
        raise InputError(f"{where}: {key!r} must be finite, got {v!r}")
    return float(v)


def _string(d: dict, key: str, where: str) -> str:
    if key not in d:
        raise InputError(f"{where}: missing key {key!r}")
    v = d[key]
    if not isinstance(v, str):
        raise InputError(f"{where}: {key!r} must be a string, got {type(v).__name__}")
    return v


def _tensor(d: dict, key: str, where: str, ndim: int, floating: bool) -> Tensor:
    if key not in d:
        raise InputError(f"{where}: missing key {key!r}")
    v = d[key]
    if not isinstance(v, Tensor):
        raise InputError(f"{where}: {key!r} must be a tensor, got {type(v).__name__}")
    if v.ndim != ndim:
        raise InputError(
            f"{where}: {key!r} must have {ndim} dimensions, got shape {tuple(v.shape)}"
        )
    if floating:
        if v.dtype != torch.float32:
            raise InputError(f"{where}: {key!r} must be float32, got {v.dtype}")
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"{where}: {key!r} contains NaN or infinite values")
    elif v.dtype.is_floating_point or v.dtype.is_complex:
        raise InputError(f"{where}: {key!r} must be an integer or bool tensor, got {v.dtype}")
    return v


def _attention_mask(d: dict, where: str) -> Tensor:
    flat = "text_token.attention_mask"
    if flat in d:
        return _tensor(d, flat, where, 2, floating=False)
    nested = d.get("text_token")
    if isinstance(nested, dict) and "attention_mask" in nested:
        return _tensor(nested, "attention_mask", f"{where}: 'text_token'", 2, floating=False)
    raise InputError(f"{where}: missing key {flat!r} (or 'text_token' with 'attention_mask')")


def parse_nlq_feature_dict(d: object, where: str, max_pos_len: int = 256) -> NLQSample:
    """Check one loaded feature dict (``where`` names it in errors) and pool its video."""
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected a dict of features, got {type(d).__name__}")
    video = _tensor(d, "fused_video_features", where, 2, floating=True)
    text = _tensor(d, "dual_text_features", where, 3, floating=True)
    mask = _attention_mask(d, where)
    n_win, lq = video.shape[0], text.shape[1]
    if n_win < 1 or video.shape[1] < 1:
        raise InputError(f"{where}: 'fused_video_features' is empty, shape {tuple(video.shape)}")
    if text.shape[0] != 1 or lq < 1 or text.shape[2] < 1:
        raise InputError(
            f"{where}: 'dual_text_features' must be [1, L, Dt] with L, Dt >= 1, got "
            f"{tuple(text.shape)}"
        )
    if tuple(mask.shape) != (1, lq):
        raise InputError(
            f"{where}: the attention mask must be [1, {lq}] like the text features, got "
            f"{tuple(mask.shape)}"
        )
    if lq > max_pos_len:
        raise InputError(f"{where}: query length {lq} exceeds max_pos_len {max_pos_len}")
    m = mask[0].to(torch.int64)
    if not bool(((m == 0) | (m == 1)).all()) or int(m.sum()) < 1:
        raise InputError(f"{where}: the attention mask must be 0/1 with at least one 1")
    ints = {k: int(_scalar(d, k, where, int)) for k in _INT_FIELDS}
    floats = {k: _scalar(d, k, where, float) for k in _FLOAT_FIELDS}
    strs = {k: _string(d, k, where) for k in _STR_FIELDS}
    f: dict[str, float] = {**ints, **floats}
    if not f["duration"] > 0:
        raise InputError(f"{where}: 'duration' must be > 0 seconds, got {f['duration']}")
    if f["e_time"] < f["s_time"]:
        raise InputError(f"{where}: 'e_time' {f['e_time']} is before 's_time' {f['s_time']}")
    expected = min(max_pos_len, n_win)
    if f["v_len"] != expected:
        raise InputError(
            f"{where}: 'v_len' is {f['v_len']} but min(max_pos_len={max_pos_len}, "
            f"N_win={n_win}) = {expected} (written for another max_pos_len?)"
        )
    if not 0 <= f["s_ind"] <= f["e_ind"] < f["v_len"]:
        raise InputError(
            f"{where}: 's_ind' {f['s_ind']} and 'e_ind' {f['e_ind']} must satisfy "
            f"0 <= s_ind <= e_ind < v_len = {f['v_len']}"
        )
    pooled = visual_feature_sampling(video, max_pos_len).contiguous()
    return NLQSample(
        video=pooled,
        text=text[0].contiguous(),
        text_mask=m.contiguous(),
        sample_id=ints["sample_id"],
        vid=strs["vid"],
        s_time=floats["s_time"],
        e_time=floats["e_time"],
        duration=floats["duration"],
        query=strs["query"],
        s_ind=ints["s_ind"],
        e_ind=ints["e_ind"],
        v_len=ints["v_len"],
        annotation_uid=strs["annotation_uid"],
        query_idx=ints["query_idx"],
        source=where,
    )


def load_nlq_feature_file(path: str | Path, max_pos_len: int = 256) -> NLQSample:
    """Read one ``*.pt`` feature file safely and check it."""
    path = Path(path)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
        if unsafe:
            raise UnsafeFileError(
                f"{path}: refused, reading it would run code from the file "
                f"({unsafe[0].split(' was not')[0]}); an NLQ feature file holds only tensors, "
                "numbers and strings and is read with torch.load(weights_only=True)"
            ) from None
        raise InputError(f"{path}: not a readable torch feature file (corrupt pickle)") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a non-torch file
        raise InputError(
            f"{path}: not a readable torch feature file ({type(exc).__name__}: {exc})"
        ) from None
    return parse_nlq_feature_dict(d, str(path), max_pos_len)


def load_nlq_features(folder: str | Path, max_pos_len: int = 256) -> list[NLQSample]:
    """Every ``*.pt`` in ``folder``, sorted by file name, as checked :class:`NLQSample` s.

    All files must share the video and text feature sizes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: NLQ feature folder does not exist")
    files = sorted(folder.glob("*.pt"), key=lambda p: p.name)
    if not files:
        raise InputError(f"{folder}: no *.pt NLQ feature files")
    samples = [load_nlq_feature_file(p, max_pos_len) for p in files]
    dv, dt = samples[0].video.shape[1], samples[0].text.shape[1]
    for s in samples[1:]:
        if s.video.shape[1] != dv or s.text.shape[1] != dt:
            raise InputError(
                f"{s.source}: feature sizes (video {s.video.shape[1]}, text {s.text.shape[1]}) "
                f"differ from {samples[0].source} (video {dv}, text {dt})"
            )
    return samples
