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


def _check_launches(emu, *plans) -> None:
    """The kernels that ran are the plans' (the emulator's device has tensor cores)."""
    texts = [p.text for p in plans]
    assert emu.launches() == sum(p.launches() for p in plans), texts
    assert emu.tensor_core_launches() == sum(p.tensor_core_launches() for p in plans), texts


def _run_divided(
    emu,
    dtype,
    batch,
    frames,
    patches,
    heads,
    head_dim,
    temporal,
    seed,
    layout=None,
    tensor_cores=None,
):
    """tensor_cores: whether the tensor-core kernels must (True) or must not (False) run."""
    g = _gen(seed)
    emu.reset_launches()
    tokens = 1 + frames * patches
    d = heads * head_dim
    scale = head_dim**-0.5
    qkv = _randn((batch, tokens, 3 * d), dtype, g)
    if layout is not None:
        qkv = _nan_padded(qkv, *layout)
    grad_out = _randn((batch, tokens, d), dtype, g)
    out, lse = emu.divided_forward(qkv, heads, frames, temporal, scale)
    grad = emu.divided_backward(grad_out, qkv, out, lse, heads, frames, temporal, scale)
    _check_launches(
        emu,
        emu.plan_divided_forward(qkv, heads, frames, temporal),
        emu.plan_divided_backward(grad_out, qkv, out, lse, heads, frames, temporal),
    )
    if tensor_cores is not None:
        assert (emu.tensor_core_launches() > 0) == tensor_cores, "unexpected kernel path"

    truth, truth_grad = divided_reference(
        qkv.double(), heads, frames, temporal, scale, grad_out.double()
    )
    own = own_grad = None
    if dtype != torch.float32:
        own, own_grad = divided_reference(qkv, heads, frames, temporal, scale, grad_out)
    _check(out, truth, own, "forward")
    lse_err = (lse.double() - divided_lse(qkv, heads, frames, temporal, scale)).abs().max()
    assert lse_err <= LSE_TOL, f"softmax_lse err {lse_err:.3e}"
    for name, sl in (
        ("grad q", slice(0, d)),
        ("grad k", slice(d, 2 * d)),
        ("grad v", slice(2 * d, 3 * d)),
    ):
        _check(
            grad[..., sl],
            truth_grad[..., sl],
            None if own_grad is None else own_grad[..., sl],
            name,
        )


# ---- divided space-time attention --------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"seed{s[0]}-async{s[1]}")
def test_spatial_tensor_cores_schedules(emu, schedule):
    # bf16, head dim 64: tensor-core kernels; N = 70 gives 3 partner blocks and 2 row tiles per
    # frame, so both pipeline buffers are refilled.
    emu.schedule(*schedule)
    _run_divided(
        emu,
        torch.bfloat16,
        batch=1,
        frames=2,
        patches=70,
        heads=1,
        head_dim=64,
        temporal=False,
        seed=10 + schedule[0],
        tensor_cores=True,
    )


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
    _run_divided(
        emu,
        dtype,
        batch,
        frames,
        patches,
        heads,
        head_dim,
        False,
        seed=patches,
        tensor_cores=tensor_cores,
    )


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
    _run_divided(
        emu,
        dtype,
        batch=3,
        frames=frames,
        patches=5,
        heads=2,
        head_dim=head_dim,
        temporal=True,
        seed=frames,
        tensor_cores=False,
    )


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
    _run_divided(
        emu,
        dtype,
        batch,
        frames,
        patches,
        heads,
        head_dim,
        temporal,
        seed=patches,
        tensor_cores=not temporal,
    )


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
    _run_divided(
        emu,
        dtype,
        batch=2,
        frames=2,
        patches=6,
        heads=2,
        head_dim=32,
        temporal=temporal,
        seed=3,
        layout=layout,
        tensor_cores=tensor_cores and not temporal,
    )


