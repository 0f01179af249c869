"""Python face of the custom ops (contract: docs/OPS.md).

Two implementations of each op, and a choice between them:

* ``reference``: plain PyTorch written like the original EgoVLPv2 code (einops rearrange, cat,
  repeat, einsum). It is the numerical reference and the baseline of the benchmarks.
* ``fused``: the ``torch.ops.egovlpv2`` custom ops (C++ on CPU, CUDA kernels on GPU).
* ``auto``: ``fused`` where its kernels run for the inputs' device and dtype
  (:func:`fused_available`), else ``reference``; decided per call, so a model moved between
  devices or dtypes keeps taking the fast path where there is one.

Importing this module registers, for the fused ops, the fake (meta) kernels used by
``torch.compile`` / export, the flop counter's formulas (:mod:`.op_flops`) and the autograd
formulas: the backward of the attention cores runs
in the C++ backward ops; the gated op's projection, gate, bias and residual gradients are GEMMs
and reductions done here. ``softmax_lse`` is not differentiable, and the backward ops themselves
have no autograd (no double backward through the fused path).
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

import torch
from einops import rearrange, repeat
from torch import Tensor

from . import _extension
from .op_flops import register_flop_formulas

__all__ = [
    "IMPLS",
    "divided_space_time_attention",
    "fused_available",
    "gated_cross_attention",
    "reference_divided_space_time_attention",
    "reference_gated_cross_attention",
]

IMPLS = ("reference", "fused", "auto")

# dtypes of the fused kernels, per device type.
_FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    sim = torch.einsum("b i d, b j d -> b i j", q, k)
    return torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)


def reference_divided_space_time_attention(
    qkv: Tensor, num_heads: int, num_frames: int, temporal: bool, scale: float
) -> Tensor:
    """Divided attention exactly as the original ``VarAttention`` builds it.

    qkv: [B, T, 3*D] float, T = 1 + F*N. Returns [B, T, D] (the input of ``proj``).
    """
    h = num_heads
    q, k, v = qkv.chunk(3, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))
    q = q * scale
    (cls_q, q_), (cls_k, k_), (cls_v, v_) = ((t[:, 0:1], t[:, 1:]) for t in (q, k, v))
    # The CLS query attends to every token of the clip.
    cls_out = _attend(cls_q, k, v)
    n_patches = (qkv.shape[1] - 1) // num_frames
    if temporal:
        pattern_from, pattern_to, dims = "b (f n) d", "(b n) f d", {"n": n_patches}
    else:
        pattern_from, pattern_to, dims = "b (f n) d", "(b f) n d", {"f": num_frames}
    q_, k_, v_ = (rearrange(t, f"{pattern_from} -> {pattern_to}", **dims) for t in (q_, k_, v_))
    r = q_.shape[0] // cls_k.shape[0]
    cls_k, cls_v = (repeat(t, "b () d -> (b r) () d", r=r) for t in (cls_k, cls_v))
    k_ = torch.cat((cls_k, k_), dim=1)
    v_ = torch.cat((cls_v, v_), dim=1)
    out = _attend(q_, k_, v_)
    out = rearrange(out, f"{pattern_to} -> {pattern_from}", **dims)
    out = torch.cat((cls_out, out), dim=1)
    return rearrange(out, "(b h) n d -> b n (h d)", h=h)


def reference_gated_cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    proj_weight: Tensor,
    proj_bias: Tensor | None,
    gate: Tensor,
    residual: Tensor,
    num_heads: int,
    scale: float,
) -> Tensor:
    """``residual + gate * proj(softmax((q*scale) k^T + key_mask) v)``.

    q: [B, Lq, D]; k, v: [B, Lk, D]; key_mask: [B, Lk] additive or None; proj_weight
    [Dout, D]; gate: [1]; residual: [B, Lq, Dout]. Returns [B, Lq, Dout].
    """
    h = num_heads
    qh, kh, vh = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))
    scores = torch.matmul(qh * scale, kh.transpose(-1, -2))
    if key_mask is not None:
        scores = scores + key_mask[:, None, None, :]
    attn = torch.matmul(scores.softmax(dim=-1), vh)
    attn = rearrange(attn, "b h n d -> b n (h d)")
    return residual + gate * torch.nn.functional.linear(attn, proj_weight, proj_bias)


# ---------------------------------------------------------------------------------------------
# Input validation of the Python face (clear ValueError / TypeError naming the argument).


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def fused_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused kernels run for tensors of ``dtype`` on ``device`` here (the extension
    is built and loaded, with kernels for the device type and the dtype)."""
    ext = _extension.loaded()
    if ext is None or dtype not in _FUSED_DTYPES.get(device.type, ()):
        return False
    return device.type == "cpu" or (device.type == "cuda" and ext.cuda_library is not None)


