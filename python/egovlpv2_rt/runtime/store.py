"""Clip-embedding files, shards and FAISS indexes (the ``egovlpv2 embed/index/search`` data).

An :class:`EmbeddingSet` is N clip embeddings ``[N, P]`` float32 with one id and one clip
description (path, start, end) per row, plus the model fingerprint that made them. On disk:

- ``.safetensors``: tensor ``embeddings``; metadata ``egovlpv2.ids`` / ``egovlpv2.clips`` /
  ``egovlpv2.model`` (JSON strings);
- ``.parquet`` (needs pyarrow): columns ``id``, ``path``, ``start``, ``end``, ``embedding``
  (list of float32); the model fingerprint in the schema metadata;
- a folder of Parquet parts written by ``embed --engine ray``
  (:mod:`egovlpv2_rt.runtime.embed_folder`): ``manifest.json`` plus ``part-*.parquet``; read in
  clip-list order;
- shards of a distributed ``embed --shard`` run: ``<stem>.shard-RRRRR-of-WWWWW<suffix>`` plus
  ``<stem>.manifest.json`` listing them; :func:`load_embeddings` on the manifest merges them;
- FAISS index (``.faiss``, needs faiss-cpu): inner product over L2-normalised rows (cosine),
  ``<index>.json`` beside it holds ids, clips, the fingerprint and the index file's SHA-256
  (written after the index, so a pair torn by a crash is detected on load).

Clip paths: in memory (what :func:`load_embeddings` returns and what writers take) they are
absolute, or relative to the working directory of the caller. On disk they are stored relative
to the folder of the file that records them (the store, the index's ``.json``), marked by
``egovlpv2.paths = "relative-to-file"``, so a store and its videos can move together and
``search --rerank`` works from any working directory. Files written before this marker
(paths relative to the working directory of ``embed``): a relative path is resolved against
the file's folder when a file exists there, else against the current working directory (so
they keep working from the folder ``embed`` ran in).

Every writer goes through :mod:`egovlpv2_rt.files` (unique temporary file in the target folder,
fsync, rename; removed on failure). Safetensors stores are written byte-deterministically
(sorted metadata), so equal content gives equal files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import LEGACY_EXECUTION_KEYS
from ..errors import InputError
from ..export.metadata import file_sha256
from ..files import atomic_output, atomic_write_text

__all__ = [
    "EmbeddingSet",
    "FaissIndex",
    "build_faiss_index",
    "check_compatible",
    "folder_parts",
    "load_embedding_errors",
    "load_embeddings",
    "load_faiss_index",
    "manifest_path",
    "model_fingerprint",
    "save_embeddings",
    "shard_path",
    "top_k",
    "validate_index_options",
    "write_manifest",
    "write_safetensors_deterministic",
]

_META_IDS = "egovlpv2.ids"
_META_CLIPS = "egovlpv2.clips"
_META_MODEL = "egovlpv2.model"
_META_PATHS = "egovlpv2.paths"
_RELATIVE_TO_FILE = "relative-to-file"
SUFFIXES = (".safetensors", ".parquet")
FOLDER_FORMAT = "egovlpv2.embeddings-folder/1"
FOLDER_MANIFEST = "manifest.json"


@dataclass
class EmbeddingSet:
    """``embeddings`` [N, P] float32; ``ids`` and ``clips`` (dicts with ``path``, ``start``,
    ``end``) per row; ``model``: fingerprint of the model that made them."""

    ids: list[str]
    embeddings: np.ndarray
    clips: list[dict[str, Any]]
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [N, P], got shape {self.embeddings.shape}")
        n = self.embeddings.shape[0]
        if len(self.ids) != n or len(self.clips) != n:
            raise ValueError(
                f"{n} embeddings but {len(self.ids)} ids and {len(self.clips)} clip records"
            )
        if len(set(self.ids)) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise ValueError(f"clip ids must be unique; {dup!r} appears twice")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def normalized(self) -> np.ndarray:
        """Rows divided by their L2 norm (clamped at 1e-8): [N, P]."""
        norms = np.linalg.norm(self.embeddings, axis=1, keepdims=True)
        return self.embeddings / np.maximum(norms, 1e-8)


def model_fingerprint(
    config_dict: dict, weights_sha256: str, *, num_frames: int, precision: str
) -> dict[str, Any]:
    """What identifies the embedding space: the architecture (config hash), the weights
    (checkpoint SHA-256), the projection size; frames and precision for information."""
    # Execution settings (stored by 0.1 configs) do not change the embedding space.
    arch = {k: v for k, v in config_dict.items() if k not in LEGACY_EXECUTION_KEYS}
    cfg = json.dumps(arch, sort_keys=True).encode()
    return {
        "config_sha256": hashlib.sha256(cfg).hexdigest(),
        "weights_sha256": weights_sha256,
        "projection_dim": int(config_dict.get("projection_dim", 0)),
        "num_frames": int(num_frames),
        "precision": precision,
    }


def check_compatible(stored: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Raise ``ValueError`` when embeddings in ``source`` were made by another model than
    ``current`` (different architecture, weights or projection size)."""
    if not stored:
        return
    if stored.get("projection_dim") != current.get("projection_dim"):
        raise ValueError(
            f"{source}: embeddings have dimension {stored.get('projection_dim')}, "
            f"the model produces {current.get('projection_dim')}: wrong checkpoint "
            "for these embeddings"
        )
    for key, what in (("config_sha256", "architecture"), ("weights_sha256", "weights")):
        a, b = stored.get(key), current.get(key)
        if a and b and a != b:
            raise ValueError(
                f"{source}: embeddings were made by a model with other {what} "
                f"({key} {a[:12]}..., this model {b[:12]}...): wrong checkpoint; "
                "pass the --checkpoint used for embed"
            )


