"""Clip-embedding files, shards and FAISS indexes (the ``egovlpv2 embed/index/search`` data).

An :class:`EmbeddingSet` is N clip embeddings ``[N, P]`` float32 with one id and one clip
description (path, start, end) per row, plus the model fingerprint that made them. On disk:

- ``.safetensors``: tensor ``embeddings``; metadata ``egovlpv2.ids`` / ``egovlpv2.clips`` /
  ``egovlpv2.model`` (JSON strings);
- ``.parquet`` (needs pyarrow): columns ``id``, ``path``, ``start``, ``end``, ``embedding``
  (list of float32); the model fingerprint in the schema metadata;
- shards of a distributed ``embed --shard`` run: ``<stem>.shard-RRRRR-of-WWWWW<suffix>`` plus
  ``<stem>.manifest.json`` listing them; :func:`load_embeddings` on the manifest merges them;
- FAISS index (``.faiss``, needs faiss-cpu): inner product over L2-normalised rows (cosine),
  ``<index>.json`` beside it holds ids, clips and the fingerprint.
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

__all__ = [
    "EmbeddingSet",
    "FaissIndex",
    "build_faiss_index",
    "check_compatible",
    "load_embeddings",
    "load_faiss_index",
    "manifest_path",
    "model_fingerprint",
    "save_embeddings",
    "shard_path",
    "top_k",
    "write_manifest",
]

_META_IDS = "egovlpv2.ids"
_META_CLIPS = "egovlpv2.clips"
_META_MODEL = "egovlpv2.model"
SUFFIXES = (".safetensors", ".parquet")


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


def save_embeddings(path: str | os.PathLike, data: EmbeddingSet) -> Path:
    """Write ``data`` as safetensors or parquet (by suffix)."""
    path = Path(path)
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(
            {"embeddings": np.ascontiguousarray(data.embeddings)},
            str(tmp),
            metadata={
                _META_IDS: json.dumps(data.ids),
                _META_CLIPS: json.dumps(data.clips),
                _META_MODEL: json.dumps(data.model, sort_keys=True),
            },
        )
    else:
        pa, pq = _pyarrow()
        table = pa.table(
            {
                "id": pa.array(data.ids, pa.string()),
                "path": pa.array([str(c.get("path", "")) for c in data.clips], pa.string()),
                "start": pa.array([c.get("start") for c in data.clips], pa.float64()),
                "end": pa.array([c.get("end") for c in data.clips], pa.float64()),
                "embedding": pa.array(list(data.embeddings), pa.list_(pa.float32())),
            }
        ).replace_schema_metadata({_META_MODEL: json.dumps(data.model, sort_keys=True)})
        pq.write_table(table, str(tmp))
    os.replace(tmp, path)  # atomic: readers never see a half-written file
    return path


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
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    if path.name.endswith(".manifest.json"):
        return merge_shards(path)
    _check_suffix(path)
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
            return EmbeddingSet(
                json.loads(meta[_META_IDS]),
                emb,
                json.loads(meta.get(_META_CLIPS, "null")) or [{} for _ in range(len(emb))],
                json.loads(meta.get(_META_MODEL, "{}")),
            )
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
        return EmbeddingSet([str(i) for i in cols["id"]], emb, clips, model)
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError/JSONDecodeError too
        raise InputError(f"{path}: not an egovlpv2 embeddings file ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: unreadable embeddings file ({exc})") from None


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "format_version": 1,
                "world_size": world_size,
                "total_clips": total_clips,
                "shards": shards,
            },
            indent=1,
        )
        + "\n"
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
    links). Rows are L2-normalised, so inner product = cosine similarity.
    """
    faiss = _faiss()
    path = Path(path)
    x = np.ascontiguousarray(data.normalized(), dtype=np.float32)
    d = data.dim
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        cells = nlist or max(1, round(np.sqrt(len(data))))
        if cells > len(data):
            raise ValueError(f"ivf index: nlist {cells} exceeds the {len(data)} embeddings")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(cells, 8)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index kind must be 'flat', 'ivf' or 'hnsw', got {kind!r}")
    index.add(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    Path(str(path) + ".json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "kind": kind,
                "ids": data.ids,
                "clips": data.clips,
                "model": data.model,
            },
            indent=1,
        )
        + "\n"
    )
    return path


def load_faiss_index(path: str | os.PathLike) -> FaissIndex:
    """Read an index written by :func:`build_faiss_index` (with its ``.json``)."""
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
        )
    return FaissIndex(
        index, info["ids"], info.get("clips") or [{}] * index.ntotal, info.get("model", {})
    )
