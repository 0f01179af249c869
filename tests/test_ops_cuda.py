"""CUDA kernels of the egovlpv2 ops against the float64 reference, on a real GPU.

Fresh random inputs every run (the seed is printed on failure). Before each kernel call the
caching allocator is emptied and refilled with NaN blocks of the outputs' sizes, so an output
element the kernels never write stays NaN and fails the finiteness check. Bounds: float32
err <= 1e-5 against float64; float16/bfloat16 err <= 2x the error of PyTorch's own reference
path run in that precision, on the same inputs, against the same float64 truth.
"""

from __future__ import annotations

import dataclasses
import random

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

import egovlpv2_rt
from egovlpv2_rt import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LOW = (torch.float16, torch.bfloat16)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_ids = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@pytest.fixture(scope="module", autouse=True)
def cuda_kernels():
    ext = egovlpv2_rt._extension.loaded()
    if ext is None or ext.cuda_library is None:
        why = "not built" if ext is None else ext.cuda_error
        pytest.skip(f"the CUDA kernels of egovlpv2_rt are not loaded: {why}")
    # Float64 truth and float32 checks need exact float32 products in the references.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield ext
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Rng:
    """Fresh random inputs per test; the seed is reported by every failing check."""

    def __init__(self) -> None:
        self.seed = random.SystemRandom().randrange(2**31)
        self.cuda = torch.Generator(device="cuda")
        self.cuda.manual_seed(self.seed)
        self.cpu = torch.Generator()
        self.cpu.manual_seed(self.seed)


@pytest.fixture
def gen() -> Rng:
    return Rng()


def _randn(shape, dtype, g: Rng, scale=1.0):
    x = torch.randn(shape, generator=g.cuda, device="cuda", dtype=torch.float32)
    return (x * scale).to(dtype)


def _mask(batch, len_k, dtype, g: Rng):
    return padding_mask(batch, len_k, dtype, "cuda", generator=g.cpu)


