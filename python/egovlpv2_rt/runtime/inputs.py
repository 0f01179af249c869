"""The runtime's input and output conventions: clips (paths, ``(path, start, end)``, ClipSpecs,
dicts or pixel tensors) and captions are checked and normalised here; embeddings leave as numpy
arrays or CPU tensors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..video import ClipSpec

__all__ = [
    "Output",
    "as_clip_spec",
    "batch_size_or",
    "check_texts",
    "clip_label",
    "flatten_clips",
    "l2_normalize",
    "to_output",
]

Output = Literal["numpy", "torch"]


def clip_label(i: int, item: Any) -> str:
    """``clip i`` and, for a clip read from a file, ``(path[@start:end])``."""
    spec = item if isinstance(item, ClipSpec) else None
    if spec is None and not isinstance(item, (Tensor, np.ndarray)):
        try:
            spec = as_clip_spec(item, i)
        except (TypeError, ValueError):
            spec = None
    if spec is None:
        return f"clip {i}"
    where = os.fspath(spec.path)
    if spec.start_sec is not None or spec.end_sec is not None:
        start = "" if spec.start_sec is None else f"{spec.start_sec:g}"
        end = "" if spec.end_sec is None else f"{spec.end_sec:g}"
        where += f"@{start}:{end}"
    return f"clip {i} ({where})"


def as_clip_spec(item: Any, i: int) -> ClipSpec | None:
    """A clip description -> ClipSpec, or None for pixel tensors."""
    if isinstance(item, ClipSpec):
        return item
    if isinstance(item, (str, os.PathLike)):
        return ClipSpec(os.fspath(item))
    if isinstance(item, dict):
        if "path" not in item:
            raise InputError(f"clip {i}: a dict clip needs a 'path' key, got {sorted(item)}")
        return ClipSpec(
            os.fspath(item["path"]),
            item.get("start_sec", item.get("start")),
            item.get("end_sec", item.get("end")),
        )
    if (
        isinstance(item, (tuple, list))
        and len(item) in (1, 3)
        and isinstance(item[0], (str, os.PathLike))
    ):
        start = item[1] if len(item) == 3 else None
        end = item[2] if len(item) == 3 else None
        return ClipSpec(
            os.fspath(item[0]),
            None if start is None else float(start),
            None if end is None else float(end),
        )
    if isinstance(item, (Tensor, np.ndarray)):
        return None
    raise TypeError(
        f"clip {i}: expected a path, (path, start_sec, end_sec), a ClipSpec or a "
        f"pixel tensor [F, 3, S, S], got {type(item).__name__}"
    )


def flatten_clips(clips: Any) -> list[Any]:
    """Accept one clip, a list of clips, or a batch tensor [B, F, 3, S, S]."""
    if isinstance(clips, (Tensor, np.ndarray)):
        if clips.ndim == 5:
            if clips.shape[0] == 0:
                raise InputError("clips: an empty batch [0, F, 3, S, S]; give at least one clip")
            return list(clips)
        if clips.ndim == 4:
            return [clips]
        raise InputError(
            f"clips: a pixel tensor must be [F, 3, S, S] or [B, F, 3, S, S], got "
            f"shape {tuple(clips.shape)}"
        )
    if isinstance(clips, (str, os.PathLike, dict)) or _is_spec(clips):
        return [clips]
    if (
        isinstance(clips, tuple)
        and len(clips) == 3
        and isinstance(clips[0], (str, os.PathLike))
        and not isinstance(clips[1], (str, os.PathLike))
    ):
        return [clips]
    if not isinstance(clips, Sequence) or isinstance(clips, (bytes, bytearray)):
        raise TypeError(
            f"clips: expected a clip or a sequence of clips, got {type(clips).__name__}"
        )
    if len(clips) == 0:
        raise InputError("clips: empty; give at least one clip")
    return list(clips)


def _is_spec(x: Any) -> bool:
    return isinstance(x, ClipSpec)


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Captions as a list of non-blank strings; an empty batch, a blank caption or text that is
    not valid Unicode (lone surrogates: bytes that were not UTF-8, decoded with
    ``surrogateescape``) raise ``InputError`` naming ``what[i]``."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
        raise InputError(f"{what}: expected a non-empty string or list of strings")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}]: expected str, got {type(t).__name__}")
        if not t.strip():
            raise InputError(f"{what}[{i}]: empty text; give a caption or query")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"{what}[{i}]: not valid Unicode text ({exc.object[exc.start]!a} at position "
                f"{exc.start}: bytes that were not UTF-8?)"
            ) from None
        out.append(t)
    return out


def batch_size_or(batch_size: Any, default: int) -> int:
    """``batch_size`` if given (a positive int), else ``default``."""
    if batch_size is None:
        return default
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int (or None), got {batch_size!r}")
    return batch_size


def to_output(x: Tensor, output: Output) -> Any:
    x = x.detach().to("cpu", torch.float32)
    if output == "numpy":
        return x.numpy()
    if output == "torch":
        return x
    raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")


def l2_normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