# ------------------------------------------------------------------------------ files


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: embeddings files are .safetensors or .parquet, got "
            f"{path.suffix or 'no suffix'!r}"
        )


def _folder(path: Path) -> str:
    return os.path.dirname(os.path.abspath(path))


def paths_for_file(clips: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Clip records with their paths made relative to ``path``'s folder (POSIX spelling)."""
    folder = _folder(path)
    out = []
    for c in clips:
        c = dict(c)
        p = c.get("path")
        if isinstance(p, str) and p:
            c["path"] = Path(os.path.relpath(os.path.abspath(p), folder)).as_posix()
        out.append(c)
    return out


def paths_from_file(clips: list[dict[str, Any]], path: Path, marked: bool) -> list[dict[str, Any]]:
    """Clip records with absolute paths: stored paths resolved against ``path``'s folder
    (unmarked files: there if the clip exists, else against the working directory)."""
    folder = _folder(path)
    out = []
    for c in clips:
        c = dict(c) if isinstance(c, dict) else {}
        p = c.get("path")
        if isinstance(p, str) and p and not os.path.isabs(p):
            beside = os.path.normpath(os.path.join(folder, p))
            if marked or os.path.exists(beside):
                c["path"] = beside
            else:  # written before paths were stored relative to the file
                c["path"] = os.path.abspath(p)
        out.append(c)
    return out


def write_safetensors_deterministic(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    """Write a safetensors file whose bytes depend only on the content: header keys and
    metadata sorted (the ``safetensors`` package orders them by hash, differently per run).

    ``tensors``: name -> float32 / int64 array (written little-endian, C order)."""
    dtypes = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64"}
    arrays = {}
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in dtypes:
            raise TypeError(f"tensor {name!r}: dtype {a.dtype} is not float32 or int64")
        header[name] = {
            "dtype": dtypes[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        arrays[name] = a
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for name in sorted(arrays):
            f.write(arrays[name].reshape(-1).view(np.uint8).data)


def save_embeddings(path: str | os.PathLike, data: EmbeddingSet) -> Path:
    """Write ``data`` as safetensors or parquet (by suffix), atomically; clip paths are
    stored relative to ``path``'s folder."""
    path = Path(path)
    _check_suffix(path)
    clips = paths_for_file(data.clips, path)
    with atomic_output(path) as tmp:
        if path.suffix == ".safetensors":
            write_safetensors_deterministic(
                tmp,
                {"embeddings": data.embeddings},
                {
                    _META_IDS: json.dumps(data.ids),
                    _META_CLIPS: json.dumps(clips),
                    _META_MODEL: json.dumps(data.model, sort_keys=True),
                    _META_PATHS: _RELATIVE_TO_FILE,
                },
            )
        else:
            pa, pq = _pyarrow()
            table = pa.table(
                {
                    "id": pa.array(data.ids, pa.string()),
                    "path": pa.array([str(c.get("path", "")) for c in clips], pa.string()),
                    "start": pa.array([c.get("start") for c in clips], pa.float64()),
                    "end": pa.array([c.get("end") for c in clips], pa.float64()),
                    "embedding": pa.array(list(data.embeddings), pa.list_(pa.float32())),
                }
            ).replace_schema_metadata(store_schema_metadata(data.model))
            pq.write_table(table, str(tmp))
    return path


def store_schema_metadata(model: dict[str, Any]) -> dict[str, str]:
    """Parquet schema metadata of a store: the model fingerprint and the path convention."""
    return {_META_MODEL: json.dumps(model, sort_keys=True), _META_PATHS: _RELATIVE_TO_FILE}


def pyarrow_modules() -> tuple[ModuleType, ModuleType]:
    """``(pyarrow, pyarrow.parquet)``, or an ImportError naming the package."""
    return _pyarrow()


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("parquet embeddings files need pyarrow: pip install pyarrow") from exc
    return pa, pq


def load_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    """Read an embeddings file, or a shard manifest (``*.manifest.json``: the shards are
    read and concatenated in rank order)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    if path.name.endswith(".manifest.json"):
        return merge_shards(path)
    _check_suffix(path)
    return _read_file(path)[0]


def _read_file(path: Path) -> tuple[EmbeddingSet, Any]:
    """An embeddings file's set, and for a parquet file its whole table (a folder part's other
    columns are read from it, not from the file again)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="numpy") as f:
                    meta = f.metadata() or {}
                    if "embeddings" not in f.keys():  # noqa: SIM118 - safe_open is no dict
                        raise ValueError("no 'embeddings' tensor")
                    emb = f.get_tensor("embeddings")
            except SafetensorError as exc:  # not a ValueError
                raise ValueError(f"not a safetensors file: {exc}") from None
            if _META_IDS not in meta:
                raise ValueError("no clip ids in the metadata")
            clips = json.loads(meta.get(_META_CLIPS, "null")) or [{} for _ in range(len(emb))]
            return EmbeddingSet(
                json.loads(meta[_META_IDS]),
                emb,
                paths_from_file(clips, path, meta.get(_META_PATHS) == _RELATIVE_TO_FILE),
                json.loads(meta.get(_META_MODEL, "{}")),
            ), None
        _, pq = _pyarrow()
        table = pq.read_table(str(path))
        missing = [c for c in ("id", "embedding") if c not in table.column_names]
        if missing:
            raise ValueError(f"missing column(s) {missing}")
        meta = table.schema.metadata or {}
        model = json.loads(meta.get(_META_MODEL.encode(), b"{}"))
        cols = table.to_pydict()
        clips = [
            {"path": p, "start": s, "end": e}
            for p, s, e in zip(
                cols.get("path", [""] * table.num_rows),
                cols.get("start", [None] * table.num_rows),
                cols.get("end", [None] * table.num_rows),
                strict=True,
            )
        ]
        emb = np.array(cols["embedding"], dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError("embedding rows have different lengths")
        marked = meta.get(_META_PATHS.encode()) == _RELATIVE_TO_FILE.encode()
        found = EmbeddingSet(
            [str(i) for i in cols["id"]], emb, paths_from_file(clips, path, marked), model
        )
        return found, table
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError/JSONDecodeError too
        raise InputError(f"{path}: not an egovlpv2 embeddings file ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: unreadable embeddings file ({exc})") from None


# ------------------------------------------------------------------------------ folders


def folder_parts(folder: Path) -> tuple[list[Path], list[Path]]:
    """The embedding parts and the error parts of an embeddings folder, sorted by name."""
    return sorted(folder.glob("part-*.parquet")), sorted(folder.glob("errors-*.parquet"))


def _folder_manifest(folder: Path) -> dict[str, Any]:
    manifest = folder / FOLDER_MANIFEST
    try:
        body = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{folder}: not an embeddings folder (no {FOLDER_MANIFEST}); embed --engine ray "
            "writes one"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{manifest}: unreadable manifest ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FOLDER_FORMAT:
        raise InputError(f"{manifest}: field 'format' is not {FOLDER_FORMAT!r}")
    if not body.get("complete"):
        raise InputError(
            f"{folder}: the embedding job that writes it has not finished (manifest 'complete' "
            "is false); run it again with --resume"
        )
    return body


def _load_folder(folder: Path) -> EmbeddingSet:
    """Every part of a finished embeddings folder, in clip-list order."""
    body = _folder_manifest(folder)
    parts, _ = folder_parts(folder)
    ids: list[str] = []
    clips: list[dict[str, Any]] = []
    rows: list[np.ndarray] = []
    positions: list[int] = []
    for f in parts:
        data, table = _read_file(f)
        if data.model != body.get("model"):
            raise InputError(f"{f}: made by another model than {folder / FOLDER_MANIFEST} names")
        if "position" not in table.column_names:
            raise InputError(f"{f}: not an embeddings folder part (no 'position' column)")
        positions += [int(p) for p in table.column("position").to_pylist()]
        ids += data.ids
        clips += data.clips
        rows.append(data.embeddings)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"{folder}: clip {dup!r} is in more than one part")
    if not rows:
        raise InputError(f"{folder}: no embedded clip (see the errors parts)")
    order = np.argsort(np.asarray(positions), kind="stable")
    emb = np.concatenate(rows)[order]
    return EmbeddingSet(
        [ids[i] for i in order], emb, [clips[i] for i in order], dict(body.get("model", {}))
    )


def load_embedding_errors(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The clips an embeddings folder's job could not decode: ``id``, ``position``, ``path``
    (absolute), ``start``, ``end``, ``error``, in clip-list order."""
    folder = Path(folder)
    _folder_manifest(folder)
    _, pq = _pyarrow()
    out: list[dict[str, Any]] = []
    for f in folder_parts(folder)[1]:
        rows = pq.read_table(str(f)).to_pylist()
        out += paths_from_file(rows, f, True)
    return sorted(out, key=lambda r: int(r["position"]))


# ------------------------------------------------------------------------------ shards


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``emb.safetensors`` -> ``emb.shard-00001-of-00004.safetensors``."""
    out = Path(out)
    _check_suffix(out)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    return out.with_name(f"{out.stem}.shard-{rank:05d}-of-{world_size:05d}{out.suffix}")


def manifest_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.manifest.json")


def write_manifest(out: str | os.PathLike, world_size: int, total_clips: int) -> Path:
    """The manifest of a sharded run (written by rank 0; its content is known up front)."""
    path = manifest_path(out)
    shards = [shard_path(out, r, world_size).name for r in range(world_size)]
    atomic_write_text(
        path,
        json.dumps(
            {
                "format_version": 1,
                "world_size": world_size,
                "total_clips": total_clips,
                "shards": shards,
            },
            indent=1,
        )
        + "\n",
    )
    return path


def merge_shards(manifest: str | os.PathLike | Sequence[str | os.PathLike]) -> EmbeddingSet:
    """Concatenate the shards named by a manifest (or given as a list of files). Missing
    shards, mismatched models or a wrong total raise ``ValueError`` naming them."""
    if isinstance(manifest, (str, os.PathLike)):
        mpath = Path(manifest)
        try:
            info = json.loads(mpath.read_text())
            files = [mpath.parent / s for s in info["shards"]]
            total = info.get("total_clips")
        except (OSError, ValueError, KeyError, TypeError) as exc:  # ValueError: bad JSON/UTF-8
            raise InputError(f"{mpath}: not a shard manifest ({exc})") from None
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(
                f"{mpath}: {len(missing)} shard(s) missing: {', '.join(missing)} "
                "(did every rank finish?)"
            )
        source = str(mpath)
    else:
        files, total, source = [Path(f) for f in manifest], None, "shards"
    if not files:
        raise ValueError(f"{source}: no shards to merge")
    parts = [load_embeddings(f) for f in files]
    first = parts[0]
    for f, p in zip(files[1:], parts[1:], strict=True):
        if p.dim != first.dim:
            raise ValueError(f"{f}: dimension {p.dim} differs from {files[0]} ({first.dim})")
        check_compatible(first.model, p.model, str(f))
    merged = EmbeddingSet(
        [i for p in parts for i in p.ids],
        np.concatenate([p.embeddings for p in parts]),
        [c for p in parts for c in p.clips],
        dict(first.model),
    )
    if total is not None and len(merged) != total:
        raise ValueError(f"{source}: shards hold {len(merged)} clips, the manifest expects {total}")
    return merged


# ------------------------------------------------------------------------------ search


def top_k(embeddings: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k: ``embeddings`` [N, P], ``query`` [P] -> (indices [k'], scores [k'])
    best first, k' = min(k, N). Ties keep file order."""
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
    q = query / max(float(np.linalg.norm(query)), 1e-8)
    scores = e @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


@dataclass
class FaissIndex:
    """A FAISS inner-product index over normalised clip embeddings, with its ids and clips."""

    index: Any
    ids: list[str]
    clips: list[dict[str, Any]]
    model: dict[str, Any]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query [P] -> (indices, cosine scores), best first."""
        if k < 1:
            raise ValueError(f"top-k must be >= 1, got {k}")
        q = np.asarray(query, np.float32).reshape(1, -1)
        q = q / max(float(np.linalg.norm(q)), 1e-8)
        if q.shape[1] != self.index.d:
            raise ValueError(
                f"query dimension {q.shape[1]} != index dimension {self.index.d}: "
                "wrong checkpoint for this index"
            )
        scores, idx = self.index.search(q, min(k, len(self.ids)))
        keep = idx[0] >= 0
        return idx[0][keep], scores[0][keep]


def _faiss() -> ModuleType:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("FAISS indexes need faiss-cpu: pip install faiss-cpu") from exc
    return faiss


INDEX_KINDS = ("flat", "ivf", "hnsw")


def validate_index_options(kind: str, nlist: int | None, n: int, out: str | os.PathLike) -> int:
    """Check the options of :func:`build_faiss_index` for ``n`` embeddings before anything is
    written; returns the number of ivf cells (0 for other kinds).

    Raises:
        InputError: the output is not ``.faiss``, the kind is unknown, ``nlist`` is given for
            another kind than ivf, is < 1 or exceeds ``n``.
    """
    out = Path(out)
    if out.suffix != ".faiss":
        raise InputError(
            f"{out}: a FAISS index file name ends in .faiss (got {out.suffix or 'no suffix'!r})"
        )
    if kind not in INDEX_KINDS:
        raise InputError(f"index kind must be 'flat', 'ivf' or 'hnsw', got {kind!r}")
    if n < 1:
        raise InputError("no embeddings to index")
    _faiss()  # a missing faiss fails here, before any file is written
    if kind != "ivf":
        if nlist is not None:
            raise InputError(f"--nlist {nlist}: only --kind ivf has cells (got --kind {kind})")
        return 0
    if nlist is not None and nlist < 1:
        raise InputError(f"--nlist {nlist}: the number of ivf cells must be >= 1")
    cells = nlist or max(1, round(np.sqrt(n)))
    if cells > n:
        raise InputError(f"--nlist {cells}: an ivf index needs nlist <= the {n} embeddings")
    return int(cells)


def build_faiss_index(
    data: EmbeddingSet,
    path: str | os.PathLike,
    *,
    kind: str = "flat",
    nlist: int | None = None,
    hnsw_m: int = 32,
) -> Path:
    """Write a FAISS index of ``data`` to ``path`` and ``<path>.json`` beside it.

    ``kind``: ``"flat"`` (exact inner product), ``"ivf"`` (inverted lists over ``nlist``
    k-means cells, default ~sqrt(N); needs N >= nlist) or ``"hnsw"`` (graph, ``hnsw_m``
    links). Rows are L2-normalised, so inner product = cosine similarity. Both files are
    written atomically, the ``.json`` (holding the index file's SHA-256) after the index.
    """
    path = Path(path)
    cells = validate_index_options(kind, nlist, len(data), path)
    faiss = _faiss()
    x = np.ascontiguousarray(data.normalized(), dtype=np.float32)
    d = data.dim
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(cells, 8)
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))
        sha = file_sha256(tmp)
    side = Path(str(path) + ".json")
    atomic_write_text(
        side,
        json.dumps(
            {
                "format_version": 1,
                "kind": kind,
                "ids": data.ids,
                "clips": paths_for_file(data.clips, side),
                "model": data.model,
                "paths": _RELATIVE_TO_FILE,
                "index_sha256": sha,
            },
            indent=1,
        )
        + "\n",
    )
    return path


def load_faiss_index(path: str | os.PathLike) -> FaissIndex:
    """Read an index written by :func:`build_faiss_index` (with its ``.json``); an index and
    ``.json`` that do not belong together (other count, other file hash) raise ``ValueError``."""
    faiss = _faiss()
    path = Path(path)
    side = Path(str(path) + ".json")
    for p in (path, side):
        if not p.is_file():
            raise FileNotFoundError(f"FAISS index file not found: {p}")
    try:
        info = json.loads(side.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("ids"), list):
            raise ValueError(f"{side} lists no 'ids'")
        index = faiss.read_index(str(path))
    except (ValueError, RuntimeError) as exc:  # ValueError: bad JSON/UTF-8 in the sidecar
        raise InputError(f"{path}: not a readable FAISS index ({exc})") from None
    if index.ntotal != len(info["ids"]):
        raise ValueError(
            f"{path}: index holds {index.ntotal} vectors but {side} lists {len(info['ids'])} ids"
            " (the pair does not belong together; rebuild it with egovlpv2 index)"
        )
    want = info.get("index_sha256")
    if want and file_sha256(path) != want:
        raise ValueError(
            f"{path}: the index file is not the one {side} describes (SHA-256 differs; an "
            "interrupted or concurrent write?); rebuild it with egovlpv2 index"
        )
    clips = info.get("clips") or [{} for _ in range(index.ntotal)]
    marked = info.get("paths") == _RELATIVE_TO_FILE
    return FaissIndex(
        index, info["ids"], paths_from_file(clips, side, marked), info.get("model", {})
    )
