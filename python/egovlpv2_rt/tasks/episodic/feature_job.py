"""``egovlpv2 features``: the feature files of every clip of an Ego4D metadata file.

Output folder:

- MQ: ``{clip_uid}.pt``, a float32 tensor ``[N_win, P]`` (the original's ``features_mq``);
- NLQ: ``feat_{sample_id}.pt`` per query, a dict with ``fused_video_features`` float32 ``[N_win,
  D]``, ``dual_text_features`` float32 ``[1, L, H]``, ``text_token`` = ``{"attention_mask":
  int64 [1, L]}`` and ``sample_id, vid, s_time, e_time, duration, query, s_ind, e_ind, v_len,
  annotation_uid, query_idx`` (the original's ``saved_features``, in its layout: numbers are 0-d
  tensors, int64 or float64, as its loader reads them). ``sample_id`` is the query's position in
  the metadata file (queries without text skipped); ``vid`` the clip uid; times are seconds from
  the clip's start, ``duration`` the clip's length; ``s_ind, e_ind`` the VSLNet grid cells of
  the answer for ``v_len = min(max_pos_len, N_win)`` cells. Queries of an unannotated split have
  no answer: ``s_time = e_time = -1.0`` and ``s_ind = e_ind = -1``;
- ``manifest.json``: the checkpoint (path, SHA-256), the metadata file (path, SHA-256), the
  settings that change the numbers, counts, and the clips that failed with why.

Files are written atomically, so a killed run leaves only whole files; running again skips the
clips whose files all exist and computes the others exactly as an uninterrupted run (a clip is
always computed whole, with the same batches). Under ``torchrun`` clip ``i`` goes to rank
``i % world``. A video that is missing or cannot be decoded is reported and skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..._version import __version__
from ...errors import InputError
from ...files import (
    atomic_write_bytes,
    atomic_write_text,
    exclusive_output,
    remove_stale_temporaries,
)
from ...modeling.model import EgoVLPv2
from ...tokenizer import RobertaTokenizer
from ...video.errors import VideoError
from ...video.probe import probe
from .features import FeatureSettings, clip_windows, mq_clip_features, nlq_clip_features
from .metadata import EMClip, NLQQuery, read_moments, read_nlq
from .spans import time_to_index

__all__ = [
    "ClipFeatures",
    "FeaturePlan",
    "FeatureRun",
    "compute_clip_features",
    "extract_features",
    "nlq_feature_name",
    "plan_features",
    "record_clip_features",
    "write_feature_manifest",
]

MANIFEST = "manifest.json"
FORMAT = "egovlpv2-rt episodic-memory features"


def nlq_feature_name(sample_id: int) -> str:
    return f"feat_{sample_id}.pt"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class FeatureRun:
    """What one rank did: counts and the clips that failed (``clip_uid``, video, error)."""

    clips: int = 0
    computed: int = 0
    existing: int = 0
    files_written: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    other_fps: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "computed": self.computed,
            "existing": self.existing,
            "files_written": self.files_written,
            "failed": self.failed,
            "other_fps": self.other_fps,
            "seconds": round(self.seconds, 3),
        }


def _nlq_record(
    sample_id: int,
    query: NLQQuery,
    clip: EMClip,
    fused: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    max_pos_len: int,
) -> dict[str, Any]:
    duration = clip.duration
    v_len = min(max_pos_len, fused.shape[0])
    if query.start_sec is None or query.end_sec is None:
        s_time = e_time = -1.0
        s_ind = e_ind = -1
    else:
        # As the original's data_gen: the answer clamped to the clip.
        s_time = max(0.0, float(query.start_sec))
        e_time = min(float(query.end_sec), duration)
        s_ind, e_ind = time_to_index(s_time, e_time, v_len, duration)
    # The layout and value types of the original's files (its loader reads them unchanged:
    # feature["text_token"]["attention_mask"], feature["s_ind"].item(), ...): numbers as the
    # 0-d tensors its batch-of-one DataLoader produced, strings as strings.
    return {
        "fused_video_features": fused.contiguous(),
        "dual_text_features": text[None].contiguous(),
        "sample_id": _int(sample_id),
        "vid": clip.clip_uid,
        "s_time": _float(s_time),
        "e_time": _float(e_time),
        "duration": _float(duration),
        "query": query.query.strip().lower(),
        "s_ind": _int(s_ind),
        "e_ind": _int(e_ind),
        "v_len": _int(v_len),
        "annotation_uid": query.annotation_uid,
        "query_idx": _int(query.query_idx),
        "text_token": {"attention_mask": mask[None].contiguous()},
    }


def _int(value: int) -> torch.Tensor:
    return torch.tensor(int(value), dtype=torch.int64)


def _float(value: float) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float64)


def _video_path(videos: Path, clip: EMClip) -> Path:
    return videos / f"{clip.video_uid}.mp4"


def _check_manifest(out: Path, expected: dict[str, Any]) -> None:
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable manifest ({exc})") from exc
    for key in ("task", "settings", "checkpoint_sha256", "metadata_sha256"):
        if old.get(key) != expected[key]:
            raise InputError(
                f"{out} holds features made with another {key.replace('_sha256', '')} "
                f"({key}: {old.get(key)!r}, this run: {expected[key]!r}); use another --out "
                "folder or remove it"
            )


@dataclass
class FeaturePlan:
    """What a feature job computes: the manifest's identity (``expected``), the clips in
    metadata order and, for NLQ, each clip's queries ``(sample_id, query)``."""

    out: Path
    videos: Path
    expected: dict[str, Any]
    clips: list[EMClip]
    by_clip: dict[str, list[tuple[int, NLQQuery]]]

    def targets(self, clip: EMClip) -> list[Path]:
        """The files of ``clip``."""
        if self.expected["task"] == "mq":
            return [self.out / f"{clip.clip_uid}.pt"]
        return [self.out / nlq_feature_name(sid) for sid, _ in self.by_clip[clip.clip_uid]]

    def done(self, clip: EMClip) -> bool:
        """Every file of ``clip`` is there (a killed run's temporaries removed first)."""
        targets = self.targets(clip)
        for target in targets:
            remove_stale_temporaries(target)
        return all(t.is_file() for t in targets)


