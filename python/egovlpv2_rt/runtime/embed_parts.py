"""The part files of an ``embed`` job, so a killed job resumes where it stopped.

While ``egovlpv2 embed --out OUT`` runs, it writes every few batches one part file into
``OUT.parts/`` (``part-00000.safetensors``, ...: the embeddings ``[k, P]`` float32 of the clips
``[start, end)`` of the job's list that were embedded, their list positions and the clips that
failed) and then ``OUT.parts/progress.json``: the job's identity (hash of the clip list, model
fingerprint, backend, device type, batch size, rank and world size) and the parts
done so far. Both are written atomically (:mod:`egovlpv2_rt.files`), ``progress.json`` after the
part it lists, so every part it names is complete; a part it does not name (a kill between the
two writes) is written again.

Parts always end on a batch boundary and a job with the same identity forms the same batches,
so a resumed job computes exactly the embeddings an uninterrupted one would: the final store
is byte-equal to an uninterrupted run's (safetensors; parquet: equal tensors and metadata).

Leftover parts are never mixed into another job or silently dropped: without ``--resume`` a
job refuses to start when ``OUT.parts/`` holds parts (it says to pass ``--resume`` or remove
the folder); with ``--resume`` the identity must match. The folder is removed once the final
store is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import atomic_output, atomic_write_text
from .store import write_safetensors_deterministic

__all__ = ["EmbedParts", "clip_list_sha256", "parts_dir"]

FORMAT_VERSION = 1
_PROGRESS = "progress.json"
_META_PART = "egovlpv2.part"


def parts_dir(target: str | Path) -> Path:
    """``emb.safetensors`` -> ``emb.safetensors.parts``."""
    target = Path(target)
    return target.with_name(target.name + ".parts")


def clip_list_sha256(clips: list[dict[str, Any]]) -> str:
    """SHA-256 of the clip list (id, absolute path, start, end per clip, in order)."""
    rows = [[c["id"], c["path"], c["start"], c["end"]] for c in clips]
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


@dataclass
class _Part:
    file: str
    start: int
    end: int
    kept: list[int]
    failed: list[dict[str, str]]
    embeddings: np.ndarray = field(repr=False)


class EmbedParts:
    """The parts folder of one job (the caller holds ``exclusive_output`` on the target).

    ``identity``: what must be equal for parts to be reused (JSON-serialisable dict).
    ``done``: how many clips of the list the parts on disk cover (``[0, done)``)."""

    def __init__(self, target: str | Path, identity: dict[str, Any], *, resume: bool) -> None:
        self.dir = parts_dir(target)
        self.identity = {"format_version": FORMAT_VERSION, **identity}
        self.parts: list[_Part] = []
        self._open(resume)

    @property
    def done(self) -> int:
        return self.parts[-1].end if self.parts else 0

    # ---------------------------------------------------------------- opening

    def _open(self, resume: bool) -> None:
        d = self.dir
        if d.exists() and not d.is_dir():
            raise InputError(
                f"{d}: exists and is not a folder; remove it (embed keeps parts there)"
            )
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(".*.tmp"):  # temporaries of a killed job (we hold the lock)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        progress = d / _PROGRESS
        if not progress.is_file():
            if any(d.glob("part-*")):
                raise InputError(
                    f"{d}: holds part files but no {_PROGRESS}; remove the folder to start over"
                )
            self._write_progress()
            return
        try:
            record = json.loads(progress.read_text(encoding="utf-8"))
            old_identity, listed = record["identity"], record["parts"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{progress}: unreadable progress record ({exc}); remove {d} to start over"
            ) from None
        if not listed:  # a job killed before its first part: nothing to keep
            self._write_progress()
            return
        if old_identity != self.identity:
            differs = sorted(
                k
                for k in set(old_identity) | set(self.identity)
                if old_identity.get(k) != self.identity.get(k)
            )
            raise InputError(
                f"{d}: holds parts of another embed job (it differs in {', '.join(differs)}); "
                "remove the folder to start over, or rerun that job's exact command with --resume"
            )
        if not resume:
            done = listed[-1]["end"] if listed else 0
            raise InputError(
                f"{d}: holds parts of an unfinished run of this job ({done} of "
                f"{self.identity.get('clips')} clips done); pass --resume to continue it, "
                "or remove the folder to start over"
            )
        for entry in listed:
            self.parts.append(self._read_part(entry))

    def _read_part(self, entry: dict[str, Any]) -> _Part:
        from safetensors import safe_open

        path = self.dir / str(entry.get("file"))
        expected_start = self.done
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {})[_META_PART])
                emb = f.get_tensor("embeddings")
            part = _Part(
                path.name,
                int(meta["start"]),
                int(meta["end"]),
                [int(i) for i in meta["kept"]],
                list(meta["failed"]),
                emb,
            )
            ok = (
                meta.get("clips_sha256") == self.identity["clips_sha256"]
                and part.start == expected_start == entry.get("start")
                and part.end == entry.get("end")
                and emb.shape[0] == len(part.kept)
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{path}: unreadable part file ({exc}); remove {self.dir} to start over"
            ) from None
        if not ok:
            raise InputError(
                f"{path}: does not continue the parts before it (clips {expected_start}..); "
                f"remove {self.dir} to start over"
            )
        return part

    # ---------------------------------------------------------------- writing

    def _write_progress(self) -> None:
        record = {
            "identity": self.identity,
            "done": self.done,
            "parts": [{"file": p.file, "start": p.start, "end": p.end} for p in self.parts],
        }
        atomic_write_text(self.dir / _PROGRESS, json.dumps(record, indent=1) + "\n")

    def add(
        self,
        end: int,
        embeddings: list[np.ndarray],
        kept: list[int],
        failed: list[dict[str, str]],
    ) -> None:
        """Record clips ``[done, end)``: ``embeddings`` (arrays ``[k_i, P]``) of the clips at
        list positions ``kept``, and the clips that ``failed`` (id, error)."""
        rows = (
            np.concatenate(embeddings).astype(np.float32, copy=False)
            if embeddings
            else np.zeros((0, 0), np.float32)
        )
        if rows.shape[0] != len(kept):
            raise ValueError(f"{len(kept)} kept clips but {rows.shape[0]} embeddings")
        part = _Part(f"part-{len(self.parts):05d}.safetensors", self.done, end, kept, failed, rows)
        meta = {
            "clips_sha256": self.identity["clips_sha256"],
            "start": part.start,
            "end": part.end,
            "kept": kept,
            "failed": failed,
        }
        with atomic_output(self.dir / part.file) as tmp:
            write_safetensors_deterministic(
                tmp, {"embeddings": rows}, {_META_PART: json.dumps(meta)}
            )
        self.parts.append(part)
        self._write_progress()

    # ---------------------------------------------------------------- results

    def results(self) -> tuple[list[int], np.ndarray | None, list[dict[str, str]]]:
        """(list positions of the embedded clips, their embeddings ``[N, P]`` float32 or None
        when none was embedded, the failed clips), over all parts in order."""
        kept = [i for p in self.parts for i in p.kept]
        rows = [p.embeddings for p in self.parts if p.kept]
        failed = [f for p in self.parts for f in p.failed]
        return kept, (np.concatenate(rows) if rows else None), failed

    def remove(self) -> None:
        """Delete the parts folder (after the final store is written)."""
        shutil.rmtree(self.dir, ignore_errors=True)
