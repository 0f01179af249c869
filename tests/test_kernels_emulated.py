"""The CUDA kernels of csrc/kernels, run on the CPU by the fiber emulator (csrc/kernels/emu/).

Each CUDA thread of a block is a fiber: __syncthreads, warp shuffles and the m16n8k16 mma are
barriers; the emulated mma follows the PTX ISA fragment layout. Scheduling policies (lock-step,
warp-greedy, shuffled) and the moment cp.async copies land (at the wait, at the issue, random)
are varied so that a missing barrier or wait changes the result. Shared memory starts as NaN
bytes, outputs start as NaN, and strided inputs sit in NaN-filled storage, so a read of an
unwritten or out-of-range element shows up. Every result is compared with the float64 reference
path of egovlpv2_rt.ops. What this cannot show: timing, occupancy, and hardware rounding inside
the tensor cores; tests/test_ops_cuda.py covers the real device.
"""

from __future__ import annotations

import _kernel_emu
import pytest
import torch
from _attention_refs import (
    cross_core_reference,
    cross_lse,
    divided_lse,
    divided_reference,
    padding_mask,
    rel_err,
)

_reason = _kernel_emu.why_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

# (seed, async_mode): lock-step with late copies; warp-greedy with early copies; warp-greedy
# with copies landing at random; shuffled threads with late copies.
SCHEDULES = [(0, 0), (1, 1), (3, 2), (2, 0)]
LSE_TOL = 1e-5


@pytest.fixture(scope="module")
def emu() -> _kernel_emu.Emulator:
    return _kernel_emu.Emulator(_kernel_emu.build())


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _randn(shape, dtype, g) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=g).to(dtype)


def _nan_padded(x: torch.Tensor, pad: int, transpose: bool) -> torch.Tensor:
    """A view of x with other strides, inside NaN-filled storage."""
    b, t, c = x.shape
    if transpose:
        store = torch.full((t, b, c + pad), float("nan"), dtype=x.dtype)
        store[..., :c] = x.transpose(0, 1)
        return store.transpose(0, 1)[..., :c]
    store = torch.full((b, t, c + pad), float("nan"), dtype=x.dtype)
    store[..., :c] = x
    return store[..., :c]


def _check(ours: torch.Tensor, truth: torch.Tensor, own: torch.Tensor | None, what: str) -> None:
    assert torch.isfinite(ours).all(), f"{what}: non-finite values (unwritten or poisoned)"
    err = rel_err(ours, truth)
    if ours.dtype == torch.float32:
        assert err <= 1e-5, f"{what}: float32 err {err:.3e} > 1e-5"
    else:
        own_err = rel_err(own, truth)
        assert err <= 2 * own_err, f"{what}: err {err:.3e} > 2 x PyTorch's own {own_err:.3e}"


def _run_divided(emu, dtype, batch, frames, patches, heads, head_dim, temporal, seed,
                 layout=None, tensor_cores=None):
    """tensor_cores: whether the tensor-core kernels must (True) or must not (False) run."""
    g = _gen(seed)
    emu.tensor_core_launches()
    tokens = 1 + frames * patches
    d = heads * head_dim
    scale = head_dim**-0.5
    qkv = _randn((batch, tokens, 3 * d), dtype, g)
    if layout is not None:
        qkv = _nan_padded(qkv, *layout)
    grad_out = _randn((batch, tokens, d), dtype, g)
    out, lse = emu.divided_forward(qkv, heads, frames, temporal, scale)
    grad = emu.divided_backward(grad_out, qkv, out, lse, heads, frames, temporal, scale)
    if tensor_cores is not None:
        assert (emu.tensor_core_launches() > 0) == tensor_cores, "unexpected kernel path"

    truth, truth_grad = divided_reference(qkv.double(), heads, frames, temporal, scale,
                                          grad_out.double())
    own = own_grad = None
    if dtype != torch.float32:
        own, own_grad = divided_reference(qkv, heads, frames, temporal, scale, grad_out)
    _check(out, truth, own, "forward")
    lse_err = (lse.double() - divided_lse(qkv, heads, frames, temporal, scale)).abs().max()
    assert lse_err <= LSE_TOL, f"softmax_lse err {lse_err:.3e}"
    for name, sl in (("grad q", slice(0, d)), ("grad k", slice(d, 2 * d)),
                     ("grad v", slice(2 * d, 3 * d))):
        _check(grad[..., sl], truth_grad[..., sl], None if own_grad is None else own_grad[..., sl],
               name)