def plan_features(
    *,
    metadata: str | Path,
    videos: str | Path,
    out: str | Path,
    model_config: Any,
    checkpoint: str | Path,
    settings: FeatureSettings,
) -> FeaturePlan:
    """Check the inputs and the output folder (a manifest there must be of the same job) and
    list the clips. ``model_config``: the model's :class:`~egovlpv2_rt.config.ModelConfig`."""
    out, videos = Path(out), Path(videos)
    if not videos.is_dir():
        raise InputError(f"--videos {videos}: not a folder")
    numerics = settings.numerics()
    if settings.task == "nlq":
        # What the files hold: the query length capped at the model's text limit.
        limit = model_config.text.max_text_length
        numerics["query_max_length"] = min(settings.query_max_length, limit)
    expected: dict[str, Any] = {
        "format": FORMAT,
        "task": settings.task,
        "settings": numerics,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_of(checkpoint),
        "metadata": str(metadata),
        "metadata_sha256": sha256_of(metadata),
        "package_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, expected)
    by_clip: dict[str, list[tuple[int, NLQQuery]]] = {}
    if settings.task == "nlq":
        nlq = read_nlq(metadata)
        clips = list(nlq.clips)
        by_clip = {c.clip_uid: [] for c in clips}
        for sid, q in enumerate(nlq.queries):
            by_clip[q.clip_uid].append((sid, q))
        clips = [c for c in clips if by_clip[c.clip_uid]]
    else:
        clips = list(read_moments(metadata).clips)
    return FeaturePlan(out, videos, expected, clips, by_clip)


@dataclass
class ClipFeatures:
    """One clip's outcome: its files as bytes (``name -> torch.save`` payload), or why it
    failed; ``video_fps`` when the video's rate is not the assumed one."""

    clip_uid: str
    files: dict[str, bytes] = field(default_factory=dict)
    failed: dict[str, str] | None = None
    video_fps: tuple[str, float] | None = None


def _to_bytes(obj: Any) -> bytes:
    # Through memory: torch.save names the zip's records after the file it writes, and the
    # temporary's random name would make two runs' files differ.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def compute_clip_features(
    plan: FeaturePlan,
    clip: EMClip,
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer | None,
    settings: FeatureSettings,
) -> ClipFeatures:
    """The files of one clip (the ones missing from the folder, for NLQ), computed with
    ``model``. A missing or undecodable video (or a clip outside it) is a failure, not an
    error."""
    video = _video_path(plan.videos, clip)
    res = ClipFeatures(clip.clip_uid)
    try:
        if not video.is_file():
            raise InputError(f"{video}: no such video (clip {clip.clip_uid})")
        windows = clip_windows(video, clip.video_start_sec, clip.video_end_sec, settings)
        rate = probe(video).average_fps
        if settings.fps is not None and abs(rate - settings.fps) > 0.01 * settings.fps:
            res.video_fps = (video.name, round(rate, 3))
        if settings.task == "mq":
            res.files[plan.targets(clip)[0].name] = _to_bytes(
                mq_clip_features(model, video, windows, settings)
            )
            return res
        assert tokenizer is not None
        queries = plan.by_clip[clip.clip_uid]
        nlq = nlq_clip_features(
            model, tokenizer, video, windows, [q.query for _, q in queries], settings
        )
    except (VideoError, InputError) as exc:
        res.failed = {"clip_uid": clip.clip_uid, "video": str(video), "error": str(exc)}
        return res
    for k, ((sid, q), target) in enumerate(zip(queries, plan.targets(clip), strict=True)):
        if target.is_file():
            continue
        fused, text, mask = nlq.fused[k], nlq.text[k], nlq.attention_mask[k]
        record = _nlq_record(sid, q, clip, fused, text, mask, settings.max_pos_len)
        res.files[target.name] = _to_bytes(record)
    return res