# ---- gated cross-attention core ------------------------------------------------------------------
def _run_cross(
    emu,
    dtype,
    batch,
    len_q,
    len_k,
    heads,
    head_dim,
    masked,
    seed,
    packed_kv=False,
    tensor_cores=None,
):
    g = _gen(seed)
    emu.reset_launches()
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
    _check_launches(
        emu,
        emu.plan_cross_forward(q, k, v, mask, heads),
        emu.plan_cross_backward(grad_attn, q, k, v, mask, attn, lse, heads),
    )
    if tensor_cores is not None:
        assert (emu.tensor_core_launches() > 0) == tensor_cores, "unexpected kernel path"

    m64 = None if mask is None else mask.double()
    truth, truth_grads = cross_core_reference(
        q.double(), k.double(), v.double(), m64, heads, scale, grad_attn.double()
    )
    own, own_grads = None, (None, None, None)
    if dtype != torch.float32:
        own, own_grads = cross_core_reference(q, k, v, mask, heads, scale, grad_attn)
    _check(attn, truth, own, "attn")
    lse_err = (lse.double() - cross_lse(q, k, mask, heads, scale)).abs().max()
    assert lse_err <= LSE_TOL, f"softmax_lse err {lse_err:.3e}"
    for name, ours, tr, ow in zip(
        ("grad q", "grad k", "grad v"), (gq, gk, gv), truth_grads, own_grads, strict=True
    ):
        _check(ours, tr, ow, name)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"seed{s[0]}-async{s[1]}")
def test_cross_tensor_cores_schedules(emu, schedule):
    # 3 blocks of keys (forward, dQ) and of queries (dK/dV), 2 row tiles each way.
    emu.schedule(*schedule)
    _run_cross(
        emu,
        torch.bfloat16,
        batch=3,
        len_q=70,
        len_k=67,
        heads=2,
        head_dim=32,
        masked=True,
        seed=20 + schedule[0],
        tensor_cores=True,
    )


@pytest.mark.parametrize(
    "dtype,batch,len_q,len_k,heads,head_dim,masked,packed_kv,tensor_cores",
    [
        (torch.float16, 2, 5, 70, 1, 64, False, True, True),  # t2i-like: few queries
        (torch.bfloat16, 1, 20, 9, 2, 128, True, False, True),  # tc fwd/dQ, one-row dK/dV
        (torch.float32, 3, 9, 5, 2, 40, True, True, False),
        (torch.bfloat16, 2, 7, 33, 2, 40, True, False, False),  # head dim 40: one row per warp
    ],
)
def test_cross(emu, dtype, batch, len_q, len_k, heads, head_dim, masked, packed_kv, tensor_cores):
    emu.schedule(1, 2)
    _run_cross(
        emu,
        dtype,
        batch,
        len_q,
        len_k,
        heads,
        head_dim,
        masked,
        seed=len_k,
        packed_kv=packed_kv,
        tensor_cores=tensor_cores,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_backward_without_queries(emu, dtype):
    g = _gen(0)
    q = _randn((2, 0, 64), dtype, g)
    k, v = _randn((2, 5, 64), dtype, g), _randn((2, 5, 64), dtype, g)
    lse = torch.empty(2, 2, 0)
    gq, gk, gv = emu.cross_backward(q.clone(), q, k, v, None, q.clone(), lse, 2, 0.125)
    assert gq.shape == (2, 0, 64)
    assert torch.equal(gk, torch.zeros_like(gk)) and torch.equal(gv, torch.zeros_like(gv))


@pytest.mark.parametrize(
    "dtype,gate_dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
    ],
)
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


# ---- kernel plans ----------------------------------------------------------------------------
# Which kernel each step of an entry point runs: the "Which kernel runs" table of
# csrc/kernels/README.md, asserted on the planner (csrc/kernels/attention_plan.cu) for given
# inputs, workspace and device. Steps, in launch order: divided forward (patches, cls); divided
# backward (delta, dq_patches, dq_cls, dkv_patches, dkv_cls); cross forward (forward); cross
# backward (delta, dq, dkv). The numeric tests above check that what ran is what was planned.
TC, ROWS, COLS, FUSED, CLS = "tensor_cores", "rows", "columns", "fused", "cls_partials"
VEC_CLS, DELTA16, DELTA = "vec_columns_cls", "delta_rows", "delta_heads"


def _divided_plans(
    emu,
    dtype,
    frames,
    patches,
    heads,
    head_dim,
    temporal,
    layout=None,
    workspace=-1,
    has_mma=True,
    batch=2,
):
    tokens = 1 + frames * patches
    d = heads * head_dim
    qkv = torch.empty((batch, tokens, 3 * d), dtype=dtype)
    if layout is not None:
        qkv = _nan_padded(qkv, *layout)
    out = torch.empty((batch, tokens, d), dtype=dtype)
    lse = torch.empty((batch, heads, tokens))
    return (
        emu.plan_divided_forward(qkv, heads, frames, temporal, workspace, has_mma),
        emu.plan_divided_backward(out, qkv, out, lse, heads, frames, temporal, workspace, has_mma),
    )


BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