# ---- divided space-time attention --------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"seed{s[0]}-async{s[1]}")
def test_spatial_tensor_cores_schedules(emu, schedule):
    # bf16, head dim 64: tensor-core kernels; N = 70 gives 3 partner blocks and 2 row tiles per
    # frame, so both pipeline buffers are refilled.
    emu.schedule(*schedule)
    _run_divided(emu, torch.bfloat16, batch=1, frames=2, patches=70, heads=1, head_dim=64,
                 temporal=False, seed=10 + schedule[0], tensor_cores=True)


@pytest.mark.parametrize(
    "dtype,batch,frames,patches,heads,head_dim,tensor_cores",
    [
        (torch.float16, 3, 3, 4, 2, 32, True),  # tensor cores, tiny frames, odd batch
        (torch.bfloat16, 1, 2, 9, 1, 128, True),  # tensor-core fwd/dQ at 128, one-row dK/dV
        (torch.float32, 3, 2, 9, 2, 24, False),  # one row per warp, head dim off the buckets
        (torch.bfloat16, 1, 1, 40, 2, 96, False),  # one row per warp (no tensor-core kernel)
    ],
)
def test_spatial(emu, dtype, batch, frames, patches, heads, head_dim, tensor_cores):
    emu.schedule(1, 2)
    _run_divided(emu, dtype, batch, frames, patches, heads, head_dim, False, seed=patches,
                 tensor_cores=tensor_cores)


@pytest.mark.parametrize(
    "dtype,frames,head_dim",
    [
        (torch.bfloat16, 1, 64),  # column kernel, F <= 4 bucket
        (torch.bfloat16, 4, 64),
        (torch.float16, 8, 32),  # column kernel, F <= 8 bucket
        (torch.float32, 4, 64),
        (torch.bfloat16, 16, 64),  # F > 8: one row per warp
        (torch.float32, 4, 96),  # head dim > 64: one row per warp
    ],
)
def test_temporal(emu, dtype, frames, head_dim):
    emu.schedule(3, 2)
    _run_divided(emu, dtype, batch=3, frames=frames, patches=5, heads=2, head_dim=head_dim,
                 temporal=True, seed=frames, tensor_cores=False)


@pytest.mark.parametrize(
    "dtype,batch,frames,patches,heads,head_dim,temporal",
    [
        # temporal, 12 heads x 64: 2 columns side by side x 4 steps per CTA, 3 CTAs per clip
        # (the last one partly idle), so the CLS partials merge in a CTA and across CTAs
        (torch.bfloat16, 2, 4, 19, 12, 64, True),
        # temporal, head dim 32, 3 heads: 252 busy threads (slots straddle warps), F < bucket
        (torch.float16, 1, 3, 23, 3, 32, True),
        # spatial CLS row: 4 tokens per slot per step, partials from 2 CTAs
        (torch.float16, 1, 2, 50, 3, 32, False),
        (torch.bfloat16, 1, 1, 40, 12, 64, False),
    ],
)
def test_cls_split_softmax(emu, dtype, batch, frames, patches, heads, head_dim, temporal):
    # The CLS query's softmax from per-CTA partials in the workspace, merged by a combine kernel.
    emu.schedule(2, 1)
    _run_divided(emu, dtype, batch, frames, patches, heads, head_dim, temporal, seed=patches,
                 tensor_cores=not temporal)


@pytest.mark.parametrize("temporal", [False, True])
@pytest.mark.parametrize(
    "dtype,layout,tensor_cores",
    [
        (torch.bfloat16, (8, True), True),  # [T, B, C] storage, 16-byte rows: tensor cores
        (torch.bfloat16, (1, False), False),  # odd row pitch: no vector loads at all
        (torch.float32, (3, True), False),
    ],
)
def test_strided_qkv(emu, dtype, layout, tensor_cores, temporal):
    emu.schedule(5, 1)
    _run_divided(emu, dtype, batch=2, frames=2, patches=6, heads=2, head_dim=32,
                 temporal=temporal, seed=3, layout=layout,
                 tensor_cores=tensor_cores and not temporal)


