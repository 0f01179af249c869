"""Query-focused video summarisation (QFVS) on frozen fused EgoVLPv2 features.

The original (``QFVS/`` of EgoVLPv2) in four steps, and what differs here:

1. **Shots.** A shot is 5 frames at 1 frame per second (5 s of video). Each shot runs once
   through the fusion path's query-free prefix (:meth:`EgoVLPv2.video_fusion_cache`: patch
   embedding and the unfused video blocks). The original crops every frame with
   ``RandomResizedCrop`` even at extraction; here frames get the deterministic evaluation
   transform (resize, centre crop), so the features of a video do not change between runs.
2. **Segments.** The shots are cut into at most 20 segments of at most 200 shots by kernel
   change-point detection on the prefix CLS features (:func:`segment_shots`).
3. **Prompt fusion.** Per query (c1, c2) three prompts, ``There is a {c1}``, ``There is a {c2}``,
   ``There is a {c1} and a {c2}`` (:func:`~egovlpv2_rt.tasks.qfvs_data.query_prompts`; the
   original pads to 15 tokens, here to the model's text length: a prompt is never cut), run
   through the unfused text layers once (:meth:`EgoVLPv2.fusion_text_prefix`);
   each shot is then fused with each prompt and the feature is
   ``cross_modal_video_transform(fused CLS)`` (:func:`shot_features`), the fused CLS from the
   cached prefix (:meth:`EgoVLPv2.fused_video_cls`, equal to ``forward_fusion(...).video_cls``).
4. **Head** (:mod:`~egovlpv2_rt.tasks.qfvs_head`): a small transformer over each segment scores
   every shot for each prompt; the summary is the top 2% of shots by the query-prompt score.

The model must accept 5-frame clips (``video.num_frames >= 5``; load the checkpoint with
``num_frames: 5`` and the temporal embedding is resized as the original does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..modeling.model import EgoVLPv2
from ..tokenizer import RobertaTokenizer
from ..video.probe import probe
from .episodic.features import read_windows
from .qfvs_data import query_prompts

__all__ = [
    "FRAMES_PER_SHOT",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_SHOTS",
    "QFVSShotFeatures",
    "prompt_inputs",
    "segment_shots",
    "shot_features",
    "shot_features_direct",
    "shot_frame_indices",
]

FRAMES_PER_SHOT = 5
SHOT_SECONDS = 5.0
MAX_SEGMENTS = 20
MAX_SEGMENT_SHOTS = 200


def shot_frame_indices(num_frames: int, fps: float) -> np.ndarray:
    """Frames of the shots of a video: int64 [S, 5], frame ``round(t * fps)`` at t = 0, 1, 2,
    ... seconds, 5 per shot; the seconds after the last whole shot are dropped.

    Raises InputError when the video is shorter than one shot."""
    if not (fps > 0 and np.isfinite(fps)):
        raise InputError(f"frame rate must be a positive number, got {fps!r}")
    seconds = int(np.floor((num_frames - 1) / fps)) + 1 if num_frames > 0 else 0
    shots = seconds // FRAMES_PER_SHOT
    if shots == 0:
        raise InputError(
            f"video has {num_frames} frames at {fps:g} fps: shorter than one shot "
            f"({FRAMES_PER_SHOT} frames at 1 fps)"
        )
    t = np.arange(shots * FRAMES_PER_SHOT, dtype=np.float64)
    idx = np.minimum(np.floor(t * fps + 0.5).astype(np.int64), num_frames - 1)
    return idx.reshape(shots, FRAMES_PER_SHOT)


def prompt_inputs(
    model: EgoVLPv2, tokenizer: RobertaTokenizer, queries: Sequence[tuple[str, str]]
) -> tuple[Tensor, Tensor]:
    """Token ids and mask ``[3Q, L]`` of the queries' prompts (query q: rows 3q, 3q+1, 3q+2 =
    c1, c2, both), padded to the model's text length ``L``.

    The original pads and truncates to 15 tokens, which no UT Egocentric prompt reaches with
    RoBERTa's tokenizer; padding is masked, so the longer pad changes no number. A prompt that
    does not fit the model is an error, never cut: a cut query prompt would lose its second
    concept and silently become the first concept's prompt."""
    if not queries:
        raise InputError("QFVS needs at least one query (c1, c2)")
    texts = [p for c1, c2 in queries for p in query_prompts(c1, c2)]
    length = model.config.text.max_text_length
    tok = tokenizer(texts, max_length=length + 1, padding="max_length", truncation=True)
    counts = tok["attention_mask"].sum(dim=1)
    if bool((counts > length).any()):
        i = int(torch.nonzero(counts > length)[0])
        raise InputError(
            f"QFVS prompt {texts[i]!r} takes more than the model's {length} text tokens "
            f"(query {queries[i // 3]}); use shorter concept names or a model with a longer "
            "text input"
        )
    dev = model.video_model.cls_token.device
    return tok["input_ids"][:, :length].to(dev), tok["attention_mask"][:, :length].to(dev)