# fmt: off
DIVIDED_PLANS = [
    # space, 16-bit, head dim 32/64: tensor cores for every pass; the CLS row from partials
    pytest.param(BF16, 4, 49, 64, False, None, -1, True, (TC, CLS),
                 (DELTA16, TC, FUSED, TC, CLS), id="space-bf16-d64"),
    pytest.param(F16, 2, 16, 32, False, None, -1, True, (TC, CLS),
                 (DELTA16, TC, FUSED, TC, CLS), id="space-f16-d32"),
    # head dim 128: no tensor-core dK/dV kernel
    pytest.param(BF16, 2, 16, 128, False, None, -1, True, (TC, CLS),
                 (DELTA16, TC, FUSED, ROWS, CLS), id="space-bf16-d128"),
    # no workspace: the CLS query and key as one row split over a CTA's warps
    pytest.param(BF16, 4, 49, 64, False, None, 0, True, (TC, ROWS),
                 (DELTA16, TC, ROWS, TC, ROWS), id="space-bf16-no-workspace"),
    pytest.param(BF16, 4, 49, 64, False, None, 4, True, (TC, ROWS),
                 (DELTA16, TC, ROWS, TC, ROWS), id="space-bf16-small-workspace"),
    # a device without mma.sync: rows; the CLS partials need no tensor cores
    pytest.param(BF16, 4, 49, 64, False, None, -1, False, (ROWS, CLS),
                 (DELTA16, ROWS, FUSED, ROWS, CLS), id="space-bf16-no-mma"),
    # [T, B, C] storage with 16-byte rows: still tensor cores
    pytest.param(BF16, 2, 6, 32, False, (8, True), -1, True, (TC, CLS),
                 (DELTA16, TC, FUSED, TC, CLS), id="space-bf16-transposed"),
    # unaligned view (odd row pitch): rows, no CLS partials; delta stays on its own rows
    pytest.param(BF16, 2, 6, 64, False, (1, False), -1, True, (ROWS, ROWS),
                 (DELTA16, ROWS, ROWS, ROWS, ROWS), id="space-bf16-unaligned"),
    # 4-byte rows (row pitch 2 mod 8): rows, in lane chunks (test_divided_plan_rows)
    pytest.param(BF16, 2, 6, 64, False, (2, False), -1, True, (ROWS, ROWS),
                 (DELTA16, ROWS, ROWS, ROWS, ROWS), id="space-bf16-4-byte-rows"),
    # float32 and head dims off the tensor-core list: rows
    pytest.param(F32, 4, 49, 64, False, None, -1, True, (ROWS, ROWS),
                 (DELTA16, ROWS, ROWS, ROWS, ROWS), id="space-f32"),
    pytest.param(BF16, 1, 40, 96, False, None, -1, True, (ROWS, ROWS),
                 (DELTA, ROWS, ROWS, ROWS, ROWS), id="space-bf16-d96"),
    # time, 16-bit, F <= 4, head dim 32/64, workspace: vector columns with the CLS partials;
    # backward columns (dK, dV fused into the dQ pass)
    pytest.param(BF16, 4, 49, 64, True, None, -1, True, (VEC_CLS, FUSED),
                 (DELTA16, COLS, FUSED, FUSED, CLS), id="time-bf16-F4"),
    pytest.param(F16, 1, 9, 32, True, None, -1, False, (VEC_CLS, FUSED),
                 (DELTA16, COLS, FUSED, FUSED, CLS), id="time-f16-F1-no-mma"),
    pytest.param(BF16, 4, 49, 64, True, None, 0, True, (COLS, ROWS),
                 (DELTA16, COLS, ROWS, FUSED, ROWS), id="time-bf16-F4-no-workspace"),
    # F <= 8: columns; the CLS row from partials of its own kernel
    pytest.param(BF16, 8, 9, 64, True, None, -1, True, (COLS, CLS),
                 (DELTA16, COLS, FUSED, FUSED, CLS), id="time-bf16-F8"),
    pytest.param(F32, 4, 9, 64, True, None, -1, True, (COLS, ROWS),
                 (DELTA16, COLS, ROWS, FUSED, ROWS), id="time-f32-F4"),
    # F > 8 or head dim > 64: rows
    pytest.param(BF16, 16, 9, 64, True, None, -1, True, (ROWS, CLS),
                 (DELTA16, ROWS, FUSED, ROWS, CLS), id="time-bf16-F16"),
    pytest.param(BF16, 4, 9, 128, True, None, -1, True, (ROWS, CLS),
                 (DELTA16, ROWS, FUSED, ROWS, CLS), id="time-bf16-d128"),
    pytest.param(F32, 4, 9, 96, True, None, -1, True, (ROWS, ROWS),
                 (DELTA, ROWS, ROWS, ROWS, ROWS), id="time-f32-d96"),
    pytest.param(BF16, 4, 9, 64, True, (1, False), -1, True, (COLS, ROWS),
                 (DELTA16, COLS, ROWS, FUSED, ROWS), id="time-bf16-unaligned"),
]
# fmt: on