# ---- gated cross-attention core ------------------------------------------------------------------
def _run_cross(emu, dtype, batch, len_q, len_k, heads, head_dim, masked, seed, packed_kv=False,
               tensor_cores=None):
    g = _gen(seed)
    emu.tensor_core_launches()
    d = heads * head_dim
    scale = head_dim**-0.5
    q = _randn((batch, len_q, d), dtype, g)
    if packed_kv:  # k and v as the two halves of one [B, Lk, 2D] projection
        kv = _randn((batch, len_k, 2 * d), dtype, g)
        k, v = kv[..., :d], kv[..., d:]
    else:
        k, v = _randn((batch, len_k, d), dtype, g), _randn((batch, len_k, d), dtype, g)
    mask = padding_mask(batch, len_k, dtype, "cpu", g) if masked else None
    grad_attn = _randn((batch, len_q, d), dtype, g)
    attn, lse = emu.cross_forward(q, k, v, mask, heads, scale)
    gq, gk, gv = emu.cross_backward(grad_attn, q, k, v, mask, attn, lse, heads, scale)
    if tensor_cores is not None:
        assert (emu.tensor_core_launches() > 0) == tensor_cores, "unexpected kernel path"

    m64 = None if mask is None else mask.double()
    truth, truth_grads = cross_core_reference(q.double(), k.double(), v.double(), m64, heads,
                                              scale, grad_attn.double())
    own, own_grads = None, (None, None, None)
    if dtype != torch.float32:
        own, own_grads = cross_core_reference(q, k, v, mask, heads, scale, grad_attn)
    _check(attn, truth, own, "attn")
    lse_err = (lse.double() - cross_lse(q, k, mask, heads, scale)).abs().max()
    assert lse_err <= LSE_TOL, f"softmax_lse err {lse_err:.3e}"
    for name, ours, tr, ow in zip(("grad q", "grad k", "grad v"), (gq, gk, gv), truth_grads,
                                  own_grads):
        _check(ours, tr, ow, name)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"seed{s[0]}-async{s[1]}")
def test_cross_tensor_cores_schedules(emu, schedule):
    # 3 blocks of keys (forward, dQ) and of queries (dK/dV), 2 row tiles each way.
    emu.schedule(*schedule)
    _run_cross(emu, torch.bfloat16, batch=3, len_q=70, len_k=67, heads=2, head_dim=32,
               masked=True, seed=20 + schedule[0], tensor_cores=True)


@pytest.mark.parametrize(
    "dtype,batch,len_q,len_k,heads,head_dim,masked,packed_kv,tensor_cores",
    [
        (torch.float16, 2, 5, 70, 1, 64, False, True, True),  # t2i-like: few queries
        (torch.bfloat16, 1, 20, 9, 2, 128, True, False, True),  # tc fwd/dQ, one-row dK/dV
        (torch.float32, 3, 9, 5, 2, 40, True, True, False),
        (torch.bfloat16, 2, 7, 33, 2, 40, True, False, False),  # head dim 40: one row per warp
    ],
)
def test_cross(emu, dtype, batch, len_q, len_k, heads, head_dim, masked, packed_kv,
               tensor_cores):
    emu.schedule(1, 2)
    _run_cross(emu, dtype, batch, len_q, len_k, heads, head_dim, masked, seed=len_k,
               packed_kv=packed_kv, tensor_cores=tensor_cores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_backward_without_queries(emu, dtype):
    g = _gen(0)
    q = _randn((2, 0, 64), dtype, g)
    k, v = _randn((2, 5, 64), dtype, g), _randn((2, 5, 64), dtype, g)
    lse = torch.empty(2, 2, 0)
    gq, gk, gv = emu.cross_backward(q.clone(), q, k, v, None, q.clone(), lse, 2, 0.125)
    assert gq.shape == (2, 0, 64)
    assert torch.equal(gk, torch.zeros_like(gk)) and torch.equal(gv, torch.zeros_like(gv))


@pytest.mark.parametrize("dtype,gate_dtype", [(torch.float32, torch.float32),
                                              (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.float16)])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "offset1"])
def test_gate_residual(emu, dtype, gate_dtype, offset):
    # 693 values: 16-byte chunks and a tail; offset 1 leaves the inputs 2- or 4-byte aligned
    # only, which takes the element-wise kernel.
    g = _gen(1)
    residual = _randn((offset + 693,), dtype, g)[offset:].view(3, 7, 33)
    lin = _randn((offset + 693,), dtype, g)[offset:].view(3, 7, 33)
    gate = _randn((1,), gate_dtype, g)
    out = emu.gate_residual(residual, lin, gate)
    truth = residual.double() + gate.double() * lin.double()
    own = residual + gate.to(dtype) * lin
    _check(out, truth, own if dtype != torch.float32 else None, "gate residual")
