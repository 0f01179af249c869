"""GPU benchmark of the fused egovlpv2 ops (issue 3, item 6).

bfloat16, batch 32 clips, F = 4 frames, N = 196 patches, 12 heads of 64 (the released model's
video tower). For each op: the fused CUDA op, the reference eager path (the original's
rearrange/cat/einsum code) and an SDPA-based implementation of the same math (the rearranges it
needs + torch.nn.functional.scaled_dot_product_attention), forward and forward+backward. Then:
the time attention's achieved bandwidth against a device-to-device copy measured in the same
run, the whole video encoder forward at batch 32 (fused, reference eager, torch.compile of the
reference path), and its model FLOP utilisation against a bf16 matmul measured in the same run.

Timing: CUDA events around each call, warm-up first, median of --iters (>= 50) calls.
With --profile-cross, the fused gated cross-attention (i2t and t2i, forward and forward+backward)
is also run under torch.profiler and each CUDA kernel's device time per call is printed: the
fused op's time is its cuBLAS projection, the attention kernel and the gate/residual pass, and
this says which one moved when the op's time moves between machines.

Usage: python bench/bench_ops_gpu.py [--iters 50] [--json out.json] [--no-model] [--no-compile]
       [--compile-limit 120] [--profile-cross]
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

B, FRAMES, PATCHES, HEADS, HEAD_DIM = 32, 4, 196, 12, 64
TOKENS = 1 + FRAMES * PATCHES
DIM = HEADS * HEAD_DIM
TEXT_LEN = 32
DTYPE = torch.bfloat16
SCALE = HEAD_DIM**-0.5

# Targets of issue 3 (H100, bf16): (row, column of the ratio, minimum).
TARGETS = {
    ("space attention fwd", "ref/fused"): 3.0,
    ("space attention fwd", "sdpa/fused"): 1.5,
    ("space attention fwd+bwd", "sdpa/fused"): 1.5,
    ("time attention fwd", "ref/fused"): 3.0,
    ("time attention fwd", "sdpa/fused"): 1.5,
    ("time attention fwd+bwd", "sdpa/fused"): 1.5,
    ("cross i2t fwd", "ref/fused"): 2.0,
    ("cross t2i fwd", "ref/fused"): 2.0,
    ("video encoder fwd B32", "ref/fused"): 1.5,
}


def time_ms(fn: Callable[[], object], iters: int, warmup: int = 10) -> float:
    """Median wall time of fn on the GPU, in ms (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


# ---- implementations of divided attention ------------------------------------------------------
def sdpa_divided(
    qkv: torch.Tensor, heads: int, frames: int, temporal: bool, scale: float
) -> torch.Tensor:
    """The same math through SDPA: [B, T, 3D] -> [B, T, D]."""
    b, t, c = qkv.shape
    dh = c // 3 // heads
    n = (t - 1) // frames
    q, k, v = qkv.view(b, t, 3, heads, dh).unbind(2)  # [B, T, h, dh] views

    def to_bhtd(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)

    cls = F.scaled_dot_product_attention(to_bhtd(q[:, :1]), to_bhtd(k), to_bhtd(v), scale=scale)
    if temporal:
        frm, to, dims = "b (f n) h d", "(b n) h f d", {"n": n}
    else:
        frm, to, dims = "b (f n) h d", "(b f) h n d", {"f": frames}
    qp, kp, vp = (rearrange(x[:, 1:], f"{frm} -> {to}", **dims) for x in (q, k, v))
    groups = qp.shape[0] // b
    kc, vc = (repeat(x[:, :1], "b o h d -> (b g) h o d", g=groups) for x in (k, v))
    out = F.scaled_dot_product_attention(
        qp, torch.cat((kc, kp), 2), torch.cat((vc, vp), 2), scale=scale
    )
    out = rearrange(out, f"{to} -> {frm}", **dims)
    out = torch.cat((cls.transpose(1, 2), out), 1)
    return out.reshape(b, t, heads * dh)


def sdpa_cross(q, k, v, key_mask, w, bias, gate, residual, heads, scale):
    qh, kh, vh = (rearrange(x, "b n (h d) -> b h n d", h=heads) for x in (q, k, v))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    attn = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return residual + gate * F.linear(rearrange(attn, "b h n d -> b n (h d)"), w, bias)


# ---- measurements ------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float | str] = field(default_factory=dict)

    def ratio(self, slow: str, fast: str = "fused") -> float | None:
        if slow in self.ms and fast in self.ms and self.ms[fast] > 0:
            return self.ms[slow] / self.ms[fast]
        return None


def fwd_and_fwdbwd(
    impls: dict[str, Callable],
    inputs: list[torch.Tensor],
    grad_index: list[int],
    grad_out: torch.Tensor,
    iters: int,
) -> tuple[dict, dict]:
    fwd, fb = {}, {}
    for name, fn in impls.items():
        with torch.no_grad():
            fwd[name] = time_ms(lambda fn=fn: fn(*inputs), iters)
        leaves = [x.detach().clone().requires_grad_(i in grad_index) for i, x in enumerate(inputs)]

        def step(fn=fn, leaves=leaves):
            out = fn(*leaves)
            out.backward(grad_out)
            for x in leaves:
                x.grad = None

        fb[name] = time_ms(step, iters)
        print(f"  {name:6s} fwd {fwd[name]:8.3f} ms  fwd+bwd {fb[name]:8.3f} ms", flush=True)
    return fwd, fb


def bench_divided(rows: list[Row], iters: int) -> None:
    from egovlpv2_rt import ops

    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(B, TOKENS, 3 * DIM, generator=g, device="cuda").to(DTYPE)
    grad = torch.randn(B, TOKENS, DIM, generator=g, device="cuda").to(DTYPE)
    for temporal, label in ((False, "space"), (True, "time")):
        print(f"[{label} attention]", flush=True)
        impls = {
            "fused": lambda x, t=temporal: ops.divided_space_time_attention(
                x, HEADS, FRAMES, t, SCALE, impl="fused"
            ),
            "ref": lambda x, t=temporal: ops.divided_space_time_attention(
                x, HEADS, FRAMES, t, SCALE, impl="reference"
            ),
            "sdpa": lambda x, t=temporal: sdpa_divided(x, HEADS, FRAMES, t, SCALE),
        }
        fwd, fb = fwd_and_fwdbwd(impls, [qkv], [0], grad, iters)
        rows.append(Row(f"{label} attention fwd", fwd))
        rows.append(Row(f"{label} attention fwd+bwd", fb))


def bench_copy_bandwidth(iters: int) -> float:
    """Device-to-device copy, bytes read + written per second (GB/s)."""
    n = 512 * 1024 * 1024  # 1 GiB of bf16
    src = torch.empty(n, dtype=DTYPE, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), iters)
    return 2 * n * 2 / (ms * 1e-3) / 1e9


