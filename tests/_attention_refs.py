"""References and error measures shared by the kernel tests (emulated and CUDA).

Outputs and gradients come from the reference paths in ``egovlpv2_rt.ops`` (run in float64 for
the truth, in the input dtype for "PyTorch's own" low-precision error); the softmax logsumexp,
which the reference path does not expose, is computed here from an explicit key-set mask.
"""

from __future__ import annotations

import torch

from egovlpv2_rt import ops


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref| in float64 (NaN anywhere gives NaN)."""
    ours, ref = ours.double(), ref.double().to(ours.device)
    denom = ref.abs().max().item()
    num = (ours - ref).abs().max().item()
    return num / denom if denom > 0 else num


def divided_key_mask(tokens: int, frames: int, temporal: bool) -> torch.Tensor:
    """allowed[t, j]: query token t attends key token j (docs/OPS.md, section 1)."""
    n = (tokens - 1) // frames
    t = torch.arange(tokens)
    frame, patch = (t - 1).div(n, rounding_mode="floor"), (t - 1) % n
    same = (patch[:, None] == patch[None, :]) if temporal else (frame[:, None] == frame[None, :])
    allowed = same.clone()
    allowed[0, :] = True  # the CLS query sees every token
    allowed[:, 0] = True  # every query sees the CLS key
    return allowed


def divided_lse(
    qkv: torch.Tensor, heads: int, frames: int, temporal: bool, scale: float
) -> torch.Tensor:
    """float64 [B, heads, T] logsumexp of each query's scaled scores over its key set."""
    b, t, c = qkv.shape
    dh = c // 3 // heads
    q, k, _ = qkv.double().chunk(3, dim=-1)
    q = q.reshape(b, t, heads, dh).transpose(1, 2) * scale
    k = k.reshape(b, t, heads, dh).transpose(1, 2)
    s = q @ k.transpose(-1, -2)
    allowed = divided_key_mask(t, frames, temporal).to(s.device)
    return s.masked_fill(~allowed, float("-inf")).logsumexp(-1)


def divided_reference(
    qkv: torch.Tensor,
    heads: int,
    frames: int,
    temporal: bool,
    scale: float,
    grad_out: torch.Tensor | None = None,
):
    """(out, grad_qkv or None) of ops' reference path, in qkv's dtype and device."""
    x = qkv.detach().clone().requires_grad_(grad_out is not None)
    out = ops.reference_divided_space_time_attention(x, heads, frames, temporal, scale)
    if grad_out is None:
        return out.detach(), None
    out.backward(grad_out)
    return out.detach(), x.grad


def cross_core_reference(q, k, v, mask, heads: int, scale: float, grad_attn=None):
    """Attention core of ops' reference gated cross-attention (identity projection, gate 1,
    residual 0, which are exact in every dtype): (attn, (dq, dk, dv) or None)."""
    d = q.shape[-1]
    leaves = [t.detach().clone().requires_grad_(grad_attn is not None) for t in (q, k, v)]
    eye = torch.eye(d, dtype=q.dtype, device=q.device)
    gate = torch.ones(1, dtype=q.dtype, device=q.device)
    residual = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    attn = ops.reference_gated_cross_attention(
        *leaves, mask, eye, None, gate, residual, heads, scale
    )
    if grad_attn is None:
        return attn.detach(), None
    attn.backward(grad_attn)
    return attn.detach(), tuple(t.grad for t in leaves)


def cross_lse(q, k, mask, heads: int, scale: float) -> torch.Tensor:
    """float64 [B, heads, Lq] logsumexp of the scaled, masked scores."""
    b, lq, d = q.shape
    dh = d // heads
    qh = q.double().reshape(b, lq, heads, dh).transpose(1, 2) * scale
    kh = k.double().reshape(b, k.shape[1], heads, dh).transpose(1, 2)
    s = qh @ kh.transpose(-1, -2)
    if mask is not None:
        s = s + mask.double()[:, None, None, :]
    return s.logsumexp(-1)


def padding_mask(
    batch: int, len_k: int, dtype: torch.dtype, device, generator=None, min_valid: int = 2
) -> torch.Tensor:
    """Additive [B, Lk] mask, (1 - attention_mask) * finfo.min, with heavy padding: each row
    keeps between min_valid and about a third of the keys (at least min_valid)."""
    hi = max(min_valid, len_k // 3)
    valid = torch.randint(min_valid, hi + 1, (batch,), generator=generator)
    keep = (torch.arange(len_k)[None, :] < valid[:, None]).to(dtype)
    return ((1 - keep) * torch.finfo(dtype).min).to(device)


def low_precision_bound(ours_err: float, own_err: float) -> bool:
    """The contract for float16/bfloat16: within 2x PyTorch's own error for that precision."""
    return ours_err <= 2.0 * own_err
