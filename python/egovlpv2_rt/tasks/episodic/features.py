"""Episodic-memory features of one clip: MQ video features and NLQ query-conditioned fused
features.

- **MQ** (the original's ``test_mq.py``): every 16-frame window through the dual video tower
  and the retrieval projector (``vid_proj``; 4096-d for ``EgoVLPv2.pth``): ``[N_win, P]``.
- **NLQ** (the original's ``EgoNLQ`` ``data_gen``): every 4-frame window fused with the query
  (lower-cased, padded to ``query_max_length`` tokens) through the fusion path; the feature is
  the fused video CLS after the fusion path's final norm, no projection: ``[N_win, D]``. The
  query's own features are the unfused text tower's token states ``[1, L, H]`` and their mask.

The original computes an NLQ feature file with one full backbone pass over the clip per query.
The video blocks before fusion and the text layers before fusion do not depend on the other
modality, so :func:`nlq_clip_features` runs them once per window and once per query, then only
the fused blocks for every (window, query) pair, all queries of a clip together; the last fused
block runs for the CLS token alone and the last text layer is skipped (nothing reads them).
:func:`nlq_clip_features_one_pass` is the original's method, kept as the reference of tests
and benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from ...modeling.model import EgoVLPv2
from ...tokenizer import RobertaTokenizer
from ...video.pipeline import DecodedBatch, EncodedBatch, overlapped
from ...video.probe import probe
from ...video.reader import Backend, read_plan
from ...video.sampling import ClipPlan
from ...video.transforms import scaled_eval_transform
from .windows import (
    ASSUMED_FPS,
    MQ_FRAMES_PER_WINDOW,
    NLQ_FRAMES_PER_WINDOW,
    WINDOWS_PER_SECOND,
    plan_windows,
)

__all__ = [
    "FeatureSettings",
    "NLQClipFeatures",
    "clip_windows",
    "mq_clip_features",
    "nlq_clip_features",
    "nlq_clip_features_one_pass",
    "read_windows",
    "tokenize_queries",
]

Task = Literal["mq", "nlq"]


@dataclass(frozen=True)
class FeatureSettings:
    """How the features of a clip are computed.

    What changes the numbers (written into the feature folder's manifest; a resumed run must
    use the same): ``task``, ``frames_per_window`` (None: 16 for MQ, 4 for NLQ),
    ``windows_per_second``, ``fps`` (frames per second assumed for the clip times; None: each
    video's own average frame rate), ``query_max_length`` (NLQ tokens, capped at the model's
    limit), ``max_pos_len`` (the NLQ head's positions: ``v_len = min(max_pos_len, N_win)``).

    How it runs (free to change between runs): ``window_batch`` (windows decoded and embedded
    together), ``pair_batch`` (window-query pairs through the fused blocks together),
    ``backend``, ``amp`` (``auto``: bf16 autocast on CUDA, none on CPU; ``bf16``; ``off``).
    """

    task: Task
    frames_per_window: int | None = None
    windows_per_second: float = WINDOWS_PER_SECOND
    fps: float | None = ASSUMED_FPS
    query_max_length: int = 30
    max_pos_len: int = 256
    window_batch: int = 32
    pair_batch: int = 256
    backend: Backend = "pyav"
    amp: Literal["auto", "bf16", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.task not in ("mq", "nlq"):
            raise InputError(f"task must be 'mq' or 'nlq', got {self.task!r}")
        if self.frames_per_window is not None and self.frames_per_window < 1:
            raise InputError(f"frames_per_window must be >= 1, got {self.frames_per_window}")
        if not self.windows_per_second > 0 or (self.fps is not None and not self.fps > 0):
            raise InputError("windows_per_second and fps must be > 0")
        if self.query_max_length < 2 or self.max_pos_len < 1:
            raise InputError("query_max_length must be >= 2 and max_pos_len >= 1")
        if self.window_batch < 1 or self.pair_batch < 1:
            raise InputError("window_batch and pair_batch must be >= 1")
        if self.amp not in ("auto", "bf16", "off"):
            raise InputError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")

    @property
    def window_frames(self) -> int:
        if self.frames_per_window is not None:
            return self.frames_per_window
        return MQ_FRAMES_PER_WINDOW if self.task == "mq" else NLQ_FRAMES_PER_WINDOW

    def numerics(self) -> dict[str, Any]:
        """The settings that change the numbers (for the manifest)."""
        d = asdict(self)
        for key in ("window_batch", "pair_batch", "backend", "amp"):
            d.pop(key)
        d["frames_per_window"] = self.window_frames
        return d


def clip_windows(
    video: str | Path, video_start_sec: float, video_end_sec: float, settings: FeatureSettings
) -> np.ndarray:
    """The clip's windows, int64 [N_win, F] frame indices of ``video`` (see ``windows.py``)."""
    info = probe(video)
    fps = settings.fps if settings.fps is not None else info.average_fps
    return plan_windows(
        video_start_sec,
        video_end_sec,
        info.num_frames,
        settings.window_frames,
        fps=fps,
        windows_per_second=settings.windows_per_second,
    )


def read_windows(
    video: str | Path,
    windows: np.ndarray,
    size: int,
    *,
    backend: Backend = "pyav",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Decode and transform windows [n, F] of ``video``: float [n, F, 3, size, size]."""
    flat = windows.reshape(-1).astype(np.int64)
    plan = ClipPlan(flat, (str(video),) * len(flat), flat, (int(flat.min()), int(flat.max()) + 1))
    frames = read_plan(plan, backend, scaled_eval_transform(size), short="raise", dtype=dtype)
    return frames.reshape(*windows.shape, *frames.shape[1:])


def tokenize_queries(
    tokenizer: RobertaTokenizer, queries: Sequence[str], max_length: int
) -> dict[str, Tensor]:
    """The original's query text: stripped, lower-cased, padded to ``max_length`` tokens."""
    return tokenizer(
        [q.strip().lower() for q in queries],
        max_length=max_length,
        padding="max_length",
        truncation=True,
    )


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.no_grad()
def mq_clip_features(
    model: EgoVLPv2, video: str | Path, windows: np.ndarray, settings: FeatureSettings
) -> Tensor:
    """MQ features of a clip: float32 [N_win, P] (``vid_proj`` of the dual video CLS).

    windows: int64 [N_win, F] from :func:`clip_windows`.
    """
    dev = model.video_model.cls_token.device

    def encode(clip: Tensor) -> Tensor:
        with _autocast(dev, settings.amp):
            return model.forward_video(clip).embeds.float().cpu()

    out = [
        b.embeddings
        for b in _overlapped_windows(model, video, windows, len(windows), settings, encode)
    ]
    return torch.cat([e for e in out if e is not None])


def _overlapped_windows(
    model: EgoVLPv2,
    video: str | Path | Tensor,
    windows: np.ndarray | None,
    n_win: int,
    settings: FeatureSettings,
    encode: Callable[[Tensor], Tensor],
) -> Iterator[EncodedBatch]:
    """The clip's windows in chunks of ``settings.window_batch``, in order: ``encode`` runs on
    chunk k (this thread) while chunk k + 1 decodes in the background
    (:func:`~egovlpv2_rt.video.pipeline.overlapped`). A decode error is raised at its chunk."""
    chunks = [list(range(p.start, p.stop)) for p in _chunks(n_win, settings.window_batch)]

    def decode(positions: Sequence[int]) -> DecodedBatch:
        part = slice(positions[0], positions[-1] + 1)
        return DecodedBatch(list(positions), _window_pixels(model, video, windows, part, settings))

    return overlapped(chunks, decode, encode)


@dataclass(frozen=True)
class NLQClipFeatures:
    """NLQ features of one clip and its Q queries.

    ``fused``: float32 [Q, N_win, D] fused video CLS per (query, window); ``text``: float32
    [Q, L, H] unfused text-tower token states; ``attention_mask``: int64 [Q, L].
    """

    fused: Tensor
    text: Tensor
    attention_mask: Tensor


def _query_inputs(
    model: EgoVLPv2, tokenizer: RobertaTokenizer, queries: Sequence[str], max_length: int
) -> tuple[Tensor, Tensor]:
    if not queries:
        raise InputError("a clip needs at least one query")
    length = min(max_length, model.config.text.max_text_length)
    tok = tokenize_queries(tokenizer, queries, length)
    dev = model.video_model.cls_token.device
    return tok["input_ids"].to(dev), tok["attention_mask"].to(dev)


@torch.no_grad()
def nlq_clip_features(
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer,
    video: str | Path | Tensor,
    windows: np.ndarray | None,
    queries: Sequence[str],
    settings: FeatureSettings,
) -> NLQClipFeatures:
    """NLQ features of a clip for all its queries, the unfused prefix computed once.

    video: the file (with ``windows`` int64 [N_win, F]) or decoded windows
    [N_win, F, 3, S, S] (``windows`` None). Returns :class:`NLQClipFeatures`; each fused
    feature equals the original's one-pass-per-query computation.
    """
    dev = model.video_model.cls_token.device
    ids, mask = _query_inputs(model, tokenizer, queries, settings.query_max_length)
    with _autocast(dev, settings.amp):
        text = model.forward_text(ids, mask).last_hidden_state.float().cpu()
        # Padding after the longest query is masked out of every attention that reads it, and
        # nothing reads its own states: the fused pairs run without it.
        keep = int(mask.sum(dim=1).max())
        t_prefix, key_mask = model.fusion_text_prefix(ids[:, :keep], mask[:, :keep])
    n_win = _num_windows(video, windows)
    fused = torch.empty(len(queries), n_win, model.config.embed_dim)

    def fuse(clip: Tensor) -> Tensor:
        """One chunk of windows with every query: [Q, n, D] float32 CPU."""
        n = clip.shape[0]
        rows = []
        with _autocast(dev, settings.amp):
            cache = model.video_fusion_cache(clip)
            for qs in _chunks(len(queries), max(1, settings.pair_batch // n)):
                nq = qs.stop - qs.start
                h = t_prefix[qs].repeat_interleave(n, 0)
                km = key_mask[qs].repeat_interleave(n, 0)
                cls = model.fused_video_cls(cache.tile(nq), h, km)
                rows.append(cls.float().cpu().reshape(nq, n, -1))
        return torch.cat(rows)

    for b in _overlapped_windows(model, video, windows, n_win, settings, fuse):
        assert b.embeddings is not None  # every chunk decodes or raises
        fused[:, b.positions[0] : b.positions[-1] + 1] = b.embeddings
    return NLQClipFeatures(fused, text, mask.cpu())


def _num_windows(video: str | Path | Tensor, windows: np.ndarray | None) -> int:
    if windows is not None:
        return len(windows)
    if not isinstance(video, Tensor):
        raise InputError("pass the windows of a video file, or decoded windows as a tensor")
    return int(video.shape[0])


def _window_pixels(
    model: EgoVLPv2,
    video: str | Path | Tensor,
    windows: np.ndarray | None,
    part: slice,
    settings: FeatureSettings,
) -> Tensor:
    dev = model.video_model.cls_token.device
    if windows is None:
        assert isinstance(video, Tensor)
        return video[part].to(dev)
    assert not isinstance(video, Tensor)
    size = model.config.video.img_size
    return read_windows(video, windows[part], size, backend=settings.backend, dtype=model.dtype).to(
        dev
    )


@torch.no_grad()
def nlq_clip_features_one_pass(
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer,
    video: str | Path | Tensor,
    windows: np.ndarray | None,
    queries: Sequence[str],
    settings: FeatureSettings,
) -> NLQClipFeatures:
    """The original's method: per query, the whole fusion forward over every window (the query
    repeated per window). Arguments and result as :func:`nlq_clip_features`."""
    dev = model.video_model.cls_token.device
    ids, mask = _query_inputs(model, tokenizer, queries, settings.query_max_length)
    with _autocast(dev, settings.amp):
        text = model.forward_text(ids, mask).last_hidden_state.float().cpu()
    n_win = _num_windows(video, windows)
    fused = torch.empty(len(queries), n_win, model.config.embed_dim)
    for q in range(len(queries)):
        for part in _chunks(n_win, settings.window_batch):
            clip = _window_pixels(model, video, windows, part, settings)
            n = clip.shape[0]
            with _autocast(dev, settings.amp):
                out = model.forward_fusion(
                    clip, ids[q : q + 1].expand(n, -1), mask[q : q + 1].expand(n, -1)
                )
            assert out.video_cls is not None
            fused[q, part] = out.video_cls.float().cpu()
    return NLQClipFeatures(fused, text, mask.cpu())