def time_attention_bytes() -> int:
    """Fewest bytes the time attention must move: qkv read, out written, lse written."""
    return B * TOKENS * 3 * DIM * 2 + B * TOKENS * DIM * 2 + B * HEADS * TOKENS * 4


def profile_kernels(label: str, fn: Callable[[], object], calls: int = 20) -> list[dict]:
    """Device time per call of each CUDA kernel ``fn`` launches (torch.profiler, after warm-up).

    Returns rows ``{"kernel", "us_per_call", "launches_per_call"}``, slowest first; prints them.
    """
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None)
        if us is None:
            us = ev.self_cuda_time_total
        if us > 0:
            rows.append(
                {"kernel": ev.key, "us_per_call": us / calls, "launches_per_call": ev.count / calls}
            )
    rows.sort(key=lambda r: -r["us_per_call"])
    total = sum(r["us_per_call"] for r in rows)
    print(f"[profile {label}] {total:.1f} us of kernels per call", flush=True)
    for r in rows[:8]:
        print(
            f"  {r['us_per_call']:8.1f} us  x{r['launches_per_call']:.0f}  {r['kernel'][:90]}",
            flush=True,
        )
    return rows


def bench_cross(rows: list[Row], iters: int, profile_cross: bool = False) -> dict:
    """Times the cross-attention cases into ``rows``; returns the kernel profiles when asked."""
    from egovlpv2_rt import ops

    g = torch.Generator(device="cuda").manual_seed(1)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * s).to(DTYPE)

    w, bias, gate = rnd(DIM, DIM, s=DIM**-0.5), rnd(DIM), rnd(1)
    profiles: dict[str, list[dict]] = {}
    keep = torch.ones(B, TEXT_LEN, device="cuda")
    keep[:, TEXT_LEN // 2 :] = 0  # half of the text padded
    text_mask = ((1 - keep) * torch.finfo(DTYPE).min).to(DTYPE)
    cases = {
        # i2t: video queries, text keys/values with the text mask.
        "cross i2t": (
            rnd(B, TOKENS, DIM),
            rnd(B, TEXT_LEN, DIM),
            rnd(B, TEXT_LEN, DIM),
            text_mask,
            rnd(B, TOKENS, DIM),
        ),
        # t2i: text queries, video keys/values, no mask.
        "cross t2i": (
            rnd(B, TEXT_LEN, DIM),
            rnd(B, TOKENS, DIM),
            rnd(B, TOKENS, DIM),
            None,
            rnd(B, TEXT_LEN, DIM),
        ),
    }
    for label, (q, k, v, mask, residual) in cases.items():
        print(f"[{label}]", flush=True)

        def make(impl, mask=mask):
            if impl == "sdpa":
                return lambda qq, kk, vv, ww, rr: sdpa_cross(
                    qq, kk, vv, mask, ww, bias, gate, rr, HEADS, SCALE
                )
            return lambda qq, kk, vv, ww, rr: ops.gated_cross_attention(
                qq, kk, vv, mask, ww, bias, gate, rr, HEADS, SCALE, impl=impl
            )

        impls = {"fused": make("fused"), "ref": make("reference"), "sdpa": make("sdpa")}
        grad = rnd(*residual.shape)
        fwd, fb = fwd_and_fwdbwd(impls, [q, k, v, w, residual], [0, 1, 2, 3, 4], grad, iters)
        rows.append(Row(f"{label} fwd", fwd))
        rows.append(Row(f"{label} fwd+bwd", fb))
        if profile_cross:
            fused = impls["fused"]
            leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, w, residual)]

            def fwd_only(fused=fused, args=(q, k, v, w, residual)):
                with torch.no_grad():
                    fused(*args)

            def fwd_bwd(fused=fused, leaves=leaves, grad=grad):
                fused(*leaves).backward(grad)
                for x in leaves:
                    x.grad = None

            profiles[f"{label} fwd"] = profile_kernels(f"{label} fwd", fwd_only)
            profiles[f"{label} fwd+bwd"] = profile_kernels(f"{label} fwd+bwd", fwd_bwd)
    return profiles


