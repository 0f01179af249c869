"""Up-front checks of user tensors: each error names the argument, the expected shape/dtype and
what was received, instead of a shape error deep inside a matmul.

Value checks (finite pixels, token ids in range, 0/1 masks, finite weights) read tensor data, so
each is one fused reduction per call followed by one host read, never a read per element or per
op. Finiteness uses a sum: a NaN or an Inf anywhere makes the sum non-finite, so a finite sum
proves every element finite, and only a non-finite sum (NaN/Inf, or a rare overflow of huge
finite values) pays for the exact elementwise test. On a CPU the sum is about 20x cheaper than
``torch.isfinite(x).all()``, which writes a boolean copy of ``x``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from ..config import TextConfig, VideoConfig
from ..errors import InputError

__all__ = [
    "WeightsError",
    "check_batch_match",
    "check_mask_values",
    "check_text",
    "check_video",
    "check_weights",
    "nonfinite_rows",
    "skip_value_checks",
]


class WeightsError(InputError):
    """A weights tensor is not finite, or has an integer dtype where the model holds a floating
    point one; the message names the tensor and the file."""


_skip = threading.local()


@contextlib.contextmanager
def skip_value_checks() -> Iterator[None]:
    """Within this block (in this thread), skip the data-dependent checks (token range, finite
    pixels); shape and dtype checks still run. For callers that build valid inputs themselves
    and cannot afford a host read, e.g. while a CUDA graph is captured. Nests."""
    _skip.depth = getattr(_skip, "depth", 0) + 1
    try:
        yield
    finally:
        _skip.depth -= 1


def _value_checks_enabled() -> bool:
    """Value checks (token range, finite pixels) read tensor data: a host sync, and a graph
    break under ``torch.compile``/export. They run in eager mode only, outside
    :func:`skip_value_checks`; shape and dtype checks always run."""
    return not (
        getattr(_skip, "depth", 0) > 0
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def _finite_sums(tensors: list[Tensor]) -> list[bool]:
    """Whether each tensor's sum is finite: one reduction per tensor, one host read per device.
    Half-precision tensors are summed in float32, so that a sum of many ordinary values does not
    overflow. A finite sum proves every element finite; a non-finite one needs the exact test."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out = [True] * len(tensors)
    for idx in by_device.values():
        sums = torch.stack([_sum32(tensors[i]) for i in idx])
        for i, ok in zip(idx, torch.isfinite(sums).tolist(), strict=True):
            out[i] = bool(ok)
    return out


def _sum32(t: Tensor) -> Tensor:
    acc = torch.float32 if t.element_size() < 4 else t.dtype
    return t.sum(dtype=acc).to(torch.float64)


def nonfinite_rows(x: Tensor) -> list[int]:
    """Rows (indices along dim 0) of a floating tensor ``[B, ...]`` that hold a NaN or an Inf.
    One fused per-row sum and one host read when every row is finite (the usual case); only
    rows whose sum is not finite are tested element by element."""
    if x.shape[0] == 0 or x.numel() == 0:
        return []
    acc = torch.float32 if x.element_size() < 4 else x.dtype
    sums = x.reshape(x.shape[0], -1).sum(1, dtype=acc)
    flagged = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
    return [i for i in flagged if not bool(torch.isfinite(x[i]).all())]


def _require_tensor(x: object, name: str, expected: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {expected}, got {type(x).__name__}")
    return x


def check_video(
    video: object,
    cfg: VideoConfig,
    *,
    model_dtype: torch.dtype | None = None,
    check_finite: bool = True,
    name: str = "video",
) -> Tensor:
    """Validate pixels ``[B, F, C, H, W]``: floating dtype (the model's unless autocast is on),
    ``1 <= F <= cfg.num_frames``, ``C == cfg.in_chans``, ``H == W == cfg.img_size`` (a multiple
    of ``cfg.patch_size``), and optionally finite values (eager mode only). Returns ``video``
    unchanged."""
    expected = (
        f"[B, F<={cfg.num_frames}, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}] floating point"
    )
    video = _require_tensor(video, name, expected)
    if not video.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating point tensor {expected}, got dtype {video.dtype}"
        )
    if (
        model_dtype is not None
        and video.dtype != model_dtype
        and not torch.is_autocast_enabled(video.device.type)
    ):
        raise TypeError(
            f"{name}: expected dtype {model_dtype} (the model's parameter dtype), "
            f"got {video.dtype}; cast the input or the model"
        )
    if video.dim() != 5:
        raise ValueError(f"{name}: expected rank 5 {expected}, got shape {tuple(video.shape)}")
    b, f, c, h, w = video.shape
    if b == 0:
        raise ValueError(f"{name}: empty batch, shape {tuple(video.shape)}")
    if not 1 <= f <= cfg.num_frames:
        raise ValueError(
            f"{name}: frame count F={f} must be in [1, {cfg.num_frames}] (the "
            f"configured maximum, video.num_frames); shape {tuple(video.shape)}"
        )
    if c != cfg.in_chans:
        raise ValueError(
            f"{name}: expected {cfg.in_chans} channels at dim 2 {expected}, "
            f"got shape {tuple(video.shape)}"
        )
    if h % cfg.patch_size or w % cfg.patch_size:
        raise ValueError(
            f"{name}: image size {h}x{w} is not divisible by the patch size "
            f"{cfg.patch_size}; expected {expected}"
        )
    if h != cfg.img_size or w != cfg.img_size:
        raise ValueError(
            f"{name}: image size {h}x{w} does not match the configured img_size "
            f"{cfg.img_size}x{cfg.img_size} (position embeddings are per patch)"
        )
    if check_finite and _value_checks_enabled():
        bad = nonfinite_rows(video)
        if bad:
            raise InputError(
                f"{name}: contains NaN or Inf pixels (batch rows {_short_list(bad)}); "
                "expected finite normalised pixels"
            )
    return video


