"""Up-front checks of user tensors: each error names the argument, the expected shape/dtype and
what was received, instead of a shape error deep inside a matmul."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

from ..config import TextConfig, VideoConfig

__all__ = ["check_batch_match", "check_text", "check_video", "skip_value_checks"]

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
    if check_finite and _value_checks_enabled() and not bool(torch.isfinite(video).all()):
        raise ValueError(f"{name}: contains NaN or Inf pixels")
    return video


def check_text(
    input_ids: object,
    attention_mask: object,
    cfg: TextConfig,
    *,
    ids_name: str = "input_ids",
    mask_name: str = "attention_mask",
) -> tuple[Tensor, Tensor]:
    """Validate token ids ``[B, L]`` (integer, in ``[0, vocab_size)``, ``L`` within the position
    table; the range is checked in eager mode only) and the 0/1 mask ``[B, L]`` (integer, bool
    or float). Returns both unchanged."""
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
    if _value_checks_enabled():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{ids_name}: token id {bad} is out of the vocabulary [0, {cfg.vocab_size})"
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
    return input_ids, attention_mask


def check_batch_match(video: Tensor, input_ids: Tensor) -> None:
    """Fusion mode pairs video[i] with text[i]: the batch sizes must agree."""
    if video.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"video and input_ids must have the same batch size (pairs), got "
            f"{video.shape[0]} clips and {input_ids.shape[0]} captions"
        )