def _choose(impl: str, x: object) -> str:
    """``impl`` with ``auto`` decided for the tensor ``x`` (after any autocast cast)."""
    _check_impl(impl)
    if impl != "auto":
        return impl
    if not isinstance(x, Tensor):
        return "reference"  # the validation that follows names the bad argument
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = (
            torch.float32
            if _autocast_falls_back(x.device.type)
            else torch.get_autocast_dtype(x.device.type)
        )
    return "fused" if fused_available(x.device, dtype) else "reference"


def _check_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_scale(scale: object) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python float, got {type(scale).__name__}")


def _check_tensor(x: object, name: str, ndim: int, shape: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape} ({ndim} dims), got {tuple(x.shape)}")


def _check_like(x: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(
            f"{name} must be on the device of {ref_name} ({ref.device}), got {x.device}"
        )


def _check_fused_dtype(x: Tensor, name: str) -> None:
    allowed = _FUSED_DTYPES.get(x.device.type, ())
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed) or "none"
        raise TypeError(
            f"impl='fused' on {x.device.type} supports {names}; {name} is {x.dtype} "
            f"(use impl='reference' for other dtypes)"
        )


def _validate_space_time(
    qkv: object, num_heads: object, num_frames: object, temporal: object, scale: object
) -> None:
    _check_tensor(qkv, "qkv", 3, "[B, T, 3*D]")
    assert isinstance(qkv, Tensor)
    _check_int(num_heads, "num_heads")
    _check_int(num_frames, "num_frames")
    assert isinstance(num_heads, int) and isinstance(num_frames, int)
    if not isinstance(temporal, bool):
        raise TypeError(f"temporal must be a bool, got {type(temporal).__name__}")
    _check_scale(scale)
    width = qkv.shape[2]
    if width % (3 * num_heads) != 0 or width == 0:
        raise ValueError(
            f"qkv must have shape [B, T, 3*D] with D divisible by num_heads={num_heads}; "
            f"got last dim {width}"
        )
    tokens = qkv.shape[1]
    if tokens < 2 or (tokens - 1) % num_frames != 0:
        raise ValueError(
            f"qkv must have T = 1 + num_frames*N tokens (CLS first, N >= 1) with "
            f"num_frames={num_frames}; got T={tokens}"
        )