def _poison(*specs):
    """Empty the caching allocator, then leave it holding NaN-filled free blocks of the given
    (shape, dtype) sizes: the next allocations of those sizes reuse them."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full(s, float("nan"), dtype=d, device="cuda") for s, d in specs]
    for _ in range(2):  # a second copy of each: intermediate allocations may take one
        blocks += [torch.full(s, float("nan"), dtype=d, device="cuda") for s, d in specs]
    del blocks


def _check(ours, truth, own, what, g: Rng):
    seed = g.seed
    assert torch.isfinite(ours).all(), f"{what}: non-finite output elements (seed {seed})"
    err = rel_err(ours, truth)
    if ours.dtype == torch.float32:
        assert err <= 1e-5, f"{what}: float32 err {err:.3e} > 1e-5 (seed {seed})"
    else:
        own_err = rel_err(own, truth)
        assert err <= 2 * own_err, (
            f"{what}: err {err:.3e} > 2 x PyTorch's own {own_err:.3e} (seed {seed})"
        )


def _check_lse(lse, truth, what, g: Rng):
    assert lse.dtype == torch.float32
    tol = 2e-5 * max(1.0, truth.abs().max().item())
    err = (lse.double() - truth).abs().max().item()
    assert err <= tol, f"{what}: softmax_lse err {err:.3e} > {tol:.1e} (seed {g.seed})"


# ---- divided space-time attention --------------------------------------------------------------
DIVIDED_SHAPES = [
    # batch, frames, patches, heads, head_dim
    pytest.param(3, 4, 196, 12, 64, id="B3-F4-N196-h12-d64"),
    pytest.param(5, 1, 4, 2, 64, id="B5-F1-N4"),
    pytest.param(3, 8, 4, 2, 64, id="B3-F8-N4"),
    pytest.param(1, 16, 196, 2, 64, id="B1-F16-N196"),
    pytest.param(3, 4, 4, 4, 32, id="B3-F4-N4-d32"),
    pytest.param(1, 4, 196, 2, 96, id="B1-F4-N196-d96"),
    pytest.param(1, 8, 196, 1, 128, id="B1-F8-N196-d128"),
]


def _divided_case(dtype, batch, frames, patches, heads, head_dim, temporal, g, qkv=None):
    tokens = 1 + frames * patches
    d = heads * head_dim
    scale = head_dim**-0.5
    if qkv is None:
        qkv = _randn((batch, tokens, 3 * d), dtype, g)
    grad_out = _randn((batch, tokens, d), dtype, g)
    _poison(((batch, tokens, d), dtype), ((batch, heads, tokens), torch.float32))
    out, lse = torch.ops.egovlpv2.divided_space_time_attention(qkv, heads, frames, temporal, scale)
    _poison(((batch, tokens, 3 * d), dtype), ((batch, heads, tokens), torch.float32))
    grad = torch.ops.egovlpv2.divided_space_time_attention_backward(
        grad_out, qkv, out, lse, heads, frames, temporal, scale
    )
    assert out.shape == (batch, tokens, d) and out.dtype == dtype and out.is_contiguous()
    assert grad.shape == (batch, tokens, 3 * d) and grad.dtype == dtype

    truth, truth_grad = divided_reference(
        qkv.double(), heads, frames, temporal, scale, grad_out.double()
    )
    own = own_grad = None
    if dtype in LOW:
        own, own_grad = divided_reference(qkv, heads, frames, temporal, scale, grad_out)
    _check(out, truth, own, "out", g)
    _check_lse(lse, divided_lse(qkv, heads, frames, temporal, scale), "out", g)
    for i, name in enumerate(("grad q", "grad k", "grad v")):
        sl = slice(i * d, (i + 1) * d)
        _check(
            grad[..., sl],
            truth_grad[..., sl],
            None if own_grad is None else own_grad[..., sl],
            name,
            g,
        )


@pytest.mark.parametrize("temporal", [False, True], ids=["space", "time"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
@pytest.mark.parametrize("batch,frames,patches,heads,head_dim", DIVIDED_SHAPES)
def test_divided_matches_float64(dtype, batch, frames, patches, heads, head_dim, temporal, gen):
    _divided_case(dtype, batch, frames, patches, heads, head_dim, temporal, gen)


@pytest.mark.parametrize(
    "batch,frames,patches,temporal",
    [(1, 32, 4, True), (1, 32, 4, False), (1, 1, 1024, False), (1, 1, 1024, True)],
    ids=["F32-time", "F32-space", "N1024-space", "N1024-time"],
)
def test_divided_limits(batch, frames, patches, temporal, gen):
    _divided_case(torch.bfloat16, batch, frames, patches, 2, 64, temporal, gen)


@pytest.mark.parametrize("temporal", [False, True], ids=["space", "time"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids.get)
def test_divided_reads_any_strides(dtype, temporal, gen):
    # [T, B, 3D + 8] storage seen as [B, T, 3D]; and a row pitch that breaks 16-byte alignment.
    b, f, n, h, dh = 3, 4, 9, 2, 64
    t, c = 1 + f * n, 3 * h * dh
    for pad, transpose in ((8, True), (1, False)):
        store = _randn((t, b, c + pad) if transpose else (b, t, c + pad), dtype, gen)
        qkv = (store.transpose(0, 1) if transpose else store)[..., :c]
        assert not qkv.is_contiguous()
        _divided_case(dtype, b, f, n, h, dh, temporal, gen, qkv=qkv)


# ---- gated cross-attention --------------------------------------------------------------------
CROSS_SHAPES = [
    # batch, len_q, len_k, heads, head_dim, masked
    pytest.param(3, 785, 32, 12, 64, True, id="i2t-B3-Lq785-Lk32"),
    pytest.param(3, 32, 785, 12, 64, False, id="t2i-B3-Lq32-Lk785"),
    pytest.param(1, 8192, 1024, 2, 64, True, id="Lq8192-Lk1024"),
    pytest.param(1, 77, 50, 4, 32, True, id="d32"),
    pytest.param(1, 77, 50, 2, 96, True, id="d96"),
    pytest.param(1, 77, 70, 2, 128, True, id="d128"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
@pytest.mark.parametrize("batch,len_q,len_k,heads,head_dim,masked", CROSS_SHAPES)
def test_cross_core_matches_float64(dtype, batch, len_q, len_k, heads, head_dim, masked, gen):
    d = heads * head_dim
    scale = head_dim**-0.5
    q = _randn((batch, len_q, d), dtype, gen)
    kv = _randn((batch, len_k, 2 * d), dtype, gen)  # k, v: halves of one packed projection
    k, v = kv[..., :d], kv[..., d:]
    mask = _mask(batch, len_k, dtype, gen) if masked else None
    grad_attn = _randn((batch, len_q, d), dtype, gen)
    w = _randn((d, d), dtype, gen, scale=d**-0.5)
    gate = _randn((1,), dtype, gen)
    residual = _randn((batch, len_q, d), dtype, gen)
    _poison(((batch, len_q, d), dtype), ((batch, heads, len_q), torch.float32))
    out, attn, lse = torch.ops.egovlpv2.gated_cross_attention(
        q, k, v, mask, w, None, gate, residual, heads, scale
    )
    _poison(((batch, len_q, d), dtype), ((batch, len_k, d), dtype))
    gq, gk, gv = torch.ops.egovlpv2.gated_cross_attention_backward(
        grad_attn, q, k, v, mask, attn, lse, heads, scale
    )
    m64 = None if mask is None else mask.double()
    truth, truth_grads = cross_core_reference(
        q.double(), k.double(), v.double(), m64, heads, scale, grad_attn.double()
    )
    own, own_grads = None, (None, None, None)
    if dtype in LOW:
        own, own_grads = cross_core_reference(q, k, v, mask, heads, scale, grad_attn)
    _check(attn, truth, own, "attn", gen)
    _check_lse(lse, cross_lse(q, k, mask, heads, scale), "attn", gen)
    for name, ours, tr, ow in zip(
        ("grad q", "grad k", "grad v"), (gq, gk, gv), truth_grads, own_grads, strict=True
    ):
        _check(ours, tr, ow, name, gen)
    # The epilogue: out = residual + gate * (attn @ w^T), on the kernel's own attn.
    epi = residual.double() + gate.double() * (attn.double() @ w.double().t())
    epi_own = residual + gate * torch.nn.functional.linear(attn, w) if dtype in LOW else None
    _check(out, epi, epi_own, "out", gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
def test_gated_cross_attention_autograd(dtype, masked, gen):
    """The whole fused op through ops.py (register_autograd) against the reference path."""
    b, lq, lk, h, dh, dout = 3, 197, 29, 4, 64, 96
    d = h * dh
    scale = dh**-0.5
    q = _randn((b, lq, d), dtype, gen)
    k, v = _randn((b, lk, d), dtype, gen), _randn((b, lk, d), dtype, gen)
    mask = _mask(b, lk, dtype, gen) if masked else None
    w = _randn((dout, d), dtype, gen, scale=d**-0.5)
    bias = _randn((dout,), dtype, gen)
    gate = _randn((1,), dtype, gen)
    residual = _randn((b, lq, dout), dtype, gen)
    grad = _randn((b, lq, dout), dtype, gen)
    inputs = (q, k, v, w, bias, gate, residual)

    def run(impl, tensors):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        qq, kk, vv, ww, bb, gg, rr = leaves
        mm = None if mask is None else mask.to(qq.dtype)
        out = ops.gated_cross_attention(qq, kk, vv, mm, ww, bb, gg, rr, h, scale, impl=impl)
        out.backward(grad.to(out.dtype))
        return out.detach(), [t.grad for t in leaves]

    out, grads = run("fused", inputs)
    truth, truth_grads = run("reference", [t.double() for t in inputs])
    own, own_grads = run("reference", inputs) if dtype in LOW else (None, [None] * 7)
    _check(out, truth, own, "out", gen)
    names = (
        "grad q",
        "grad k",
        "grad v",
        "grad proj_weight",
        "grad proj_bias",
        "grad gate",
        "grad residual",
    )
    # Low precision: the attention core's gradients; the reductions of ops.py (weight, bias,
    # gate) are compared in float32, where their rounding is not a coin toss against PyTorch's.
    checked = range(7) if dtype == torch.float32 else (0, 1, 2, 6)
    for i in checked:
        _check(grads[i], truth_grads[i], own_grads[i], names[i], gen)


# ---- torch.library.opcheck ---------------------------------------------------------------------
OPCHECK_CASES = [
    "st",
    "st_space",
    "st_nograd",
    "st_backward",
    "cross",
    "cross_nomask",
    "cross_backward",
]


def _opcheck_cases(dtype, g: Rng) -> dict:
    """{case: (op, args)} for every custom op on CUDA tensors, as tests/test_ops_cpu.py has them
    on CPU. qkv is a column slice of a wider projection (rows stay 16-byte aligned, so the
    tensor-core and CLS-partial paths run for 16-bit dtypes); k and v are the halves of one."""
    ops_ = torch.ops.egovlpv2
    h, dh, f, n = 2, 32, 3, 4
    d = h * dh
    qkv = _randn((2, 1 + f * n, 3 * d + 8), dtype, g)[..., : 3 * d]
    st_args = (h, f, True, 0.5)
    out, lse = ops_.divided_space_time_attention(qkv, *st_args)
    q = _randn((2, 5, d), dtype, g)
    kv = _randn((2, 4, 2 * d), dtype, g)
    k, v = kv[..., :d], kv[..., d:]
    key_mask = _mask(2, 4, dtype, g)
    weight = _randn((6, d), dtype, g, scale=d**-0.5)
    bias, gate, residual = (
        _randn((6,), dtype, g),
        _randn((1,), dtype, g),
        _randn((2, 5, 6), dtype, g),
    )
    _, attn, cross_lse = ops_.gated_cross_attention(
        q, k, v, key_mask, weight, bias, gate, residual, h, 0.6
    )
    st, st_bwd = ops_.divided_space_time_attention, ops_.divided_space_time_attention_backward
    cross, cross_bwd = ops_.gated_cross_attention, ops_.gated_cross_attention_backward

    def leaf(t):
        return t.detach().clone().requires_grad_()

    return {
        "st": (st.default, (qkv.detach().requires_grad_(), *st_args)),
        "st_space": (st.default, (qkv.detach().requires_grad_(), h, f, False, 0.5)),
        "st_nograd": (st.default, (qkv, *st_args)),
        "st_backward": (st_bwd.default, (_randn(out.shape, dtype, g), qkv, out, lse, *st_args)),
        "cross": (
            cross.default,
            (leaf(q), k, v, key_mask, leaf(weight), bias, leaf(gate), residual, h, 0.6),
        ),
        "cross_nomask": (cross.default, (q, k, v, None, weight, None, gate, residual, h, 0.6)),
        "cross_backward": (
            cross_bwd.default,
            (_randn(attn.shape, dtype, g), q, k, v, key_mask, attn, cross_lse, h, 0.6),
        ),
    }


@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids.get)
def test_opcheck(case, dtype, gen):
    op, args = _opcheck_cases(dtype, gen)[case]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), (result, f"seed {gen.seed}")


# ---- torch.compile and CUDA graphs --------------------------------------------------------------
def _block(qkv, text, text_mask, w, bias, gate):
    """A video block's attention part: time, then space, then gated i2t cross-attention."""
    h, f, scale = 4, 4, 64**-0.5
    x = ops.divided_space_time_attention(qkv, h, f, True, scale)
    y = ops.divided_space_time_attention(qkv * 0.5 + x.repeat(1, 1, 3) * 0.1, h, f, False, scale)
    d = y.shape[-1]
    return ops.gated_cross_attention(
        y, text[..., :d], text[..., d:], text_mask, w, bias, gate, y, h, scale
    )


