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
from ..video.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "FORMAT_VERSION",
    "METADATA_PREFIX",
    "Preprocessing",
    "Sidecar",
    "file_sha256",
    "metadata_props",
    "read_sidecar",
    "write_sidecar",
]

FORMAT_VERSION = 1
METADATA_PREFIX = "egovlpv2."


@dataclass(frozen=True)
class Preprocessing:
    """How clips and captions become model inputs.

    Video: ``num_frames`` frames sampled per clip (``sampling``: ``"uniform"`` = the midpoint of
    each of F equal segments), resized so the short side is ``resize``, center-cropped to
    ``crop``, resized to ``size`` x ``size``, scaled to [0, 1] and normalised with ``mean`` /
    ``std`` (RGB): ``[B, F, 3, size, size]`` float. This is the eval transform the training
    and EgoMCQ evaluation code (``data.clips.ClipReader``) use.
    Text: RoBERTa BPE (``tokenizer`` file), ``<s> ... </s>``, padded with ``pad_token_id``,
    at most ``max_text_length`` tokens.
    """

    num_frames: int
    size: int
    resize: int
    crop: int
    sampling: str = "uniform"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_text_length: int = 32
    pad_token_id: int = 1
    tokenizer: str = "tokenizer.json"

    @classmethod
    def for_config(cls, config: ModelConfig, *, num_frames: int | None = None,
                   max_text_length: int | None = None) -> Preprocessing:
        """Defaults for ``config``: F = ``video.num_frames``, resize = crop = size =
        ``video.img_size``, text length = the position table's limit."""
        s = config.video.img_size
        return cls(num_frames=num_frames or config.video.num_frames, size=s, resize=s, crop=s,
                   max_text_length=max_text_length or config.text.max_text_length,
                   pad_token_id=config.text.pad_token_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"preprocessing: unknown key(s) {unknown}")
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(x) for x in data[key])
        return cls(**data)


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
    path.write_text(json.dumps(asdict(sidecar), indent=1, sort_keys=True) + "\n")
    return path


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """Read a sidecar; a missing file, invalid JSON or unknown layout raise ``ValueError``
    (``FileNotFoundError`` for a missing file) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export sidecar not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a JSON object, got {type(data).__name__}")
    known = set(Sidecar.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    missing = sorted(k for k in ("graph", "file", "format", "precision", "config",
                                 "preprocessing", "inputs", "outputs") if k not in data)
    if unknown or missing:
        raise ValueError(f"{path}: not an egovlpv2 export sidecar (unknown keys {unknown}, "
                         f"missing keys {missing})")
    if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data['format_version']} is newer than this "
                         f"package understands ({FORMAT_VERSION}); upgrade egovlpv2-rt")
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