@dataclass(frozen=True)
class QFVSShotFeatures:
    """Features of one video's S shots for Q queries.

    ``prefix_cls``: [S, D], the CLS token after the unfused video blocks (what the
    segmentation reads); ``fused``: [Q, 3, S, D],
    ``cross_modal_video_transform(fused CLS)`` per (query, prompt c1/c2/both, shot). Both
    float32, float64 for a float64 model.
    """

    prefix_cls: Tensor
    fused: Tensor


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _check_model(model: EgoVLPv2) -> None:
    if model.config.video.num_frames < FRAMES_PER_SHOT:
        raise InputError(
            f"QFVS shots have {FRAMES_PER_SHOT} frames but the model takes at most "
            f"{model.config.video.num_frames} (video.num_frames); load it with num_frames: "
            f"{FRAMES_PER_SHOT}"
        )
    if model.training:
        raise InputError("QFVS shot features are computed in eval mode: call model.eval()")


def _shot_pixels(
    model: EgoVLPv2, video: str | Path | Tensor, frames: np.ndarray | None, part: slice
) -> Tensor:
    dev = model.video_model.cls_token.device
    if isinstance(video, Tensor):
        return video[part].to(device=dev, dtype=model.dtype)
    assert frames is not None
    size = model.config.video.img_size
    return read_windows(video, frames[part], size, dtype=model.dtype).to(dev)


def _video_frames(video: str | Path | Tensor) -> tuple[int, np.ndarray | None]:
    if isinstance(video, Tensor):
        if video.dim() != 5 or video.shape[1] != FRAMES_PER_SHOT:
            raise InputError(
                f"decoded shots must be [S, {FRAMES_PER_SHOT}, 3, H, W], got {tuple(video.shape)}"
            )
        return int(video.shape[0]), None
    info = probe(video)
    frames = shot_frame_indices(info.num_frames, info.average_fps)
    return len(frames), frames