def _block_inputs(dtype, g):
    b, f, n, h, dh, lk = 3, 4, 49, 4, 64, 17
    d = h * dh
    return (
        _randn((b, 1 + f * n, 3 * d), dtype, g),
        _randn((b, lk, 2 * d), dtype, g),
        _mask(b, lk, dtype, g),
        _randn((d, d), dtype, g, scale=d**-0.5),
        _randn((d,), dtype, g),
        _randn((1,), dtype, g),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids.get)
def test_torch_compile_fullgraph(dtype, gen):
    inputs = _block_inputs(dtype, gen)
    leaves = [t.clone().requires_grad_(i in (0, 1, 3, 5)) for i, t in enumerate(inputs)]
    eager = _block(*leaves)
    eager.float().square().sum().backward()
    eager_grads = [t.grad for t in leaves if t.requires_grad]
    torch._dynamo.reset()
    compiled_fn = torch.compile(_block, fullgraph=True)
    leaves_c = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    compiled = compiled_fn(*leaves_c)
    compiled.float().square().sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(compiled, eager) <= tol
    for a, e in zip([t.grad for t in leaves_c if t.requires_grad], eager_grads, strict=True):
        assert torch.isfinite(a).all() and rel_err(a, e) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids.get)
def test_cuda_graph_capture(dtype, gen):
    h, f, scale = 4, 4, 64**-0.5
    static = [t.clone() for t in _block_inputs(dtype, gen)]
    qkv, text, mask, w, bias, gate = static
    d = w.shape[0]
    grad_out = _randn((qkv.shape[0], qkv.shape[1], d), dtype, gen)

    def step():
        out, lse = torch.ops.egovlpv2.divided_space_time_attention(qkv, h, f, False, scale)
        g = torch.ops.egovlpv2.divided_space_time_attention_backward(
            grad_out, qkv, out, lse, h, f, False, scale
        )
        c, attn, clse = torch.ops.egovlpv2.gated_cross_attention(
            out, text[..., :d], text[..., d:], mask, w, bias, gate, out, h, scale
        )
        gq, gk, gv = torch.ops.egovlpv2.gated_cross_attention_backward(
            c, out, text[..., :d], text[..., d:], mask, attn, clse, h, scale
        )
        return out, g, c, gq, gk, gv

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(2):  # new data through the same static buffers
        fresh = _block_inputs(dtype, gen)
        for s, n in zip(static, fresh, strict=True):
            s.copy_(n)
        grad_out.copy_(_randn(grad_out.shape, dtype, gen))
        graph.replay()
        expected = step()
        torch.cuda.synchronize()
        # The attention kernels replay bit for bit; cuBLAS may pick another algorithm for the
        # projection inside a capture, which moves low-precision results by a few ulps.
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for a, e in zip(captured, expected, strict=True):
            assert torch.isfinite(a).all() and rel_err(a, e) <= tol


