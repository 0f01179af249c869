"""``egovlpv2 embed --engine ray``: embed a clip list on a Ray cluster with Ray Data.

The pipeline, streamed with Ray Data's backpressure (memory bounded for any number of clips):

1. a Dataset of clip rows (``position``, ``id``, ``path``, ``start``, ``end``): the clips of the
   list that the output folder does not hold yet;
2. decoding in stateless CPU tasks (``map_batches``, ``decode_cpus`` CPUs each) with the
   runtime's own :class:`~egovlpv2_rt.runtime.decoding.ClipDecoder` (sampling rule, transform,
   pixel checks), a clip that cannot be decoded becoming an error row; or, with
   ``decode_in_actor``, inside the model actors (DALI on their GPU);
3. encoding in a pool of actors (``actors`` = N or (min, max) for autoscaling,
   ``gpus_per_actor`` each), each holding one :class:`~egovlpv2_rt.runtime.Runtime` loaded with
   the same options as the single-process path and calling the same functions
   (``Runtime._encode_pixels``, or ``Runtime.iter_encode_video`` when it decodes too);
4. the driver writes each arriving batch as a part of the output folder
   (:class:`~egovlpv2_rt.runtime.embed_folder.FolderWriter`), embeddings and errors apart.

Ray Data retries a task that dies and restarts an actor that dies, running its batch again
(its defaults: ``max_retries`` / ``max_restarts`` / ``max_task_retries`` -1); the driver keeps
each clip id once. A
driver stopped part way leaves whole parts: ``resume=True`` embeds only the clips no part holds.
Nothing here is imported by the single-machine path, and Ray is imported only when a job runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InputError, one_line
from .decoding import ClipDecoder
from .embed_folder import FolderWriter
from .embed_parts import clip_list_sha256

__all__ = [
    "RayJobResult",
    "RayOptions",
    "embed_with_ray",
    "import_ray",
    "init_ray",
    "map_with_actors",
]

_ROW_KEYS = ("position", "id", "path", "start", "end")


def import_ray() -> ModuleType:
    """The ``ray`` module, or an InputError naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'egovlpv2-rt[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How the job uses the cluster.

    Attributes:
        address: cluster to join (``ray.init(address=...)``); None: ``RAY_ADDRESS`` when set,
            else a local cluster started for the job.
        actors: model actors, fixed (n, n) or an autoscaling range (min, max).
        gpus_per_actor: GPUs per model actor (0: CPU actors).
        cpus_per_actor: CPUs per model actor (also its torch threads on the CPU).
        decode_cpus: CPUs per decode task.
        batch_size: clips per model batch (and per decode task).
        decode_in_actor: decode inside the model actors (the runtime's video backend, e.g.
            DALI on their GPU) instead of in CPU tasks.
        batches_per_call: with ``decode_in_actor``, model batches per actor call: the
            runtime decodes batch k+1 while it encodes batch k only within one call, so a call
            of one batch leaves the decoder and the model taking turns.
        part_size: clips per output part (rounded to whole batches as they arrive).
    """

    address: str | None = None
    actors: tuple[int, int] = (1, 1)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0
    batch_size: int = 8
    decode_in_actor: bool = False
    batches_per_call: int = 4
    part_size: int = 256

    def __post_init__(self) -> None:
        lo, hi = self.actors
        if not 1 <= lo <= hi:
            raise InputError(f"--actors: need 1 <= min <= max, got {lo}..{hi}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0 or self.decode_cpus <= 0:
            raise InputError(
                "--gpus-per-actor must be >= 0, --decode-cpus and the CPUs per actor > 0"
            )
        if self.batch_size < 1 or self.part_size < 1 or self.batches_per_call < 1:
            raise InputError("--batch-size, --batches-per-call and the part size must be >= 1")

    @property
    def call_size(self) -> int:
        """Clips per model-actor call (and per block of the job's dataset)."""
        return self.batch_size * (self.batches_per_call if self.decode_in_actor else 1)


def _decode_batch(batch: dict[str, np.ndarray], decoder: ClipDecoder) -> dict[str, Any]:
    """Ray task: clip rows -> the rows with ``pixels`` (float32 ``[n, F, 3, S, S]``; zeros for
    a clip that failed) and ``error`` ('' when decoded)."""
    n = len(batch["position"])
    decoded, _ = decoder.decode(_row_specs(batch), 0, skip_bad=True)
    p = decoder.preprocessing
    if decoded.pixels is not None and len(decoded.positions) == n:
        pixels = np.ascontiguousarray(decoded.pixels.numpy(), np.float32)  # all decoded: no copy
    else:
        pixels = np.zeros((n, p.num_frames, decoder.in_chans, p.size, p.size), np.float32)
        if decoded.pixels is not None:
            pixels[decoded.positions] = decoded.pixels.numpy()
    errors = [""] * n
    for k, exc in decoded.failed:
        errors[k] = one_line(exc)
    return {**{k: batch[k] for k in _ROW_KEYS}, "pixels": pixels, "error": np.array(errors)}


def _row_specs(batch: dict[str, np.ndarray]) -> list[Any]:
    """The ClipSpecs of a batch of clip rows (NaN start / end: the file's start / end)."""
    from ..video import ClipSpec

    def sec(x: Any) -> float | None:
        return None if np.isnan(float(x)) else float(x)

    return [
        ClipSpec(str(path), sec(start), sec(end))
        for path, start, end in zip(batch["path"], batch["start"], batch["end"], strict=True)
    ]


class _EncodeActor:
    """Ray actor: one Runtime; decoded rows -> rows with ``embedding`` (or decodes too)."""

    def __init__(self, checkpoint: str | None, load_kwargs: dict[str, Any], threads: int) -> None:
        import torch

        from . import load

        torch.set_num_threads(max(1, threads))
        kwargs = dict(load_kwargs)
        if kwargs.get("device") is None:
            kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        self.rt = load(checkpoint, **kwargs)
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        n = len(batch["position"])
        dim = self.rt.embedding_dim
        emb = np.zeros((n, dim), np.float32)
        if "pixels" in batch:
            errors = [str(e) for e in batch["error"]]
            ok = [i for i in range(n) if not errors[i]]
            if ok:
                pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
                emb[ok] = self.rt._encode_pixels(pixels).numpy()
        else:  # decode here too: the runtime's own overlapped decode -> encode
            errors = [""] * n
            for out in self.rt.iter_encode_video(_row_specs(batch), skip_bad=True):
                if out.embeddings is not None:
                    emb[out.positions] = out.embeddings.numpy()
                for k, exc in out.failed:
                    errors[k] = one_line(exc)
        return {
            **{k: batch[k] for k in _ROW_KEYS},
            "embedding": emb,
            "error": np.array(errors),
            "actor_pid": np.full(n, self.pid, np.int64),
        }


@dataclass
class RayJobResult:
    """What one run did: clips found in the folder, computed now, embedded and failed in all."""

    resumed: int
    computed: int
    embedded: int
    failed: int
    seconds: float
    actor_pids: list[int] = field(default_factory=list)


def _rows(clips: list[dict[str, Any]], todo: list[int]) -> list[dict[str, Any]]:
    nan = float("nan")
    return [
        {
            "position": k,
            "id": str(clips[k]["id"]),
            "path": str(clips[k]["path"]),
            "start": nan if clips[k].get("start") is None else float(clips[k]["start"]),
            "end": nan if clips[k].get("end") is None else float(clips[k]["end"]),
        }
        for k in todo
    ]


def init_ray(ray: ModuleType, options: RayOptions) -> bool:
    """Join or start a cluster; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        kwargs["num_cpus"] = os.cpu_count() or 1
    ray.init(address=address, **kwargs)
    return True


def embed_with_ray(
    clips: list[dict[str, Any]],
    out: str | Path,
    *,
    checkpoint: str | None,
    load_kwargs: dict[str, Any],
    decoder: ClipDecoder,
    fingerprint: dict[str, Any],
    options: RayOptions,
    resume: bool = False,
    progress: Any = None,
) -> RayJobResult:
    """Embed ``clips`` (dicts ``id``, ``path`` (absolute), ``start``, ``end``) into the folder
    ``out`` on a Ray cluster.

    Args:
        clips: the job's clip list (ids unique).
        out: the output folder (see :mod:`egovlpv2_rt.runtime.embed_folder`).
        checkpoint, load_kwargs: what each model actor passes to
            :func:`egovlpv2_rt.runtime.load` (the single-process path's options).
        decoder: the decoding settings of that runtime (:attr:`Runtime.clip_decoder`).
        fingerprint: the model fingerprint written with the embeddings.
        options: cluster use.
        resume: continue a folder of this job (only the clips it lacks are computed).
        progress: a progress bar (``update(n)``), or None.

    Returns:
        :class:`RayJobResult`.
    """
    ray = import_ray()
    identity = {"model": fingerprint, "clips_sha256": clip_list_sha256(clips), "clips": len(clips)}
    writer = FolderWriter(out, identity, resume=resume)
    done = writer.done_ids()
    todo = [k for k, c in enumerate(clips) if str(c["id"]) not in done]
    t0 = time.perf_counter()
    result = RayJobResult(
        resumed=len(clips) - len(todo), computed=len(todo), embedded=0, failed=0, seconds=0.0
    )
    if progress is not None:
        progress.update(result.resumed)
    if todo:
        started = init_ray(ray, options)
        buffer = _PartBuffer(writer, clips, done, options.part_size)
        try:
            rows = _rows(clips, todo)
            for batch in _stream(ray, rows, checkpoint, load_kwargs, decoder, options):
                buffer.add(batch)
                if progress is not None:
                    progress.update(len(batch["position"]))
            buffer.flush()
        finally:
            if started:
                ray.shutdown()
        result.actor_pids = sorted(buffer.actor_pids)
    result.embedded, result.failed = writer.finish()
    result.seconds = time.perf_counter() - t0
    return result


def map_with_actors(
    ds: Any, actor: type, kwargs: dict[str, Any], options: RayOptions, *, batch_size: int
) -> Any:
    """``ds.map_batches`` through a pool of ``actor`` (constructed with ``kwargs`` and
    ``threads`` = its CPUs), sized and placed as ``options`` say; numpy batches."""
    lo, hi = options.actors
    return ds.map_batches(
        actor,
        fn_constructor_kwargs={**kwargs, "threads": int(max(1, options.cpus_per_actor))},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=(lo, hi) if lo != hi else lo,
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )


def _stream(
    ray: ModuleType,
    rows: list[dict[str, Any]],
    checkpoint: str | None,
    load_kwargs: dict[str, Any],
    decoder: ClipDecoder,
    options: RayOptions,
) -> Iterator[dict[str, np.ndarray]]:
    bs = options.call_size
    blocks = max(1, -(-len(rows) // bs))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    if not options.decode_in_actor:
        ds = ds.map_batches(
            _decode_batch,
            fn_kwargs={"decoder": decoder},
            batch_size=bs,
            batch_format="numpy",
            num_cpus=options.decode_cpus,
        )
    ds = map_with_actors(
        ds,
        _EncodeActor,
        {"checkpoint": checkpoint, "load_kwargs": load_kwargs},
        options,
        batch_size=bs,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


class _PartBuffer:
    """Rows waiting for their part: written when ``part_size`` embeddings have gathered, and
    at the end. A clip id seen before (a retried batch delivered twice) is dropped, so every
    clip is written exactly once. A stopped driver loses only unwritten rows, which a resumed
    job computes again."""

    def __init__(
        self, writer: FolderWriter, clips: list[dict[str, Any]], done: set[str], part_size: int
    ) -> None:
        self.writer, self.clips, self.done, self.part_size = writer, clips, done, part_size
        self.ok: list[int] = []
        self.rows: list[np.ndarray] = []
        self.bad: list[tuple[int, str]] = []
        self.actor_pids: set[int] = set()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        emb = np.asarray(batch["embedding"])
        for i, (pos, err) in enumerate(zip(batch["position"], batch["error"], strict=True)):
            cid = str(self.clips[int(pos)]["id"])
            if cid in self.done:
                continue
            self.done.add(cid)
            if str(err):
                self.bad.append((int(pos), str(err)))
            else:
                self.ok.append(int(pos))
                self.rows.append(emb[i])
        self.actor_pids.update(int(p) for p in np.unique(batch["actor_pid"]))
        if len(self.ok) >= self.part_size:
            self.flush()

    def _ids(self, ks: list[int]) -> list[str]:
        return [str(self.clips[k]["id"]) for k in ks]

    def _clips(self, ks: list[int]) -> list[dict[str, Any]]:
        return [
            {
                "path": self.clips[k]["path"],
                "start": self.clips[k].get("start"),
                "end": self.clips[k].get("end"),
            }
            for k in ks
        ]

    def flush(self) -> None:
        if self.ok:
            self.writer.write_part(
                self.ok, self._ids(self.ok), self._clips(self.ok), np.stack(self.rows)
            )
            self.ok, self.rows = [], []
        if self.bad:
            ks = [k for k, _ in self.bad]
            self.writer.write_errors(ks, self._ids(ks), self._clips(ks), [e for _, e in self.bad])
            self.bad = []
