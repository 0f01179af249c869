"""The fused CPU ops against the reference implementations (contract: docs/OPS.md).

err = max|fused - reference| / max|reference|, per output and per gradient.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import egovlpv2_rt
from egovlpv2_rt import ops

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def strided(dense: torch.Tensor, layout: str) -> torch.Tensor:
    """``dense`` ([B, T, C]) seen through another memory layout, differentiably."""
    if layout == "contiguous":
        return dense
    if layout == "sliced":  # a column slice of a wider projection: row stride > C
        return torch.nn.functional.pad(dense, (3, 4))[..., 3 : 3 + dense.shape[-1]]
    if layout == "token_major":  # [T, B, C] storage seen as [B, T, C]
        return dense.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "column_strided":  # no unit stride on the channel axis
        return dense.transpose(1, 2).contiguous().transpose(1, 2)
    raise ValueError(layout)


def make_qkv(batch, frames, patches, heads, head_dim, dtype, layout, seed=0):
    """A [B, T, 3*D] qkv in the requested memory layout."""
    gen = torch.Generator().manual_seed(seed)
    tokens, dim = 1 + frames * patches, heads * head_dim
    dense = torch.randn(batch, tokens, 3 * dim, generator=gen, dtype=torch.float64).to(dtype)
    return strided(dense, layout)


SPACE_TIME_SHAPES = [
    # batch, frames, patches, heads, head_dim
    (2, 4, 4, 4, 16),  # the golden configuration
    (3, 4, 49, 2, 32),  # odd batch, dense engine for space (49 queries per frame)
    (1, 1, 9, 3, 8),  # F = 1
    (2, 8, 5, 2, 24),  # dense engine for time (8 queries per position), dh not a vector multiple
    (1, 3, 7, 1, 5),  # odd everything
    (2, 2, 130, 1, 64),  # more than one query block per key set
]


def check(fused: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    """fused within the contract of truth (the float64 reference on the same inputs).

    float64: err <= 1e-12. float32: err <= 1e-5, or twice the error of PyTorch's own float32
    reference where that is larger (a float32 reduction that cancels, such as the gate's
    gradient, cannot do better than its rounding).
    """
    if fused.dtype == torch.float64:
        bound = TOL[torch.float64]
    else:
        bound = max(TOL[torch.float32], 2.0 * rel_err(ref, truth))
    err = rel_err(fused, truth)
    assert err <= bound, f"{what}: err {err:.3e} > {bound:.3e}"


def space_time_case(shape, dtype, temporal, layout):
    """Outputs and qkv gradients of reference / fused in dtype and of the float64 reference."""
    batch, frames, patches, heads, head_dim = shape
    dense = make_qkv(batch, frames, patches, heads, head_dim, dtype, "contiguous")
    grad = torch.randn(
        batch,
        1 + frames * patches,
        heads * head_dim,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    ).to(dtype)
    results = {}
    for name, impl, cast in (
        ("reference", "reference", dtype),
        ("fused", "fused", dtype),
        ("truth", "reference", torch.float64),
    ):
        leaf = dense.to(cast).requires_grad_()
        qkv = strided(leaf, layout)
        out = ops.divided_space_time_attention(
            qkv, heads, frames, temporal, head_dim**-0.5, impl=impl
        )
        (grad_leaf,) = torch.autograd.grad(out, leaf, grad.to(cast))
        results[name] = (out, grad_leaf)
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("temporal", [False, True], ids=["space", "time"])
@pytest.mark.parametrize("shape", SPACE_TIME_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_space_time_matches_reference(shape, temporal, dtype):
    res = space_time_case(shape, dtype, temporal, "contiguous")
    out = res["fused"][0]
    assert out.shape == res["reference"][0].shape and out.is_contiguous() and out.dtype == dtype
    for i, what in enumerate(("out", "grad_qkv")):
        check(res["fused"][i], res["reference"][i], res["truth"][i], what)


@pytest.mark.parametrize("layout", ["sliced", "token_major", "column_strided"])
@pytest.mark.parametrize("temporal", [False, True], ids=["space", "time"])
def test_space_time_reads_any_strides(layout, temporal):
    dtype = torch.float64
    res = space_time_case((3, 4, 12, 2, 16), dtype, temporal, layout)
    for i, what in enumerate(("out", "grad_qkv")):
        check(res["fused"][i], res["reference"][i], res["truth"][i], what)


def test_space_time_softmax_lse():
    qkv = make_qkv(2, 3, 6, 2, 8, torch.float64, "contiguous")
    heads, frames, head_dim, dim = 2, 3, 8, 16
    scale = head_dim**-0.5
    for temporal in (False, True):
        _, lse = torch.ops.egovlpv2.divided_space_time_attention(
            qkv, heads, frames, temporal, scale
        )
        assert lse.shape == (2, heads, qkv.shape[1]) and lse.dtype == torch.float64
        q, k = qkv[..., :dim], qkv[..., dim : 2 * dim]
        for h in range(heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            scores = (q[..., cols] * scale) @ k[..., cols].transpose(1, 2)  # [B, T, T]
            # CLS query: every key.
            expect_cls = torch.logsumexp(scores[:, 0], dim=-1)
            assert rel_err(lse[:, h, 0], expect_cls) <= 1e-12
            # Patch (f=1, n=2): CLS key + its frame (space) or its position (time).
            f, n, patches = 1, 2, 6
            token = 1 + f * patches + n
            keys = [0] + (
                [1 + n + i * patches for i in range(frames)]
                if temporal
                else [1 + f * patches + i for i in range(patches)]
            )
            expect = torch.logsumexp(scores[:, token, keys], dim=-1)
            assert rel_err(lse[:, h, token], expect) <= 1e-12
    assert lse.dtype == torch.float64
    _, lse32 = torch.ops.egovlpv2.divided_space_time_attention(
        qkv.float(), heads, frames, False, scale
    )
    assert lse32.dtype == torch.float32


def make_cross(batch, q_len, k_len, heads, head_dim, out_dim, dtype, mask, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dim = heads * head_dim

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    q = rand(batch, q_len, dim)
    kv = rand(batch, k_len, 2 * dim)  # k and v as the halves of one packed projection
    key_mask = None
    if mask == "padding":
        # Heavy padding: lengths from 1 to k_len; padded keys get finfo.min as the original.
        lengths = torch.randint(1, k_len + 1, (batch,), generator=gen)
        lengths[0] = 1  # one valid key: a constant softmax
        lengths[-1] = max(k_len // 2, 1) if batch > 1 else lengths[-1]
        valid = torch.arange(k_len)[None, :] < lengths[:, None]
        key_mask = (1.0 - valid.to(dtype)) * torch.finfo(dtype).min
    weight = rand(out_dim, dim) / dim**0.5
    proj_bias = rand(out_dim) if bias else None
    gate = rand(1)
    residual = rand(batch, q_len, out_dim)
    return q, kv, key_mask, weight, proj_bias, gate, residual


CROSS_SHAPES = [
    # batch, q_len, k_len, heads, head_dim, out_dim
    (3, 17, 12, 4, 16, 64),  # i2t of the golden model: video queries, text keys
    (3, 12, 17, 4, 16, 64),  # t2i: text queries, video keys
    (1, 1, 5, 2, 8, 16),  # a single query
    (2, 150, 7, 2, 8, 24),  # more than one query block, few keys
    (5, 9, 40, 3, 20, 12),  # odd batch, dh not a vector multiple, Dout != D
]


def cross_case(shape, dtype, mask, bias):
    batch, q_len, k_len, heads, head_dim, out_dim = shape
    tensors = make_cross(batch, q_len, k_len, heads, head_dim, out_dim, dtype, mask, bias)
    q, kv, key_mask, weight, proj_bias, gate, residual = tensors
    dim = heads * head_dim
    grad = torch.randn(
        batch, q_len, out_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    ).to(dtype)
    results = {}
    for name, impl, cast in (
        ("reference", "reference", dtype),
        ("fused", "fused", dtype),
        ("truth", "reference", torch.float64),
    ):
        leaves = [
            t.detach().to(cast).requires_grad_() if t is not None else None
            for t in (q, kv, weight, proj_bias, gate, residual)
        ]
        lq, lkv, lw, lb, lg, lr = leaves
        mask_c = key_mask.to(cast) if key_mask is not None else None
        if mask_c is not None and cast != dtype:  # the same mask semantics: finfo.min of cast
            mask_c = (key_mask < 0).to(cast) * torch.finfo(cast).min
        out = ops.gated_cross_attention(
            lq,
            lkv[..., :dim],
            lkv[..., dim:],
            mask_c,
            lw,
            lb,
            lg,
            lr,
            heads,
            head_dim**-0.5,
            impl=impl,
        )
        wrt = [t for t in leaves if t is not None]
        results[name] = (out, *torch.autograd.grad(out, wrt, grad.to(cast)))
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "mask,bias",
    [(None, True), ("padding", True), ("padding", False)],
    ids=["nomask", "padding", "padding-nobias"],
)
@pytest.mark.parametrize("shape", CROSS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cross_attention_matches_reference(shape, mask, bias, dtype):
    res = cross_case(shape, dtype, mask, bias)
    out = res["fused"][0]
    assert out.shape == res["reference"][0].shape and out.dtype == dtype
    names = [
        "out",
        "grad_q",
        "grad_kv",
        "grad_proj_weight",
        "grad_proj_bias",
        "grad_gate",
        "grad_residual",
    ]
    if not bias:
        names.remove("grad_proj_bias")
    assert len(names) == len(res["fused"])
    for i, what in enumerate(names):
        check(res["fused"][i], res["reference"][i], res["truth"][i], what)


def test_fused_ops_under_cpu_bfloat16_autocast_run_in_float32():
    # The C++ kernels have no bfloat16 path: under CPU autocast the ops run in float32 (inputs
    # cast up), with autocast off inside the kernel, whose own ATen calls would otherwise
    # return bfloat16 under it. Same inputs in float32 outside autocast give the same numbers.
    q, kv, key_mask, weight, bias, gate, residual = make_cross(
        2, 5, 6, 2, 4, 8, torch.float32, "padding", True
    )
    qkv = make_qkv(2, 2, 3, 2, 4, torch.float32, "contiguous")
    ref_c = ops.gated_cross_attention(
        q, kv[..., :8], kv[..., 8:], key_mask, weight, bias, gate, residual, 2, 0.5
    )
    leaf = qkv.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_c = ops.gated_cross_attention(
            q, kv[..., :8], kv[..., 8:], key_mask, weight, bias, gate, residual, 2, 0.5
        )
        out_s = ops.divided_space_time_attention(leaf, 2, 2, True, 0.5)
    assert out_c.dtype == out_s.dtype == torch.float32
    assert torch.equal(out_c, ref_c)
    truth_s = ops.divided_space_time_attention(qkv.bfloat16().float(), 2, 2, True, 0.5)
    assert torch.equal(out_s, truth_s)
    out_s.sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16
    assert torch.isfinite(leaf.grad.float()).all()


def test_cross_attention_returns_attn_and_lse():
    q, kv, key_mask, weight, bias, gate, residual = make_cross(
        2, 5, 6, 2, 4, 8, torch.float64, "padding", True
    )
    k, v = kv[..., :8], kv[..., 8:]
    out, attn, lse = torch.ops.egovlpv2.gated_cross_attention(
        q, k, v, key_mask, weight, bias, gate, residual, 2, 0.5
    )
    qh, kh, vh = (t.reshape(2, -1, 2, 4).transpose(1, 2) for t in (q, k, v))
    scores = (qh * 0.5) @ kh.transpose(-1, -2) + key_mask[:, None, None, :]
    expect_attn = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(2, 5, 8)
    assert rel_err(attn, expect_attn) <= 1e-12
    assert rel_err(lse, torch.logsumexp(scores, dim=-1)) <= 1e-12
    assert rel_err(out, residual + gate * torch.nn.functional.linear(attn, weight, bias)) <= 1e-12


def test_cross_attention_fully_masked_row_matches_reference():
    # Every key masked: the reference softmax is uniform; so must be the fused forward and
    # backward (the backward renormalises P recomputed from an lse that absorbed the mask).
    q, kv, _, weight, bias, gate, residual = make_cross(2, 4, 5, 1, 8, 8, torch.float64, None, True)
    key_mask = torch.full((2, 5), torch.finfo(torch.float64).min, dtype=torch.float64)
    key_mask[1, :2] = 0.0
    grads = {}
    for impl in ("reference", "fused"):
        lq = q.clone().requires_grad_()
        lkv = kv.clone().requires_grad_()
        out = ops.gated_cross_attention(
            lq,
            lkv[..., :8],
            lkv[..., 8:],
            key_mask,
            weight,
            bias,
            gate,
            residual,
            1,
            8**-0.5,
            impl=impl,
        )
        grads[impl] = (out, *torch.autograd.grad(out.sum(), (lq, lkv)))
    for fused, ref in zip(grads["fused"], grads["reference"], strict=True):
        assert rel_err(fused, ref) <= 1e-12


@pytest.mark.parametrize("temporal", [False, True], ids=["space", "time"])
def test_space_time_gradcheck(temporal):
    qkv = make_qkv(2, 3, 4, 2, 4, torch.float64, "sliced").detach().requires_grad_()

    def fn(x):
        return ops.divided_space_time_attention(x, 2, 3, temporal, 0.5, impl="fused")

    assert torch.autograd.gradcheck(fn, (qkv,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("mask", [None, "padding"])
def test_cross_attention_gradcheck(mask):
    q, kv, key_mask, weight, bias, gate, residual = make_cross(
        2, 5, 4, 2, 3, 5, torch.float64, mask, True
    )
    inputs = tuple(
        t.detach().clone().requires_grad_() for t in (q, kv, weight, bias, gate, residual)
    )

    def fn(q, kv, weight, bias, gate, residual):
        return ops.gated_cross_attention(
            q,
            kv[..., :6],
            kv[..., 6:],
            key_mask,
            weight,
            bias,
            gate,
            residual,
            2,
            0.6,
            impl="fused",
        )

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def opcheck_cases():
    qkv = make_qkv(2, 3, 4, 2, 4, torch.float32, "sliced")
    st_args = (2, 3, True, 0.5)
    out, lse = torch.ops.egovlpv2.divided_space_time_attention(qkv, *st_args)
    grad_out = torch.randn_like(out)
    q, kv, key_mask, weight, bias, gate, residual = make_cross(
        2, 5, 4, 2, 3, 5, torch.float32, "padding", True
    )
    k, v = kv[..., :6], kv[..., 6:]
    _, attn, cross_lse = torch.ops.egovlpv2.gated_cross_attention(
        q, k, v, key_mask, weight, bias, gate, residual, 2, 0.6
    )
    return [
        (
            "st",
            torch.ops.egovlpv2.divided_space_time_attention.default,
            (qkv.detach().requires_grad_(), *st_args),
        ),
        ("st_nograd", torch.ops.egovlpv2.divided_space_time_attention.default, (qkv, *st_args)),
        (
            "st_backward",
            torch.ops.egovlpv2.divided_space_time_attention_backward.default,
            (grad_out, qkv, out, lse, *st_args),
        ),
        (
            "cross",
            torch.ops.egovlpv2.gated_cross_attention.default,
            (
                q.requires_grad_(),
                k,
                v,
                key_mask,
                weight.requires_grad_(),
                bias,
                gate.requires_grad_(),
                residual,
                2,
                0.6,
            ),
        ),
        (
            "cross_nomask",
            torch.ops.egovlpv2.gated_cross_attention.default,
            (q.detach(), k, v, None, weight.detach(), None, gate.detach(), residual, 2, 0.6),
        ),
        (
            "cross_backward",
            torch.ops.egovlpv2.gated_cross_attention_backward.default,
            (torch.randn_like(attn), q.detach(), k, v, key_mask, attn, cross_lse, 2, 0.6),
        ),
    ]


@pytest.mark.parametrize(
    "case",
    range(6),
    ids=["st", "st_nograd", "st_backward", "cross", "cross_nomask", "cross_backward"],
)
def test_opcheck(case):
    _, op, args = opcheck_cases()[case]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def block(qkv, q, k, v, key_mask, weight, bias, gate, residual):
        t = ops.divided_space_time_attention(qkv, 2, 3, True, 0.5, impl="fused")
        s = ops.divided_space_time_attention(qkv, 2, 3, False, 0.5, impl="fused")
        c = ops.gated_cross_attention(
            q, k, v, key_mask, weight, bias, gate, residual, 2, 0.6, impl="fused"
        )
        return t + s, c

    qkv = make_qkv(2, 3, 4, 2, 4, torch.float32, "sliced")
    q, kv, key_mask, weight, bias, gate, residual = make_cross(
        2, 5, 4, 2, 3, 5, torch.float32, "padding", True
    )
    args = (qkv, q, kv[..., :6], kv[..., 6:], key_mask, weight, bias, gate, residual)
    eager = block(*args)
    compiled = torch.compile(block, fullgraph=True, backend="inductor")(*args)
    for a, b in zip(compiled, eager, strict=True):
        assert rel_err(a, b) <= 1e-6
    # The compiled graph is differentiable too.
    x = qkv.detach().requires_grad_()
    compiled_grad = torch.compile(
        lambda x: ops.divided_space_time_attention(x, 2, 3, False, 0.5).sum(), fullgraph=True
    )
    (g_compiled,) = torch.autograd.grad(compiled_grad(x), x)
    (g_eager,) = torch.autograd.grad(ops.divided_space_time_attention(x, 2, 3, False, 0.5).sum(), x)
    assert rel_err(g_compiled, g_eager) <= 1e-6


BAD_SPACE_TIME = [
    (lambda x: (x[0], 2, 3, False, 0.5), ValueError, "qkv must have shape"),
    (lambda x: (x, 5, 3, False, 0.5), ValueError, "divisible by num_heads=5"),
    (lambda x: (x, 2, 5, False, 0.5), ValueError, r"T = 1 \+ num_frames\*N"),
    (lambda x: (x.int(), 2, 3, False, 0.5), TypeError, "floating-point"),
    (lambda x: (x.numpy(), 2, 3, False, 0.5), TypeError, "torch.Tensor"),
    (lambda x: (x, 2.0, 3, False, 0.5), TypeError, "num_heads must be an int"),
    (lambda x: (x, 0, 3, False, 0.5), ValueError, "num_heads must be >= 1"),
    (lambda x: (x, 2, 3, 1, 0.5), TypeError, "temporal must be a bool"),
    (lambda x: (x, 2, 3, False, torch.tensor(0.5)), TypeError, "scale must be a Python float"),
    (lambda x: (x.half(), 2, 3, False, 0.5), TypeError, "impl='fused' on cpu supports"),
]


@pytest.mark.parametrize("case", range(len(BAD_SPACE_TIME)))
def test_space_time_bad_input(case):
    make_args, error, message = BAD_SPACE_TIME[case]
    qkv = make_qkv(2, 3, 4, 2, 4, torch.float32, "contiguous")
    with pytest.raises(error, match=message):
        ops.divided_space_time_attention(*make_args(qkv), impl="fused")


def test_bad_impl():
    qkv = make_qkv(1, 1, 2, 1, 4, torch.float32, "contiguous")
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.divided_space_time_attention(qkv, 1, 1, False, 0.5, impl="flash")


BAD_CROSS = [
    ("q", lambda a: a["q"][0], ValueError, "q must have shape \\[B, Lq, D\\]"),
    ("k", lambda a: a["k"][:1], ValueError, "k must have shape \\[B, Lk, D\\]"),
    ("v", lambda a: a["v"][:, :2], ValueError, "v must have the shape of k"),
    ("k", lambda a: a["k"].double(), TypeError, "k must have the dtype of q"),
    (
        "key_mask",
        lambda a: a["key_mask"][:, None, None, :],
        ValueError,
        "key_mask must have shape \\[B, Lk\\]",
    ),
    ("key_mask", lambda a: a["key_mask"][:, :3], ValueError, "key_mask must have shape"),
    ("proj_weight", lambda a: a["proj_weight"][:, :4], ValueError, "proj_weight must have shape"),
    ("proj_bias", lambda a: a["proj_bias"][:2], ValueError, "proj_bias must have shape"),
    ("gate", lambda a: a["gate"].repeat(2), ValueError, "gate must hold one element"),
    ("gate", lambda a: 0.5, TypeError, "gate must be a one-element torch.Tensor"),
    ("residual", lambda a: a["residual"][:, :2], ValueError, "residual must have shape"),
    ("num_heads", lambda a: 4, ValueError, "divisible by num_heads=4"),
]


@pytest.mark.parametrize("case", range(len(BAD_CROSS)), ids=[c[0] for c in BAD_CROSS])
def test_cross_attention_bad_input(case):
    name, make_bad, error, message = BAD_CROSS[case]
    q, kv, key_mask, weight, bias, gate, residual = make_cross(
        2, 5, 4, 2, 3, 5, torch.float32, "padding", True
    )
    args = {
        "q": q,
        "k": kv[..., :6],
        "v": kv[..., 6:],
        "key_mask": key_mask,
        "proj_weight": weight,
        "proj_bias": bias,
        "gate": gate,
        "residual": residual,
        "num_heads": 2,
        "scale": 0.6,
    }
    args[name] = make_bad(args)
    with pytest.raises(error, match=message):
        ops.gated_cross_attention(**args, impl="fused")


def test_raw_op_bad_input_names_the_argument():
    qkv = make_qkv(2, 3, 4, 2, 4, torch.float32, "contiguous")
    with pytest.raises(RuntimeError, match="qkv has 13 tokens; expected 1 \\+ num_frames \\* N"):
        torch.ops.egovlpv2.divided_space_time_attention(qkv, 2, 5, False, 0.5)
    out, lse = torch.ops.egovlpv2.divided_space_time_attention(qkv, 2, 3, False, 0.5)
    with pytest.raises(RuntimeError, match="softmax_lse must have shape \\[B, num_heads, T\\]"):
        torch.ops.egovlpv2.divided_space_time_attention_backward(
            out, qkv, out, lse[:, :1], 2, 3, False, 0.5
        )
    with pytest.raises(RuntimeError, match="softmax_lse must be float32"):
        torch.ops.egovlpv2.divided_space_time_attention_backward(
            out, qkv, out, lse.double(), 2, 3, False, 0.5
        )


def test_build_info_says_cpu_build():
    info = egovlpv2_rt.build_info()
    assert info["build"] != "not built", info.get("error")
    assert info["build"] in ("cpu", "cuda")
    assert info["cuda"] is (info["build"] == "cuda")
    assert info["torch_target_version"] == "2.11"
    assert info["version"] == egovlpv2_rt.__version__
    assert info["cpu_isa"] in info["cpu_isas_compiled"]
    if not torch.version.cuda:
        assert info["cuda_kernels_loaded"] is False


_ISA_CHECK = textwrap.dedent(
    """
    import torch, egovlpv2_rt
    from egovlpv2_rt import ops
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for dtype in (torch.float64, torch.float32):
        for temporal in (False, True):
            qkv = torch.randn(2, 1 + 8 * 20, 3 * 48, generator=g, dtype=dtype)
            ref = ops.divided_space_time_attention(qkv, 2, 8, temporal, 0.2, impl="reference")
            out = ops.divided_space_time_attention(qkv, 2, 8, temporal, 0.2, impl="fused")
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, err / (1e-12 if dtype == torch.float64 else 1e-5))
    print(egovlpv2_rt.build_info()["cpu_isa"], worst)
    """
)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_compiled_cpu_variant(isa):
    compiled = egovlpv2_rt.build_info()["cpu_isas_compiled"]
    if isa not in compiled:
        pytest.skip(f"{isa} kernels not compiled in this build ({compiled})")
    env = dict(os.environ, EGOVLPV2_CPU_ISA=isa, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", _ISA_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    active, worst = result.stdout.split()
    # The requested variant runs where the CPU has it, otherwise the best one below it.
    rank = {"baseline": 0, "avx2": 1, "avx512": 2}
    assert active in compiled and rank[active] <= rank[isa]
    assert float(worst) <= 1.0


_LOADED_FROM = textwrap.dedent(
    """
    import json, sys, torch, egovlpv2_rt
    from egovlpv2_rt import _extension, ops
    qkv = torch.randn(1, 1 + 2 * 3, 3 * 8, dtype=torch.float64, generator=torch.manual_seed(0))
    err = None
    if _extension.loaded() is not None:
        fused = ops.divided_space_time_attention(qkv, 2, 2, False, 0.5, impl="fused")
        ref = ops.divided_space_time_attention(qkv, 2, 2, False, 0.5, impl="reference")
        err = (fused - ref).abs().max().item()
    print(json.dumps({
        "c": getattr(sys.modules.get("egovlpv2_rt._C"), "__file__", None),
        "libraries": egovlpv2_rt.build_info().get("libraries"),
        "error": _extension.load_error(),
        "err": err,
    }))
    """
)


def _load_with_extension_dir(folder) -> dict:
    env = dict(os.environ, EGOVLPV2_EXTENSION_DIR=str(folder))
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_FROM],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_extension_dir_loads_the_build_in_that_folder(tmp_path):
    # make sanitize tests a separate build this way (scripts/sanitize_ops.sh).
    ext = egovlpv2_rt._extension.load()
    c_copy = tmp_path / Path(ext.module.__file__).name
    ops_copy = tmp_path / ext.cpu_library.name
    shutil.copy2(ext.module.__file__, c_copy)
    shutil.copy2(ext.cpu_library, ops_copy)
    got = _load_with_extension_dir(tmp_path)
    assert got["error"] is None
    assert got["c"] == str(c_copy)
    assert got["libraries"] == [str(ops_copy)]
    assert got["err"] <= 1e-12


def test_extension_dir_missing_files_names_the_variable_and_folder(tmp_path):
    empty = _load_with_extension_dir(tmp_path)
    assert (
        f"EGOVLPV2_EXTENSION_DIR={tmp_path.resolve()} holds no compiled module _C"
        in (empty["error"])
    )
    assert empty["libraries"] is None  # build_info of a package without its extension
    # _C alone: the op library is looked for in that folder only, not in the package.
    ext = egovlpv2_rt._extension.load()
    shutil.copy2(ext.module.__file__, tmp_path / Path(ext.module.__file__).name)
    partial = _load_with_extension_dir(tmp_path)
    assert f"the op library _ops_cpu.so is not in {tmp_path.resolve()};" in partial["error"]