# ---- the model's fused path --------------------------------------------------------------------
def _tiny_models():
    try:
        from egovlpv2_rt.config import preset
        from egovlpv2_rt.modeling import EgoVLPv2
    except ImportError as exc:  # the modeling package is another part of the project
        pytest.skip(f"egovlpv2_rt.modeling / config not importable: {exc}")
    base = preset("tiny")
    # Head dim 16 (tiny) runs the one-row kernels; 64 (one head) the tensor-core ones.
    one_head = base.replace(
        video=dataclasses.replace(base.video, num_heads=1),
        fusion=dataclasses.replace(base.fusion, num_heads=1),
    )
    return EgoVLPv2, {"tiny": base, "tiny-1head": one_head}


@pytest.mark.parametrize("config_name", ["tiny", "tiny-1head"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids.get)
def test_model_fused_matches_reference(config_name, dtype, gen):
    model_cls, configs = _tiny_models()
    cfg = configs[config_name]
    model = model_cls(cfg).cuda().double().eval()
    with torch.no_grad():  # random weights everywhere, gates included (they start at zero)
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen.cuda, device="cuda", dtype=torch.float64) * 0.05
            )
    b, frames, side = 3, cfg.video.num_frames, cfg.video.img_size
    video = torch.randn(
        (b, frames, 3, side, side), generator=gen.cuda, device="cuda", dtype=torch.float64
    )
    length = 12
    ids = torch.randint(3, cfg.text.vocab_size, (b, length), generator=gen.cuda, device="cuda")
    att = torch.ones(b, length, dtype=torch.long, device="cuda")
    att[0, 4:] = 0  # heavy padding
    att[1, 7:] = 0

    def run(m, d, impl):
        m.set_attention_impl(impl)
        with torch.no_grad():
            v = m.forward_video(video.to(d)).embeds
            f = m.forward_fusion(video.to(d), ids, att, task="itm")
        return v, f.logits, f.text_states

    truth = run(model, torch.float64, "reference")
    model_d = model.to(dtype)
    fused = run(model_d, dtype, "fused")
    own = run(model_d, dtype, "reference") if dtype in LOW else (None, None, None)
    names = ("video embeds", "itm logits", "text states")
    for name, a, t, o in zip(names, fused, truth, own, strict=True):
        if dtype in LOW and name == "itm logits":
            # Six numbers: too few for a fair "2x PyTorch's own error" in low precision.
            assert torch.isfinite(a).all()
            continue
        _check(a, t, o, f"{config_name} {name}", gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_ids.get)