def matmul_tflops(iters: int) -> float:
    n = 8192
    g = torch.Generator(device="cuda").manual_seed(2)
    a = torch.randn(n, n, generator=g, device="cuda").to(DTYPE)
    b = torch.randn(n, n, generator=g, device="cuda").to(DTYPE)
    ms = time_ms(lambda: a @ b, max(20, iters // 2), warmup=5)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def video_encoder_flops(cfg) -> float:
    """Forward FLOPs of forward_video at batch B: the patch convolution, every Linear and the
    two attention products (QK^T, PV) of both attentions; norms and softmax are not counted."""
    v = cfg.video
    n = (v.img_size // v.patch_size) ** 2
    t = 1 + FRAMES * n
    d = v.embed_dim
    hidden = int(d * v.mlp_ratio)
    patch = 2 * FRAMES * n * (v.in_chans * v.patch_size**2) * d
    per_block = (
        2 * (2 * t * d * 3 * d + 2 * t * d * d)  # time and space: qkv and proj
        + 2 * 2 * t * d * hidden  # MLP
        + 4 * d * ((t - 1) * (FRAMES + 1) + t)  # time attention: QK^T and PV
        + 4 * d * ((t - 1) * (n + 1) + t)  # space attention
    )
    return B * (patch + v.depth * per_block + 2 * d * cfg.projection_dim)


class _CompileTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _CompileTimeout


def _describe_error(exc: BaseException) -> str:
    """One line naming the real failure: inductor wraps it (InductorError: AssertionError with
    no message says nothing), so report the inner exception and where it was raised."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
    frames = traceback.extract_tb(inner.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    text = f"{type(exc).__name__}"
    if inner is not exc:
        text += f" <- {type(inner).__name__}"
    msg = str(inner).strip().splitlines()
    if msg:
        text += f": {msg[0][:200]}"
    return f"{text} at {where}" if where else text


def _bench_compiled(
    row: Row, scope: str, fn: Callable[[], torch.Tensor], iters: int, limit_s: int
) -> bool:
    """Compiles (first call, under its own time limit) and times `fn`; records ms["compile"] or
    the error in row.extra. Returns whether it worked."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(limit_s)
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
            torch.cuda.synchronize()
        row.extra["compile s"] = round(time.perf_counter() - t0, 1)
        signal.alarm(0)
        with torch.no_grad():
            row.ms["compile"] = time_ms(fn, iters, warmup=3)
        row.extra["compile scope"] = scope
        print(
            f"  compile ({scope}) {row.ms['compile']:.3f} ms "
            f"({row.extra['compile s']} s to compile)",
            flush=True,
        )
        return True
    except _CompileTimeout:
        row.extra[f"compile error ({scope})"] = f"torch.compile took longer than {limit_s} s"
    except Exception as exc:  # noqa: BLE001 -- any compiler failure: report it, keep the rest
        row.extra[f"compile error ({scope})"] = _describe_error(exc)
        print(f"  compile ({scope}) FAILED: {_describe_error(exc)}", flush=True)
        traceback.print_exception(exc, file=sys.stdout)  # the full stack goes to the log
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return False


def bench_model(
    rows: list[Row], iters: int, compile_ref: bool, peak_tflops: float, compile_limit_s: int
) -> None:
    try:
        from egovlpv2_rt.config import preset
        from egovlpv2_rt.modeling import EgoVLPv2
    except ImportError as exc:
        print(f"[video encoder] skipped: egovlpv2_rt.modeling is not importable ({exc})")
        return
    cfg = preset("base")
    model = EgoVLPv2(cfg).cuda().to(DTYPE).eval()
    g = torch.Generator(device="cuda").manual_seed(3)
    video = torch.randn(
        B, FRAMES, 3, cfg.video.img_size, cfg.video.img_size, generator=g, device="cuda"
    ).to(DTYPE)
    row = Row("video encoder fwd B32")
    model_iters = max(20, iters // 2)

    def run(impl):
        model.set_attention_impl(impl)
        with torch.no_grad():
            return time_ms(lambda: model.forward_video(video).embeds, model_iters, warmup=3)

    print("[video encoder]", flush=True)
    row.ms["fused"] = run("fused")
    row.ms["ref"] = run("reference")
    print(f"  fused {row.ms['fused']:.3f} ms  ref {row.ms['ref']:.3f} ms", flush=True)
    rows.append(row)
    if compile_ref:
        model.set_attention_impl("reference")
        # Whole forward first; if inductor fails on it, compile each SpaceTimeBlock instead (the
        # bulk of the time), so that the table still has a compiled number, marked as such.
        whole = torch.compile(lambda x: model.forward_video(x).embeds)
        if not _bench_compiled(
            row, "whole forward", lambda: whole(video), model_iters, compile_limit_s
        ):
            torch._dynamo.reset()
            blocks = [m for m in model.modules() if type(m).__name__ == "SpaceTimeBlock"]
            for m in blocks:
                m.compile()
            # Half the limit: gpu_check.sh gives the whole benchmark a fixed budget.
            _bench_compiled(
                row,
                f"{len(blocks)} blocks",
                lambda: model.forward_video(video).embeds,
                model_iters,
                max(20, compile_limit_s // 2),
            )
            for m in blocks:
                m._compiled_call_impl = None  # back to eager for anything after this
    flops = video_encoder_flops(cfg)
    row.extra["GFLOP"] = round(flops / 1e9, 1)
    for impl in ("fused", "ref", "compile"):
        if impl in row.ms:
            row.extra[f"MFU {impl}"] = round(flops / (row.ms[impl] * 1e-3) / 1e12 / peak_tflops, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50, help="timed calls per case (>= 50)")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument("--no-model", action="store_true", help="skip the video encoder")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--compile-limit",
        type=int,
        default=120,
        help="seconds allowed for torch.compile of the video encoder",
    )
    parser.add_argument(
        "--profile-cross",
        action="store_true",
        help="kernel-level profile of the fused cross-attention",
    )
    args = parser.parse_args(argv)
    if args.iters < 50:
        parser.error("--iters must be >= 50 (median of at least 50 calls)")
    if not torch.cuda.is_available():
        print("bench_ops_gpu: no CUDA device", file=sys.stderr)
        return 2
    import egovlpv2_rt

    info = egovlpv2_rt.build_info()
    if not info.get("cuda_kernels_loaded"):
        print(f"bench_ops_gpu: the CUDA kernels are not loaded: {info}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.cuda.get_device_name()
    print(
        f"bench_ops_gpu: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"B={B} F={FRAMES} N={PATCHES} heads={HEADS}x{HEAD_DIM} {DTYPE}, median of "
        f"{args.iters}",
        flush=True,
    )

    rows: list[Row] = []
    copy_gbs = bench_copy_bandwidth(args.iters)
    peak = matmul_tflops(args.iters)
    print(
        f"[ceilings] copy {copy_gbs:.0f} GB/s (read + write), bf16 matmul {peak:.0f} TFLOP/s",
        flush=True,
    )
    bench_divided(rows, args.iters)
    profiles = bench_cross(rows, args.iters, args.profile_cross)
    if not args.no_model:
        bench_model(rows, args.iters, not args.no_compile, peak, args.compile_limit)

    by_name = {r.name: r for r in rows}
    t = by_name["time attention fwd"].ms["fused"]
    time_gbs = time_attention_bytes() / (t * 1e-3) / 1e9
    summary = {
        "device": device,
        "torch": torch.__version__,
        "copy GB/s": round(copy_gbs, 1),
        "bf16 matmul TFLOP/s": round(peak, 1),
        "time attention GB/s": round(time_gbs, 1),
        "time attention / copy": round(time_gbs / copy_gbs, 3),
    }

    print()
    header = (
        f"{'case':26s} {'fused ms':>9s} {'ref ms':>9s} {'sdpa ms':>9s} {'compile ms':>10s} "
        f"{'ref/fused':>9s} {'sdpa/fused':>10s} {'comp/fused':>10s}  targets"
    )
    print(header)
    print("-" * len(header))
    results = []
    failed = []
    for r in rows:
        cells = [f"{r.ms.get(k, math.nan):9.3f}" for k in ("fused", "ref", "sdpa")]
        cells.append(f"{r.ms.get('compile', math.nan):10.3f}")
        ratios = {
            "ref/fused": r.ratio("ref"),
            "sdpa/fused": r.ratio("sdpa"),
            "comp/fused": r.ratio("compile"),
        }
        notes = []
        for (name, col), minimum in TARGETS.items():
            if name == r.name and ratios.get(col) is not None:
                ok = ratios[col] >= minimum
                notes.append(f"{col}>={minimum}:{'ok' if ok else 'MISS'}")
                if not ok:
                    failed.append(f"{name} {col} {ratios[col]:.2f} < {minimum}")
        rtxt = " ".join(
            f"{(v if v is not None else math.nan):{w}.2f}"
            for v, w in zip(ratios.values(), (9, 10, 10), strict=True)
        )
        print(f"{r.name:26s} {' '.join(cells)} {rtxt}  {' '.join(notes)}")
        if r.extra:
            print(f"{'':26s} {r.extra}")
        results.append({"case": r.name, "ms": r.ms, "ratios": ratios, "extra": r.extra})
    ok_bw = time_gbs / copy_gbs >= 0.6
    if not ok_bw:
        failed.append(f"time attention bandwidth {time_gbs / copy_gbs:.2f} of copy < 0.6")
    print(
        f"time attention: {time_gbs:.0f} GB/s = {time_gbs / copy_gbs:.2f} of the copy's "
        f"{copy_gbs:.0f} GB/s (target >= 0.60: {'ok' if ok_bw else 'MISS'}); "
        f"bf16 matmul {peak:.0f} TFLOP/s"
    )
    print(f"targets missed: {len(failed)}" + (" -- " + "; ".join(failed) if failed else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "summary": summary,
                    "rows": results,
                    "targets_missed": failed,
                    "cross_kernel_profiles": profiles,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
