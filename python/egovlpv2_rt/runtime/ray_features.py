"""``egovlpv2 features --engine ray``: the episodic-memory feature files of a metadata file,
computed by a pool of Ray actors and written by the driver.

Each actor loads the model once (as ``egovlpv2 features`` does in one process) and computes
whole clips with the same function as the single-process job
(:func:`~egovlpv2_rt.tasks.episodic.feature_job.compute_clip_features`: windows decoded on the
overlapped pipeline, MQ or NLQ features); the files come back to the driver as bytes and are
written there atomically, so the workers need no shared file system. A clip whose files all
exist is not sent (a stopped job run again computes only the rest); a worker that dies is
restarted by Ray Data and its clip run again; each clip's files are written once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..denormals import flushing_denormals
from ..tasks.episodic.feature_job import (
    ClipFeatures,
    FeaturePlan,
    FeatureRun,
    compute_clip_features,
    record_clip_features,
    write_feature_manifest,
)
from ..tasks.episodic.features import FeatureSettings
from .ray_engine import RayOptions, import_ray, init_ray, map_with_actors

__all__ = ["features_with_ray"]


class _FeatureActor:
    """Ray actor: one model; clip indices -> one row per file (name, payload), or one row
    saying why the clip failed."""

    def __init__(
        self,
        plan: FeaturePlan,
        checkpoint: str,
        tokenizer: str | None,
        settings: FeatureSettings,
        device: str | None,
        threads: int,
    ) -> None:
        import torch

        from ..checkpoint import load_model
        from ..model_files import load_tokenizer

        torch.set_num_threads(max(1, threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if settings.backend in ("dali", "dali_cpu"):
            import egovlpv2_rt.video.dali_backend  # noqa: F401  (registers the DALI reader)
        self.model = load_model(checkpoint, num_frames=settings.window_frames, device=device)
        self.model.eval()
        self.tok = None
        if tokenizer is not None:
            self.tok = load_tokenizer(Path(tokenizer), self.model.config.text.max_text_length)
        self.plan, self.settings, self.cpu = plan, settings, device == "cpu"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        uids, names, payloads, failed, fps = [], [], [], [], []
        for k in batch["index"]:
            clip = self.plan.clips[int(k)]
            with flushing_denormals(self.cpu):  # as the CLI's run (the flag is per thread)
                res = compute_clip_features(self.plan, clip, self.model, self.tok, self.settings)
            extra = json.dumps(res.video_fps)
            if res.failed is not None or not res.files:
                uids.append(clip.clip_uid)
                names.append("")
                payloads.append(b"")
                failed.append(json.dumps(res.failed))
                fps.append(extra)
            for name, payload in res.files.items():
                uids.append(clip.clip_uid)
                names.append(name)
                payloads.append(payload)
                failed.append("null")
                fps.append(extra)
        return {
            "clip_uid": np.array(uids),
            "name": np.array(names),
            "payload": np.array(payloads, dtype=object),
            "failed": np.array(failed),
            "video_fps": np.array(fps),
        }


def _clip_results(rows: Iterator[dict[str, np.ndarray]]) -> Iterator[ClipFeatures]:
    """Arriving row batches -> one :class:`ClipFeatures` per clip (a clip's rows come in one
    batch: an actor call handles whole clips)."""
    for batch in rows:
        by_clip: dict[str, ClipFeatures] = {}
        for i, uid in enumerate(batch["clip_uid"]):
            uid = str(uid)
            res = by_clip.setdefault(uid, ClipFeatures(uid))
            failed = json.loads(str(batch["failed"][i]))
            fps = json.loads(str(batch["video_fps"][i]))
            if failed is not None:
                res.failed = failed
            if fps is not None:
                res.video_fps = (str(fps[0]), float(fps[1]))
            if str(batch["name"][i]):
                res.files[str(batch["name"][i])] = bytes(batch["payload"][i])
        yield from by_clip.values()


def features_with_ray(
    plan: FeaturePlan,
    *,
    checkpoint: str,
    tokenizer: str | None,
    settings: FeatureSettings,
    device: str | None,
    options: RayOptions,
    progress: Any = None,
) -> dict[str, Any]:
    """Compute and write the clips of ``plan`` that are not done, on a Ray cluster; returns
    the manifest (as the single-process job writes it, from one report, the driver's:
    ``ranks`` 1, and ``engine`` = ``ray``)."""
    ray = import_ray()
    t0 = time.perf_counter()
    run = FeatureRun()
    todo = []
    for i, clip in enumerate(plan.clips):
        run.clips += 1
        if plan.done(clip):
            run.existing += 1
        else:
            todo.append(i)
    if progress is not None:
        progress.update(run.existing)
    if todo:
        started = init_ray(ray, options)
        try:
            ds = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo))
            kwargs = {
                "plan": plan,
                "checkpoint": checkpoint,
                "tokenizer": tokenizer,
                "settings": settings,
                "device": device,
            }
            ds = map_with_actors(ds, _FeatureActor, kwargs, options, batch_size=1)
            seen: set[str] = set()
            for res in _clip_results(ds.iter_batches(batch_size=None, batch_format="numpy")):
                if res.clip_uid in seen:  # a retried clip delivered twice: written once
                    continue
                seen.add(res.clip_uid)
                record_clip_features(plan, res, run)
                if progress is not None:
                    progress.update(1)
        finally:
            if started:
                ray.shutdown()
    run.seconds = time.perf_counter() - t0
    manifest = write_feature_manifest(plan, [run.to_dict()], ranks=1)
    manifest["engine"] = "ray"
    return manifest