def _short_list(items: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def check_text(
    input_ids: object,
    attention_mask: object,
    cfg: TextConfig,
    *,
    ids_name: str = "input_ids",
    mask_name: str = "attention_mask",
) -> tuple[Tensor, Tensor]:
    """Validate token ids ``[B, L]`` (integer, in ``[0, vocab_size)``, ``L`` within the position
    table) and the mask ``[B, L]`` (integer, bool or float holding only 0 and 1). The id range
    and the mask values are checked in eager mode only, with one host read for both; a value
    error is an :class:`InputError` naming the argument and the value. Returns both
    unchanged."""
    expected = f"[B, L<={cfg.max_text_length}] integer token ids"
    input_ids = _require_tensor(input_ids, ids_name, expected)
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(
            f"{ids_name}: expected an integer tensor {expected}, got dtype {input_ids.dtype}"
        )
    if input_ids.dim() != 2:
        raise ValueError(
            f"{ids_name}: expected rank 2 {expected}, got shape {tuple(input_ids.shape)}"
        )
    b, length = input_ids.shape
    if b == 0 or length == 0:
        raise ValueError(f"{ids_name}: empty tensor, shape {tuple(input_ids.shape)}")
    if length > cfg.max_text_length:
        raise ValueError(
            f"{ids_name}: sequence length {length} exceeds the maximum "
            f"{cfg.max_text_length} (max_position_embeddings "
            f"{cfg.max_position_embeddings} minus pad offset)"
        )
    mask_expected = f"[{b}, {length}] 0/1 mask (shape of {ids_name})"
    attention_mask = _require_tensor(attention_mask, mask_name, mask_expected)
    if attention_mask.is_complex():
        raise TypeError(
            f"{mask_name}: expected an integer, bool or float tensor "
            f"{mask_expected}, got dtype {attention_mask.dtype}"
        )
    if tuple(attention_mask.shape) != (b, length):
        raise ValueError(
            f"{mask_name}: expected shape {mask_expected}, got {tuple(attention_mask.shape)}"
        )
    if _value_checks_enabled():
        # Token range and mask values in one host read.
        not01 = _not_01(attention_mask)
        lo, hi, mask_bad = torch.stack(
            [input_ids.min(), input_ids.max(), not01.any().to(input_ids.device, input_ids.dtype)]
        ).tolist()
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(
                f"{ids_name}: token id {bad} is out of the vocabulary [0, {cfg.vocab_size})"
            )
        if mask_bad:
            _raise_not_01(attention_mask, not01, mask_name)
    return input_ids, attention_mask


def _not_01(mask: Tensor) -> Tensor:
    """Elementwise: the value is neither 0 nor 1 (NaN included)."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask)
    return (mask != 0) & (mask != 1)


def _raise_not_01(mask: Tensor, not01: Tensor, name: str) -> None:
    where = torch.nonzero(not01)[0].tolist()
    value = mask[tuple(where)].item()
    count = int(not01.sum())
    raise InputError(
        f"{name}: a mask holds only 0 and 1 (bool, integer or float), found {value!r} at "
        f"{where} ({count} value(s) outside {{0, 1}}, dtype {mask.dtype})"
    )


def check_mask_values(mask: Tensor, name: str = "attention_mask") -> Tensor:
    """Raise :class:`InputError` naming ``name`` and the first bad value unless every element
    of ``mask`` is 0 or 1 (bool, integer or float). One reduction and one host read. Returns
    ``mask`` unchanged."""
    not01 = _not_01(mask)
    if bool(not01.any()):
        _raise_not_01(mask, not01, name)
    return mask


def check_batch_match(video: Tensor, input_ids: Tensor) -> None:
    """Fusion mode pairs video[i] with text[i]: the batch sizes must agree."""
    if video.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"video and input_ids must have the same batch size (pairs), got "
            f"{video.shape[0]} clips and {input_ids.shape[0]} captions"
        )


def check_weights(
    tensors: Mapping[str, Tensor], reference: Mapping[str, torch.dtype], source: str
) -> None:
    """Refuse weights that would load silently but compute garbage: a tensor whose reference
    (the model's own parameter or buffer of that name) is floating point must be floating point
    too (an integer or bool tensor would be cast without a word) and finite; a tensor whose
    reference is an integer or bool buffer (``position_ids``) must not be floating point.
    Tensors without a reference are not checked (they are not loaded).

    One pass: a sum per floating tensor, one host read per device; only tensors whose sum is
    not finite are tested element by element. Raises :class:`WeightsError` naming ``source``
    (the file) and every offending tensor (the first 5 in full)."""
    problems: list[str] = []
    floats: list[tuple[str, Tensor]] = []
    for key, t in tensors.items():
        ref = reference.get(key)
        if ref is None:
            continue
        if ref.is_floating_point:
            if not t.is_floating_point():
                problems.append(
                    f"{key!r} has dtype {t.dtype} where the model holds {ref} "
                    "(a floating point tensor is expected)"
                )
            else:
                floats.append((key, t))
        elif t.is_floating_point() or t.is_complex():
            problems.append(
                f"{key!r} has dtype {t.dtype} where the model holds the integer buffer {ref}"
            )
    sums_ok = _finite_sums([t for _, t in floats])
    for (key, t), ok in zip(floats, sums_ok, strict=True):
        if ok:
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if nan or inf:
            problems.append(f"{key!r} holds {nan} NaN and {inf} Inf of {t.numel()} values")
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise WeightsError(
            f"{source}: bad weights tensor(s): "
            + "; ".join(problems[:5])
            + more
            + " (weights must be finite floating point numbers; the file is damaged or is not "
            "this model's)"
        )
