"""What an exported graph or engine needs beside its weights: the model config, the input
preprocessing, the precision, and where it came from. Written into the ONNX ``metadata_props``
and a JSON sidecar (``<graph>.json``) next to each file, read back by the runtime.

This module is light (json, hashlib, dataclasses): the runtime imports it without onnx.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import InputError
from ..files import atomic_write_text
from ..preprocessing import Preprocessing

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "METADATA_PREFIX",
    "Preprocessing",
    "Sidecar",
    "file_sha256",
    "metadata_props",
    "read_manifest",
    "read_sidecar",
    "write_sidecar",
]

FORMAT_VERSION = 1
MANIFEST = "export.json"  # the export folder's index: graphs, config, preprocessing
METADATA_PREFIX = "egovlpv2."


@dataclass
class Sidecar:
    """Contents of a ``<graph>.json`` sidecar (ONNX file or TensorRT engine)."""

    graph: str
    file: str
    format: str
    precision: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    sha256: str = ""
    source_checkpoint: str = ""
    source_sha256: str = ""
    package_version: str = ""
    torch_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config)

    def preprocessing_spec(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def write_sidecar(path: str | os.PathLike, sidecar: Sidecar) -> Path:
    """Write ``sidecar`` as indented JSON; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(asdict(sidecar), indent=1, sort_keys=True) + "\n")
    return path


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """Read a sidecar; a missing file, invalid JSON or unknown layout raise ``ValueError``
    (``FileNotFoundError`` for a missing file) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export sidecar not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a JSON object, got {type(data).__name__}")
    known = set(Sidecar.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    missing = sorted(
        k
        for k in (
            "graph",
            "file",
            "format",
            "precision",
            "config",
            "preprocessing",
            "inputs",
            "outputs",
        )
        if k not in data
    )
    if unknown or missing:
        raise ValueError(
            f"{path}: not an egovlpv2 export sidecar (unknown keys {unknown}, "
            f"missing keys {missing})"
        )
    if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {data['format_version']} is newer than this "
            f"package understands ({FORMAT_VERSION}); upgrade egovlpv2-rt"
        )
    return Sidecar(**data)


def metadata_props(sidecar: Sidecar) -> dict[str, str]:
    """The ONNX ``metadata_props`` entries (all strings) for a sidecar."""
    return {
        METADATA_PREFIX + "graph": sidecar.graph,
        METADATA_PREFIX + "precision": sidecar.precision,
        METADATA_PREFIX + "config": json.dumps(sidecar.config, sort_keys=True),
        METADATA_PREFIX + "preprocessing": json.dumps(sidecar.preprocessing, sort_keys=True),
        METADATA_PREFIX + "inputs": json.dumps(sidecar.inputs, sort_keys=True),
        METADATA_PREFIX + "outputs": json.dumps(sidecar.outputs, sort_keys=True),
        METADATA_PREFIX + "source_checkpoint": sidecar.source_checkpoint,
        METADATA_PREFIX + "source_sha256": sidecar.source_sha256,
        METADATA_PREFIX + "package_version": sidecar.package_version,
        METADATA_PREFIX + "format_version": str(sidecar.format_version),
    }


def read_manifest(directory: str | os.PathLike) -> dict:
    """The ``export.json`` of an export folder (``FileNotFoundError`` / ``ValueError`` naming
    the file when it is missing or malformed)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: not an egovlpv2 export folder (no {MANIFEST}); "
            "create one with egovlpv2-export"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("config", "preprocessing", "graphs"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    return data