@pytest.mark.parametrize(
    "dtype,frames,patches,head_dim,temporal,layout,workspace,has_mma,forward,backward",
    DIVIDED_PLANS,
)
def test_divided_plan(
    emu, dtype, frames, patches, head_dim, temporal, layout, workspace, has_mma, forward, backward
):
    fwd, bwd = _divided_plans(
        emu, dtype, frames, patches, 2, head_dim, temporal, layout, workspace, has_mma
    )
    assert tuple(fwd.kernels.values()) == forward, fwd.text
    assert tuple(bwd.kernels.values()) == backward, bwd.text
    assert list(fwd.steps) == ["patches", "cls"]
    assert list(bwd.steps) == ["delta", "dq_patches", "dq_cls", "dkv_patches", "dkv_cls"]


@pytest.mark.parametrize(
    "dtype,frames,patches,head_dim,temporal,layout,vec,split,cls_split",
    [
        # partners per patch row: N + 1 = 50 (1 warp), 71 (2), 197 (4), 257 (8); the CLS row
        # has all T = 1 + F*N
        (F32, 2, 49, 64, False, None, True, 1, 2),
        (F32, 2, 70, 64, False, None, True, 2, 4),
        (BF16, 1, 196, 96, False, None, True, 4, 4),
        (F32, 1, 256, 32, False, None, True, 8, 8),
        # time, F > 8: F + 1 partners; the CLS row still has all T
        (BF16, 16, 9, 64, True, None, True, 1, 4),
        # odd row pitch: head dim 64 lanes own 2 elements, which the strides cannot align
        (BF16, 2, 70, 64, False, (1, False), False, 2, 4),
        # even row pitch: lane chunks aligned, 16-byte rows not
        (BF16, 2, 70, 64, False, (2, False), True, 2, 4),
        # head dim 32: one element per lane is always aligned
        (BF16, 2, 70, 32, False, (1, False), True, 2, 4),
    ],
)
def test_divided_plan_rows(
    emu, dtype, frames, patches, head_dim, temporal, layout, vec, split, cls_split
):
    tokens = 1 + frames * patches
    fwd, bwd = _divided_plans(
        emu, dtype, frames, patches, 2, head_dim, temporal, layout, workspace=0, has_mma=False
    )
    for step in (fwd.steps["patches"], bwd.steps["dq_patches"], bwd.steps["dkv_patches"]):
        assert (step.kernel, step.rows, step.split, step.vec) == (ROWS, (1, tokens), split, vec)
    for step in (fwd.steps["cls"], bwd.steps["dq_cls"], bwd.steps["dkv_cls"]):
        assert (step.kernel, step.rows, step.split, step.vec) == (ROWS, (0, 1), cls_split, vec)


@pytest.mark.parametrize(
    "dtype,head_dim,layout,kernel,chunks",
    [
        (BF16, 64, None, DELTA16, 8),  # 8 lanes of 16 bytes hold one head
        (F16, 128, None, DELTA16, 16),
        (F32, 128, None, DELTA16, 32),  # a whole warp per head
        (BF16, 96, None, DELTA, 0),  # 12 chunks: not a power of two
        (BF16, 40, None, DELTA, 0),  # 5 chunks
        (BF16, 64, (1, False), DELTA16, 8),  # reads grad_out and out, contiguous: not qkv
    ],
)
def test_delta_plan(emu, dtype, head_dim, layout, kernel, chunks):
    _, bwd = _divided_plans(emu, dtype, 2, 6, 2, head_dim, False, layout)
    assert (bwd.steps["delta"].kernel, bwd.steps["delta"].chunks) == (kernel, chunks), bwd.text


