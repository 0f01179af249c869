"""An embeddings *folder*: what ``egovlpv2 embed --engine ray`` writes, streamed part by part.

Layout of ``OUT/``:

- ``manifest.json``: format, the job's identity (model fingerprint, SHA-256 of the clip list,
  clip count) and, once the job has finished, ``complete: true`` with the counts;
- ``part-<uuid>.parquet``: embedded clips, the columns of a single ``.parquet`` store (``id``,
  ``path``, ``start``, ``end``, ``embedding`` as a fixed-size float32 list) plus ``position``
  (the clip's row in the job's clip list); model fingerprint and path convention in the schema
  metadata, paths relative to the folder;
- ``errors-<uuid>.parquet``: clips that could not be decoded (``id``, ``position``, ``path``,
  ``start``, ``end``, ``error``).

Every file is written atomically (:mod:`egovlpv2_rt.files`), so a part that exists is whole,
whenever the writer was stopped. :func:`~egovlpv2_rt.runtime.store.load_embeddings` reads the
folder in clip-list order; a resumed job (:meth:`FolderWriter.done_ids`) computes only the clips
that no part or error part holds yet.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import atomic_output, atomic_write_text
from .store import (
    FOLDER_FORMAT,
    FOLDER_MANIFEST,
    check_compatible,
    folder_parts,
    paths_for_file,
    pyarrow_modules,
    store_schema_metadata,
)

__all__ = ["FolderWriter"]


class FolderWriter:
    """Writes the parts of one embedding job into ``folder``.

    Args:
        folder: the output folder (created).
        identity: ``{"model": fingerprint, "clips_sha256": ..., "clips": N}``.
        resume: continue a folder that holds parts of the same job; without it a folder with
            parts is refused.
    """

    def __init__(self, folder: str | Path, identity: dict[str, Any], *, resume: bool) -> None:
        self.folder = Path(folder)
        self.identity = identity
        manifest = self.folder / FOLDER_MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--out {self.folder}: exists and is not a folder")
        parts, errors = folder_parts(self.folder) if self.folder.is_dir() else ([], [])
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{manifest}: unreadable manifest ({exc})") from None
            if not resume:
                raise InputError(
                    f"--out {self.folder} holds an embedding job already; pass --resume to "
                    "continue it, or choose another folder"
                )
            check_compatible(old.get("model", {}), identity["model"], str(manifest))
            if old.get("clips_sha256") != identity["clips_sha256"]:
                raise InputError(
                    f"{manifest}: made from another clip list (clips_sha256 "
                    f"{old.get('clips_sha256')!r}, this job {identity['clips_sha256']!r}); "
                    "use another --out folder"
                )
        elif parts or errors:
            raise InputError(f"--out {self.folder}: holds part files but no manifest.json")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool, **counts: int) -> None:
        body = {"format": FOLDER_FORMAT, **self.identity, "complete": complete, **counts}
        atomic_write_text(self.folder / FOLDER_MANIFEST, json.dumps(body, indent=1, sort_keys=True))

    def done_ids(self) -> set[str]:
        """Clip ids that a part or an error part already holds."""
        _, pq = pyarrow_modules()
        parts, errors = folder_parts(self.folder)
        done: set[str] = set()
        for f in parts + errors:
            done.update(str(i) for i in pq.read_table(str(f), columns=["id"]).column("id"))
        return done

    def write_part(
        self,
        positions: list[int],
        ids: list[str],
        clips: list[dict[str, Any]],
        embeddings: np.ndarray,
    ) -> Path:
        """One part: ``embeddings`` ``[n, P]`` float32 of the clips ``ids`` at ``positions``."""
        pa, _ = pyarrow_modules()
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]
        )
        return self._write("part", positions, ids, clips, {"embedding": column})

    def write_errors(
        self, positions: list[int], ids: list[str], clips: list[dict[str, Any]], errors: list[str]
    ) -> Path:
        """One error part: the clips that could not be decoded and why."""
        pa, _ = pyarrow_modules()
        return self._write(
            "errors", positions, ids, clips, {"error": pa.array(errors, pa.string())}
        )

    def _write(
        self,
        kind: str,
        positions: list[int],
        ids: list[str],
        clips: list[dict[str, Any]],
        extra: dict[str, Any],
    ) -> Path:
        """A ``{kind}-<uuid>.parquet`` file: the clip columns, then ``extra``; atomically."""
        pa, pq = pyarrow_modules()
        path = self.folder / f"{kind}-{uuid.uuid4().hex}.parquet"
        rel = paths_for_file(clips, path)
        table = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "position": pa.array(positions, pa.int64()),
                "path": pa.array([str(c["path"]) for c in rel], pa.string()),
                "start": pa.array([c.get("start") for c in rel], pa.float64()),
                "end": pa.array([c.get("end") for c in rel], pa.float64()),
                **extra,
            }
        ).replace_schema_metadata(store_schema_metadata(self.identity["model"]))
        with atomic_output(path) as tmp:
            pq.write_table(table, str(tmp))
        return path

    def finish(self) -> tuple[int, int]:
        """Mark the job complete (after its last part), with the clips its parts and error
        parts hold (read from their footers); returns (embedded, failed)."""
        _, pq = pyarrow_modules()
        parts, errors = folder_parts(self.folder)
        embedded = sum(pq.read_metadata(str(f)).num_rows for f in parts)
        failed = sum(pq.read_metadata(str(f)).num_rows for f in errors)
        self._write_manifest(complete=True, embedded=embedded, failed=failed)
        return embedded, failed