@torch.no_grad()
def shot_features(
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer,
    video: str | Path | Tensor,
    queries: Sequence[tuple[str, str]],
    *,
    shot_batch: int = 8,
    pair_batch: int = 96,
) -> QFVSShotFeatures:
    """Shot features of ``video`` for every query, the unfused prefix run once per shot.

    video: a file (read at 1 fps, see :func:`shot_frame_indices`) or decoded, normalised
    shots float [S, 5, 3, H, W]. queries: (c1, c2) concept names. Returns
    :class:`QFVSShotFeatures`.
    """
    _check_model(model)
    n_shots, frames = _video_frames(video)
    ids, mask = prompt_inputs(model, tokenizer, queries)
    # Padding after the longest prompt is masked from every attention that reads it.
    keep = int(mask.sum(dim=1).max())
    t_prefix, key_mask = model.fusion_text_prefix(ids[:, :keep], mask[:, :keep])
    n_prompts, dim = ids.shape[0], model.config.embed_dim
    # float32 storage, float64 kept for a float64 model (the exactness tests).
    store = torch.float64 if model.dtype == torch.float64 else torch.float32
    fused = torch.empty(n_prompts, n_shots, dim, dtype=store)
    prefix_cls = torch.empty(n_shots, model.config.video.embed_dim, dtype=store)
    for part in _chunks(n_shots, shot_batch):
        cache = model.video_fusion_cache(_shot_pixels(model, video, frames, part))
        n = part.stop - part.start
        prefix_cls[part] = cache.tokens[:, 0].to(store).cpu()
        for ps in _chunks(n_prompts, max(1, pair_batch // n)):
            npr = ps.stop - ps.start
            h = t_prefix[ps].repeat_interleave(n, 0)
            km = key_mask[ps].repeat_interleave(n, 0)
            cls = model.fused_video_cls(cache.tile(npr), h, km)
            out = model.cross_modal_video_transform(cls)
            fused[ps, part] = out.to(store).cpu().reshape(npr, n, -1)
    return QFVSShotFeatures(prefix_cls, fused.reshape(len(queries), 3, n_shots, dim))


@torch.no_grad()
def shot_features_direct(
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer,
    shots: Tensor,
    queries: Sequence[tuple[str, str]],
) -> Tensor:
    """The original's computation, one full fusion forward per (shot, prompt):
    ``cross_modal_video_transform(forward_fusion(shot, prompt).video_cls)``, in the model's
    dtype, [Q, 3, S, D]. The reference of tests; :func:`shot_features` is what to use."""
    _check_model(model)
    ids, mask = prompt_inputs(model, tokenizer, queries)
    n = shots.shape[0]
    out = []
    for p in range(ids.shape[0]):
        res = model.forward_fusion(
            shots.to(model.dtype), ids[p : p + 1].expand(n, -1), mask[p : p + 1].expand(n, -1)
        )
        assert res.video_cls is not None
        out.append(model.cross_modal_video_transform(res.video_cls))
    return torch.stack(out).reshape(len(queries), 3, n, -1)


def segment_shots(
    features: Tensor | np.ndarray,
    *,
    max_segments: int = MAX_SEGMENTS,
    max_shots: int = MAX_SEGMENT_SHOTS,
) -> list[int]:
    """Cut S shots into consecutive segments; returns the segment lengths (sum S).

    The original runs KTS (``cpd_auto(K, 19, vmax=1, lmax=199)``) on the Gram matrix
    ``K = X X^T`` of the shots' prefix CLS features ``X`` [S, D]: for every number of change
    points m = 0..19 the least within-segment scatter, then the m minimising
    ``scatter / S + m / (2S) * (log(S / m) + 1)``. Here ``ruptures.KernelCPD(kernel="linear")``
    computes the same scatters (the linear kernel is that Gram matrix) by the same dynamic
    programme, and the same penalty picks m. ruptures has no maximum segment length: an m
    whose segmentation has a segment longer than ``max_shots`` is skipped (as the original's
    infinite cost for an infeasible m); if every m is, the shots are cut into the fewest equal
    parts that fit. A video of more than ``max_segments * max_shots``
    shots cannot be cut and is an error.
    """
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else features
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"segment_shots: expected features [S, D], S >= 1, got {x.shape}")
    n = x.shape[0]
    if n > max_segments * max_shots:
        raise InputError(
            f"a video of {n} shots cannot be cut into at most {max_segments} segments of at "
            f"most {max_shots} shots"
        )
    max_cps = min(max_segments - 1, n - 1)
    if max_cps == 0:
        return [n]
    import ruptures  # optional dependency (extra "qfvs")

    algo = ruptures.KernelCPD(kernel="linear", min_size=1, jump=1).fit(x)
    best: tuple[float, list[int]] | None = None
    for m in range(max_cps + 1):
        ends = [n] if m == 0 else [int(e) for e in algo.predict(n_bkps=m)]
        scatter = float(algo.cost.sum_of_costs(ends))
        penalty = 0.0 if m == 0 else m / (2.0 * n) * (np.log(n / m) + 1.0)
        cost = scatter / n + penalty
        lengths = [int(v) for v in np.diff([0, *ends])]
        if max(lengths) <= max_shots and (best is None or cost < best[0]):
            best = (cost, lengths)
    if best is not None:
        return best[1]
    # No change-point count gives segments short enough: equal parts, as few as fit.
    parts = -(-n // max_shots)
    return [int(v) for v in np.diff(np.linspace(0, n, parts + 1).round().astype(int))]