def _cross_plans(
    emu, dtype, len_q, len_k, head_dim, packed_pad=None, has_mma=True, heads=2, batch=2
):
    """packed_pad: k and v as the halves of one [B, Lk, 2D + pad] projection."""
    d = heads * head_dim
    q = torch.empty((batch, len_q, d), dtype=dtype)
    if packed_pad is None:
        k, v = (
            torch.empty((batch, len_k, d), dtype=dtype),
            torch.empty((batch, len_k, d), dtype=dtype),
        )
    else:
        kv = torch.empty((batch, len_k, 2 * d + packed_pad), dtype=dtype)
        k, v = kv[..., :d], kv[..., d : 2 * d]
    mask = torch.zeros((batch, len_k), dtype=dtype)
    attn = torch.empty((batch, len_q, d), dtype=dtype)
    lse = torch.empty((batch, heads, len_q))
    return (
        emu.plan_cross_forward(q, k, v, mask, heads, has_mma),
        emu.plan_cross_backward(attn, q, k, v, mask, attn, lse, heads, has_mma),
    )


# fmt: off
CROSS_PLANS = [
    # 16-bit, head dim 32/64, 16-byte rows: tensor cores for every pass
    pytest.param(BF16, 197, 30, 64, None, True, TC, (DELTA16, TC, TC), id="i2t-bf16-d64"),
    pytest.param(F16, 30, 197, 32, 0, True, TC, (DELTA16, TC, TC), id="t2i-f16-d32-packed"),
    # head dim 128: rows for dK/dV
    pytest.param(BF16, 20, 9, 128, None, True, TC, (DELTA16, TC, ROWS), id="bf16-d128"),
    # no mma.sync, float32, other head dims, unaligned k/v: rows
    pytest.param(BF16, 20, 9, 64, None, False, ROWS, (DELTA16, ROWS, ROWS), id="bf16-no-mma"),
    pytest.param(F32, 20, 9, 64, None, True, ROWS, (DELTA16, ROWS, ROWS), id="f32-d64"),
    pytest.param(BF16, 7, 33, 40, None, True, ROWS, (DELTA, ROWS, ROWS), id="bf16-d40"),
    pytest.param(BF16, 20, 9, 64, 1, True, ROWS, (DELTA16, ROWS, ROWS), id="bf16-unaligned"),
]
# fmt: on


@pytest.mark.parametrize(
    "dtype,len_q,len_k,head_dim,packed_pad,has_mma,forward,backward", CROSS_PLANS
)
def test_cross_plan(emu, dtype, len_q, len_k, head_dim, packed_pad, has_mma, forward, backward):
    fwd, bwd = _cross_plans(emu, dtype, len_q, len_k, head_dim, packed_pad, has_mma)
    assert fwd.kernels == {"forward": forward}, fwd.text
    assert tuple(bwd.kernels.values()) == backward, bwd.text
    assert list(bwd.steps) == ["delta", "dq", "dkv"]


@pytest.mark.parametrize(
    "dtype,len_q,len_k,packed_pad,split_q,split_k,vec",
    [
        # query rows have Lk partners, key rows Lq
        (F32, 300, 40, None, 1, 8, True),
        (BF16, 100, 129, 1, 4, 2, False),  # odd row pitch of k and v: no lane-chunk loads
    ],
)
def test_cross_plan_rows(emu, dtype, len_q, len_k, packed_pad, split_q, split_k, vec):
    fwd, bwd = _cross_plans(emu, dtype, len_q, len_k, 64, packed_pad)
    for step in (fwd.steps["forward"], bwd.steps["dq"]):
        assert (step.kernel, step.rows, step.split, step.vec) == (ROWS, (0, len_q), split_q, vec)
    dkv = bwd.steps["dkv"]
    assert (dkv.kernel, dkv.rows, dkv.split, dkv.vec) == (ROWS, (0, len_k), split_k, vec)


def test_plans_of_empty_and_invalid_calls(emu):
    # No queries: nothing forward; backward writes the zero key gradients with the row kernel.
    fwd, bwd = _cross_plans(emu, BF16, 0, 5, 64)
    assert fwd.valid and fwd.kernels == {"forward": "none"}, fwd.text
    assert bwd.kernels == {"delta": "none", "dq": "none", "dkv": ROWS}, bwd.text
    dkv = bwd.steps["dkv"]
    assert (dkv.rows, dkv.split, dkv.vec) == ((0, 5), 1, False)
    # No batch: nothing at all.
    for plan in (
        *_divided_plans(emu, BF16, 2, 6, 2, 64, False, batch=0),
        *_cross_plans(emu, BF16, 4, 5, 64, batch=0),
    ):
        assert plan.valid and set(plan.kernels.values()) == {"none"}, plan.text
    # T - 1 not a multiple of the frames: the entry point would return cudaErrorInvalidValue.
    qkv = torch.empty((2, 14, 3 * 128), dtype=BF16)
    plan = emu.plan_divided_forward(qkv, 2, 3, False)
    assert not plan.valid and plan.text == "invalid"
