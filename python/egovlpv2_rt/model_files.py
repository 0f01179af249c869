"""Where a model's files are: the shipped default model, a model folder, an export folder or a
weights file with its tokenizer beside it; and opening them (weights -> ``EgoVLPv2``, tokenizer).

Used by the runtime and by the export, so it sits below both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointMismatchError, WeightsError, load_model
from .config import ModelConfig
from .errors import EgoVLPv2Error, InputError
from .modeling import EgoVLPv2
from .tokenizer import RobertaTokenizer

__all__ = [
    "DefaultModelMissingError",
    "ModelFiles",
    "default_model_dir",
    "default_model_path",
    "load_model_files",
    "load_tokenizer",
    "resolve_checkpoint",
]

PathLike = str | os.PathLike
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class DefaultModelMissingError(EgoVLPv2Error, FileNotFoundError):
    """The default model files are not inside the installed package."""


def default_model_dir() -> Path:
    """Folder of the shipped default model (``egovlpv2_rt/default_model``), whether or not
    its files are present."""
    return Path(__file__).resolve().parent / "default_model"


def default_model_path() -> Path:
    """``model.safetensors`` of the shipped default model; raises
    :class:`DefaultModelMissingError` when the package was installed without it."""
    d = default_model_dir()
    missing = [n for n in ("model.safetensors", "tokenizer.json") if not (d / n).is_file()]
    if missing:
        raise DefaultModelMissingError(
            f"the shipped default model is missing from {d} (no {', '.join(missing)}); "
            "train it with `python -m egovlpv2_rt.train.default_model` or pass a checkpoint"
        )
    return d / "model.safetensors"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's pieces are: the weights (``checkpoint``), the tokenizer files, and an
    export folder (``export.json``) when the checkpoint names one."""

    checkpoint: Path | None
    tokenizer: Path | None
    export_dir: Path | None = None


def _tokenizer_in(directory: Path) -> Path | None:
    if (directory / "tokenizer.json").is_file():
        return directory / "tokenizer.json"
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return directory
    return None


def resolve_checkpoint(checkpoint: PathLike | None = None) -> ModelFiles:
    """Find the files of ``checkpoint``: None = the shipped default model; a folder with
    ``model.safetensors`` and/or an export (``export.json``) and ``tokenizer.json`` (or
    ``vocab.json`` + ``merges.txt``); or a weights file (``.safetensors``, ``.pth``, ...) with
    the tokenizer files beside it."""
    if checkpoint is None:
        path = default_model_path()
        return ModelFiles(path, _tokenizer_in(path.parent))
    path = Path(checkpoint)
    if path.is_dir():
        weights = path / "model.safetensors"
        export = path if (path / "export.json").is_file() else None
        if not weights.is_file() and export is None:
            raise FileNotFoundError(
                f"checkpoint folder {path} has neither model.safetensors "
                "nor an export (export.json)"
            )
        return ModelFiles(weights if weights.is_file() else None, _tokenizer_in(path), export)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix not in _CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"checkpoint {path}: unknown file type {path.suffix!r}; expected one "
            f"of {', '.join(_CHECKPOINT_SUFFIXES)} or a model folder"
        )
    return ModelFiles(path, _tokenizer_in(path.parent))


def load_model_files(
    files: ModelFiles,
    *,
    config: ModelConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention_impl: str = "auto",
) -> EgoVLPv2:
    """Build the ``EgoVLPv2`` of ``files.checkpoint`` (eval mode). A file that is not a
    checkpoint, or one that does not fit the config, raises ``ValueError`` naming it."""
    if files.checkpoint is None:
        raise FileNotFoundError("no model weights (model.safetensors) to load")
    try:
        return load_model(
            files.checkpoint, config, attention_impl=attention_impl, dtype=dtype, device=device
        )
    except (CheckpointMismatchError, WeightsError, FileNotFoundError):
        raise  # their messages name the file already
    except (ValueError, TypeError) as exc:
        if isinstance(exc, EgoVLPv2Error) and os.fspath(files.checkpoint) in str(exc):
            raise  # already names the file
        raise InputError(f"{files.checkpoint}: {exc}") from exc
    except Exception as exc:  # safetensors and pickle raise their own types
        raise InputError(
            f"{files.checkpoint}: not a readable EgoVLPv2 checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


def load_tokenizer(path: Path | None, max_length: int) -> RobertaTokenizer:
    """The tokenizer at ``path`` (``tokenizer.json``, or a folder with it or with ``vocab.json``
    + ``merges.txt``), truncating to ``max_length`` tokens."""
    if path is None:
        raise FileNotFoundError(
            "no tokenizer: expected tokenizer.json (or vocab.json + "
            "merges.txt) beside the checkpoint; pass tokenizer="
        )
    path = Path(path)
    if path.is_dir():
        return RobertaTokenizer.from_directory(path, max_length=max_length)
    return RobertaTokenizer.from_tokenizer_json(path, max_length=max_length)