def record_clip_features(plan: FeaturePlan, res: ClipFeatures, run: FeatureRun) -> None:
    """Write one clip's files (atomically) and count it in ``run``."""
    if res.video_fps is not None:
        run.other_fps[res.video_fps[0]] = res.video_fps[1]
    if res.failed is not None:
        run.failed.append(res.failed)
        return
    run.computed += 1
    for name, payload in res.files.items():
        atomic_write_bytes(plan.out / name, payload)
        run.files_written += 1


def write_feature_manifest(
    plan: FeaturePlan, reports: list[dict[str, Any]], ranks: int
) -> dict[str, Any]:
    """The job's manifest from the reports of its workers (:meth:`FeatureRun.to_dict`)."""
    manifest: dict[str, Any] = dict(plan.expected)
    manifest.update(
        {
            "clips": len(plan.clips),
            "computed": sum(r["computed"] for r in reports),
            "existing": sum(r["existing"] for r in reports),
            "files_written": sum(r["files_written"] for r in reports),
            "failed": [f for r in reports for f in r["failed"]],
            # Videos whose own frame rate is not the assumed one (their windows are not at
            # 1.87/s of real time: the original's behaviour; --fps video follows the video).
            "other_fps": {k: v for r in reports for k, v in r["other_fps"].items()},
            "ranks": ranks,
        }
    )
    manifest["complete"] = not manifest["failed"]
    atomic_write_text(plan.out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def extract_features(
    *,
    metadata: str | Path,
    videos: str | Path,
    out: str | Path,
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer | None,
    checkpoint: str | Path,
    settings: FeatureSettings,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the feature files of ``metadata``'s clips into ``out`` (see the module doc).

    Args:
        metadata: ``nlq_*.json`` (task nlq) or ``moments_*.json`` (task mq).
        videos: folder of the canonical videos ``{video_uid}.mp4``.
        out: output folder (created).
        model: in eval mode, on its device; tokenizer: needed for NLQ.
        checkpoint: the weights file ``model`` came from (hashed into the manifest).
        settings: :class:`FeatureSettings`.
        rank, world: this process's shard (clip ``i`` goes to rank ``i % world``).
        barrier: waits for every rank (torch.distributed); rank 0 then writes the manifest.
        progress: called with one line per clip.

    Returns:
        The manifest (rank 0) or this rank's report.
    """
    t0 = time.perf_counter()
    if settings.task == "nlq" and tokenizer is None:
        raise InputError("NLQ features need the model's tokenizer")
    if model.training:
        raise InputError("the model must be in eval mode")
    plan = plan_features(
        metadata=metadata,
        videos=videos,
        out=out,
        model_config=model.config,
        checkpoint=checkpoint,
        settings=settings,
    )
    run = FeatureRun()
    lock = plan.out / f".rank{rank}"
    with exclusive_output(lock, what=f"feature extraction (rank {rank}) into {plan.out}"):
        for i, clip in enumerate(plan.clips):
            if i % world != rank:
                continue
            run.clips += 1
            if plan.done(clip):
                run.existing += 1
            else:
                res = compute_clip_features(plan, clip, model, tokenizer, settings)
                record_clip_features(plan, res, run)
            if progress is not None:
                progress(f"[{run.clips}] {clip.clip_uid}")
        run.seconds = time.perf_counter() - t0
        atomic_write_text(plan.out / f".report.rank{rank}.json", json.dumps(run.to_dict()))
    if barrier is not None:
        barrier()
    if rank != 0:
        return run.to_dict()
    reports = []
    for r in range(world):
        path = plan.out / f".report.rank{r}.json"
        reports.append(json.loads(path.read_text()))
    manifest = write_feature_manifest(plan, reports, world)
    for r in range(world):
        os.remove(plan.out / f".report.rank{r}.json")
    return manifest