def _validate_cross(
    q: object,
    k: object,
    v: object,
    key_mask: object,
    proj_weight: object,
    proj_bias: object,
    gate: object,
    residual: object,
    num_heads: object,
    scale: object,
) -> None:
    _check_tensor(q, "q", 3, "[B, Lq, D]")
    _check_tensor(k, "k", 3, "[B, Lk, D]")
    _check_tensor(v, "v", 3, "[B, Lk, D]")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    _check_like(k, q, "k", "q")
    _check_like(v, q, "v", "q")
    _check_int(num_heads, "num_heads")
    assert isinstance(num_heads, int)
    _check_scale(scale)
    batch, q_len, dim = q.shape
    k_len = k.shape[1]
    if dim % num_heads != 0:
        raise ValueError(f"q's last dim ({dim}) must be divisible by num_heads={num_heads}")
    if k.shape[0] != batch or k.shape[2] != dim or k_len == 0:
        raise ValueError(
            f"k must have shape [B, Lk, D] = [{batch}, Lk >= 1, {dim}], got {tuple(k.shape)}"
        )
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if key_mask is not None:
        _check_tensor(key_mask, "key_mask", 2, "[B, Lk]")
        assert isinstance(key_mask, Tensor)
        _check_like(key_mask, q, "key_mask", "q")
        if tuple(key_mask.shape) != (batch, k_len):
            raise ValueError(
                f"key_mask must have shape [B, Lk] = [{batch}, {k_len}], "
                f"got {tuple(key_mask.shape)}"
            )
    _check_tensor(proj_weight, "proj_weight", 2, "[Dout, D]")
    assert isinstance(proj_weight, Tensor)
    _check_like(proj_weight, q, "proj_weight", "q")
    out_dim = proj_weight.shape[0]
    if proj_weight.shape[1] != dim:
        raise ValueError(
            f"proj_weight must have shape [Dout, D] with D={dim}, got {tuple(proj_weight.shape)}"
        )
    if proj_bias is not None:
        _check_tensor(proj_bias, "proj_bias", 1, "[Dout]")
        assert isinstance(proj_bias, Tensor)
        _check_like(proj_bias, q, "proj_bias", "q")
        if proj_bias.shape[0] != out_dim:
            raise ValueError(
                f"proj_bias must have shape [Dout] = [{out_dim}], got {tuple(proj_bias.shape)}"
            )
    if not isinstance(gate, Tensor):
        raise TypeError(f"gate must be a one-element torch.Tensor, got {type(gate).__name__}")
    if gate.device != q.device:
        raise ValueError(f"gate must be on the device of q ({q.device}), got {gate.device}")
    # A float16/bfloat16 model may keep its gates (learned scalars) in float32.
    gate_dtypes = (
        (q.dtype, torch.float32) if q.dtype in (torch.float16, torch.bfloat16) else (q.dtype,)
    )
    if gate.dtype not in gate_dtypes:
        raise TypeError(f"gate must have the dtype of q ({q.dtype}), got {gate.dtype}")
    if gate.numel() != 1:
        raise ValueError(f"gate must hold one element, got shape {tuple(gate.shape)}")
    _check_tensor(residual, "residual", 3, "[B, Lq, Dout]")
    assert isinstance(residual, Tensor)
    _check_like(residual, q, "residual", "q")
    if tuple(residual.shape) != (batch, q_len, out_dim):
        raise ValueError(
            f"residual must have shape [B, Lq, Dout] = [{batch}, {q_len}, {out_dim}], "
            f"got {tuple(residual.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Public face.


# A tensor argument, or an optional one (None passes through _autocast).
_MaybeTensor = TypeVar("_MaybeTensor", Tensor, Tensor | None)


def _autocast(device_type: str, *tensors: _MaybeTensor) -> tuple[_MaybeTensor, ...]:
    """Under torch.autocast the fused ops run in the autocast dtype, like the Linears feeding them.

    Without this, autocast hands the ops bf16 activations next to fp32 weights and gates.
    A dtype the device's kernels lack (bfloat16 on the CPU) runs in float32.
    """
    if not torch.is_autocast_enabled(device_type):
        return tensors
    # bfloat16 autocast on the CPU: the C++ kernels are float32/float64, so the attention runs in
    # float32 (autocast's own policy for ops without a low-precision kernel); the Linears around
    # it still run in bfloat16.
    dtype = (
        torch.float32
        if _autocast_falls_back(device_type)
        else torch.get_autocast_dtype(device_type)
    )
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _autocast_falls_back(device_type: str) -> bool:
    """Autocast is on with a dtype the device's fused kernels lack (they then run in float32)."""
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(
        device_type
    ) not in _FUSED_DTYPES.get(device_type, ())


def _kernel_autocast_guard(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Autocast off around a float32 fallback (see :func:`_autocast`): the CPU kernels call ATen
    ops of their own, which autocast would otherwise turn to bfloat16 under the kernel."""
    if _autocast_falls_back(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def divided_space_time_attention(
    qkv: Tensor,
    num_heads: int,
    num_frames: int,
    temporal: bool,
    scale: float,
    impl: str = "fused",
) -> Tensor:
    """Divided space-time attention on the packed qkv projection.

    qkv: [B, 1+F*N, 3*D] float (any strides; q, k, v are its three D-column blocks, heads split
    as (h dh)). temporal selects the key set of the patch queries: False = CLS + their frame
    (space), True = CLS + their spatial position in every frame (time); the CLS query attends
    to every token. q is multiplied by scale first. Returns [B, 1+F*N, D] contiguous, dtype of
    qkv (the input of the block's proj Linear). impl="fused" supports float32/float64 on CPU and
    float32/float16/bfloat16 on CUDA; under torch.autocast it runs in the autocast dtype (the
    reference path follows PyTorch's own promotion instead). impl="auto": fused where it runs.
    """
    impl = _choose(impl, qkv)
    if impl == "fused" and isinstance(qkv, Tensor):
        (qkv,) = _autocast(qkv.device.type, qkv)
    _validate_space_time(qkv, num_heads, num_frames, temporal, scale)
    if impl == "reference":
        return reference_divided_space_time_attention(qkv, num_heads, num_frames, temporal, scale)
    _check_fused_dtype(qkv, "qkv")
    _extension.require(qkv.device)
    with _kernel_autocast_guard(qkv.device.type):
        out, _ = torch.ops.egovlpv2.divided_space_time_attention(
            qkv, num_heads, num_frames, temporal, float(scale)
        )
    return out


def gated_cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    proj_weight: Tensor,
    proj_bias: Tensor | None,
    gate: Tensor,
    residual: Tensor,
    num_heads: int,
    scale: float,
    impl: str = "fused",
) -> Tensor:
    """Gated cross-attention ``residual + gate * proj(softmax((q*scale) k^T + key_mask) v)``.

    q: [B, Lq, D]; k, v: [B, Lk, D] (any strides, e.g. the halves of one packed projection);
    key_mask: [B, Lk] additive (same dtype as q) or None; proj_weight: [Dout, D];
    proj_bias: [Dout] or None; gate: one-element tensor; residual: [B, Lq, Dout].
    Returns [B, Lq, Dout] contiguous, dtype of q. impl="fused" supports float32/float64 on CPU
    and float32/float16/bfloat16 on CUDA; under torch.autocast it runs in the autocast dtype.
    impl="auto": fused where it runs.
    """
    impl = _choose(impl, q)
    if impl == "fused" and isinstance(q, Tensor):
        q, k, v, proj_weight, gate, residual = _autocast(
            q.device.type, q, k, v, proj_weight, gate, residual
        )
        key_mask, proj_bias = _autocast(q.device.type, key_mask, proj_bias)
    _validate_cross(q, k, v, key_mask, proj_weight, proj_bias, gate, residual, num_heads, scale)
    if impl == "reference":
        return reference_gated_cross_attention(
            q, k, v, key_mask, proj_weight, proj_bias, gate, residual, num_heads, scale
        )
    _check_fused_dtype(q, "q")
    _extension.require(q.device)
    with _kernel_autocast_guard(q.device.type):
        out, _, _ = torch.ops.egovlpv2.gated_cross_attention(
            q, k, v, key_mask, proj_weight, proj_bias, gate, residual, num_heads, float(scale)
        )
    return out


# ---------------------------------------------------------------------------------------------
# Fake kernels and autograd of the custom ops.


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_space_time(
    qkv: Tensor, num_heads: int, num_frames: int, temporal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    batch, tokens, width = qkv.shape
    torch._check(width % (3 * num_heads) == 0, lambda: "qkv's last dim must be 3*num_heads*dh")
    torch._check((tokens - 1) % num_frames == 0, lambda: "qkv must have 1 + num_frames*N tokens")
    out = qkv.new_empty((batch, tokens, width // 3))
    lse = qkv.new_empty((batch, num_heads, tokens), dtype=_lse_dtype(qkv.dtype))
    return out, lse


def _fake_space_time_backward(
    grad_out: Tensor,
    qkv: Tensor,
    out: Tensor,
    softmax_lse: Tensor,
    num_heads: int,
    num_frames: int,
    temporal: bool,
    scale: float,
) -> Tensor:
    return qkv.new_empty(qkv.shape)


def _fake_cross(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    proj_weight: Tensor,
    proj_bias: Tensor | None,
    gate: Tensor,
    residual: Tensor,
    num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    batch, q_len, dim = q.shape
    torch._check(dim % num_heads == 0, lambda: "q's last dim must be num_heads*dh")
    out = q.new_empty((batch, q_len, proj_weight.shape[0]))
    attn = q.new_empty((batch, q_len, dim))
    lse = q.new_empty((batch, num_heads, q_len), dtype=_lse_dtype(q.dtype))
    return out, attn, lse


def _fake_cross_backward(
    grad_attn: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    attn: Tensor,
    softmax_lse: Tensor,
    num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# ctx: torch's autograd context object, to which setup_context adds ``params``.
def _space_time_setup_context(
    ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]
) -> None:
    qkv, num_heads, num_frames, temporal, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.params = (num_heads, num_frames, temporal, scale)
    ctx.mark_non_differentiable(lse)


def _space_time_backward(
    ctx: Any, grad_out: Tensor, grad_lse: Tensor | None
) -> tuple[Tensor | None, None, None, None, None]:
    qkv, out, lse = ctx.saved_tensors
    grad_qkv = None
    if ctx.needs_input_grad[0]:
        grad_qkv = torch.ops.egovlpv2.divided_space_time_attention_backward(
            grad_out, qkv, out, lse, *ctx.params
        )
    return grad_qkv, None, None, None, None


def _cross_setup_context(
    ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]
) -> None:
    q, k, v, key_mask, proj_weight, proj_bias, gate, _residual, num_heads, scale = inputs
    _out, attn, lse = output
    ctx.save_for_backward(q, k, v, key_mask, proj_weight, proj_bias, gate, attn, lse)
    ctx.params = (num_heads, scale)
    ctx.mark_non_differentiable(lse)


def _cross_backward(
    ctx: Any, grad_out: Tensor, grad_attn: Tensor | None, grad_lse: Tensor | None
) -> tuple[Tensor | None, ...]:
    q, k, v, key_mask, proj_weight, proj_bias, gate, attn, lse = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_q = grad_k = grad_v = grad_weight = grad_bias = grad_gate = grad_residual = None
    if needs[7]:
        grad_residual = grad_out
    # y = attn W^T + b, out = residual + gate * y.
    g2 = grad_out.reshape(-1, grad_out.shape[-1])  # [B*Lq, Dout]
    if needs[4] or needs[6]:
        gta = g2.t() @ attn.reshape(-1, attn.shape[-1])  # [Dout, D] = sum_rows g^T attn
        if needs[4]:
            grad_weight = gate.reshape(()) * gta
    if needs[5] or needs[6]:
        g_sum = g2.sum(0)  # [Dout]
        if needs[5] and proj_bias is not None:
            grad_bias = gate.reshape(()) * g_sum
    if needs[6]:
        # d(out)/d(gate) = y, so grad_gate = sum(g * y) = <g^T attn, W> + <sum_rows g, b>.
        total = (gta * proj_weight).sum()
        if proj_bias is not None:
            total = total + (g_sum * proj_bias).sum()
        grad_gate = total.reshape(gate.shape)
    if needs[0] or needs[1] or needs[2]:
        grad_core = (grad_out @ proj_weight) * gate.reshape(())
        if grad_attn is not None:
            grad_core = grad_core + grad_attn
        grad_q, grad_k, grad_v = torch.ops.egovlpv2.gated_cross_attention_backward(
            grad_core, q, k, v, key_mask, attn, lse, *ctx.params
        )
    return (
        grad_q,
        grad_k,
        grad_v,
        None,
        grad_weight,
        grad_bias,
        grad_gate,
        grad_residual,
        None,
        None,
    )


def _register() -> None:
    lib = torch.library
    lib.register_fake("egovlpv2::divided_space_time_attention", _fake_space_time)
    lib.register_fake("egovlpv2::divided_space_time_attention_backward", _fake_space_time_backward)
    lib.register_fake("egovlpv2::gated_cross_attention", _fake_cross)
    lib.register_fake("egovlpv2::gated_cross_attention_backward", _fake_cross_backward)
    lib.register_autograd(
        "egovlpv2::divided_space_time_attention",
        _space_time_backward,
        setup_context=_space_time_setup_context,
    )
    lib.register_autograd(
        "egovlpv2::gated_cross_attention", _cross_backward, setup_context=_cross_setup_context
    )
    register_flop_formulas(torch.ops.egovlpv2)


if _extension.loaded() is not None:
    _register()