def test_fused_ops_under_cuda_autocast_run_in_the_autocast_dtype(dtype):
    # The CUDA kernels have float16 / bfloat16 paths: under CUDA autocast the ops cast their
    # float32 inputs to the autocast dtype and return it (no float32 fallback, unlike the CPU),
    # computing exactly what the explicit low-precision call computes.
    g = torch.Generator(device="cuda").manual_seed(5)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device="cuda")

    qkv = rnd(2, 1 + 2 * 4, 3 * 16)  # B 2, F 2, N 4, 2 heads x 8
    q, k, v, residual = rnd(2, 5, 16), rnd(2, 6, 16), rnd(2, 6, 16), rnd(2, 5, 16)
    key_mask = torch.zeros(2, 6, device="cuda")
    key_mask[1, 4:] = torch.finfo(dtype).min
    weight, bias, gate = rnd(16, 16) * 0.25, rnd(16), rnd(1)
    cross = (q, k, v, key_mask, weight, bias, gate, residual)
    with torch.autocast("cuda", dtype=dtype):
        out_s = ops.divided_space_time_attention(qkv, 2, 2, False, 0.35)
        out_c = ops.gated_cross_attention(*cross, 2, 0.35)
    assert out_s.dtype == out_c.dtype == dtype
    assert torch.equal(out_s, ops.divided_space_time_attention(qkv.to(dtype), 2, 2, False, 0.35))
    assert torch.equal(out_c, ops.gated_cross_attention(*(t.to(dtype) for t in cross), 2, 0.35))
    assert torch.isfinite(out_s.float()).all() and torch.isfinite(out_c.float()).all()
