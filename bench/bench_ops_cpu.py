"""CPU benchmark of the fused attention ops against the reference eager path.

Base shape (issue 2): 2 clips, 4 frames, 196 patches (224 px, patch 16), 12 heads, head dim 64,
2 threads. For each path it times the fused op (``impl="fused"``, the C++ kernels) and the
reference (einops rearrange + einsum, written as the original EgoVLPv2 builds it) in the same
run, interleaved, and prints the ratio. Then the whole ``encode_video`` of the base model, fused
vs reference, and torch.profiler tables of where the time goes.

    python bench/bench_ops_cpu.py                  # everything, 2 threads
    python bench/bench_ops_cpu.py --no-model       # ops only
    python bench/bench_ops_cpu.py --threads 1 --reps 30

Timings are wall-clock; "best" is the minimum over the repetitions (the least disturbed run on
a shared machine), "median" the median. Speedup = reference / fused.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import egovlpv2_rt
except ImportError:  # a source tree that is not installed
    sys.path.insert(0, str(REPO / "python"))
    import egovlpv2_rt
from egovlpv2_rt import ops

# ---------------------------------------------------------------------------------------------


def timed(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run the callables interleaved ``reps`` times; seconds per call of each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def row(label: str, ref: list[float], fused: list[float]) -> str:
    rb, fb = min(ref) * 1e3, min(fused) * 1e3
    rm, fm = statistics.median(ref) * 1e3, statistics.median(fused) * 1e3
    return (
        f"| {label:<30} | {rb:9.2f} | {fb:9.2f} | {rb / fb:6.2f}x | {rm:9.2f} | {fm:9.2f} "
        f"| {rm / fm:6.2f}x |"
    )


HEADER = (
    "| path                           | ref best  | fused best| speedup | ref med   | fused med | "
    "speedup |\n"
    "|--------------------------------|-----------|-----------|---------|-----------|-----------|"
    "---------|"
)

# ---------------------------------------------------------------------------------------------


def bench_space_time(args: argparse.Namespace) -> None:
    b, f, h, dh = args.batch, args.frames, args.heads, args.head_dim
    d, t = h * dh, 1 + args.frames * args.patches
    scale = dh**-0.5
    gen = torch.Generator().manual_seed(0)
    # qkv as the block's Linear produces it: [B, T, 3*D] contiguous.
    qkv = torch.randn(b, t, 3 * d, generator=gen)
    grad = torch.randn(b, t, d, generator=gen)
    print(f"\n## Divided space-time attention, qkv [{b}, {t}, {3 * d}] float32, {h} heads x {dh}")
    print("(milliseconds per call)\n")
    print(HEADER)
    for temporal, name in ((False, "space"), (True, "time")):

        def fwd(impl: str, temporal: bool = temporal) -> Callable[[], object]:
            def run() -> object:
                with torch.no_grad():
                    return ops.divided_space_time_attention(qkv, h, f, temporal, scale, impl=impl)

            return run

        def fwd_bwd(impl: str, temporal: bool = temporal) -> Callable[[], object]:
            def run() -> object:
                x = qkv.detach().requires_grad_()
                out = ops.divided_space_time_attention(x, h, f, temporal, scale, impl=impl)
                out.backward(grad)
                return x.grad

            return run

        res = timed({"ref": fwd("reference"), "fused": fwd("fused")}, args.reps, 3)
        print(row(f"{name} forward", res["ref"], res["fused"]))
        res = timed({"ref": fwd_bwd("reference"), "fused": fwd_bwd("fused")}, args.bwd_reps, 2)
        print(row(f"{name} forward+backward", res["ref"], res["fused"]))

    # Both attentions of a block (what one SpaceTimeBlock runs), forward.
    def both(impl: str) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                ops.divided_space_time_attention(qkv, h, f, True, scale, impl=impl)
                return ops.divided_space_time_attention(qkv, h, f, False, scale, impl=impl)

        return run

    res = timed({"ref": both("reference"), "fused": both("fused")}, args.reps, 2)
    print(row("time + space forward", res["ref"], res["fused"]))


def bench_cross(args: argparse.Namespace) -> None:
    b, h, dh, length = args.batch, args.heads, args.head_dim, args.text_len
    d, t = h * dh, 1 + args.frames * args.patches
    gen = torch.Generator().manual_seed(1)
    print(f"\n## Gated cross-attention, {h} heads x {dh}, {length} text tokens, {t} video tokens")
    print("(milliseconds per call)\n")
    print(HEADER)
    valid = torch.arange(length)[None, :] < torch.tensor([length, length // 2])[:b, None]
    text_mask = (1.0 - valid.float()) * torch.finfo(torch.float32).min
    for name, lq, lk, mask in (
        ("i2t (video q, text kv)", t, length, text_mask),
        ("t2i (text q, video kv)", length, t, None),
    ):
        q = torch.randn(b, lq, d, generator=gen)
        kv = torch.randn(b, lk, 2 * d, generator=gen)
        weight = torch.randn(d, d, generator=gen) / d**0.5
        bias = torch.randn(d, generator=gen)
        gate = torch.tensor([0.7])
        residual = torch.randn(b, lq, d, generator=gen)
        grad = torch.randn(b, lq, d, generator=gen)

        def fwd(
            impl: str, q=q, kv=kv, mask=mask, weight=weight, bias=bias, gate=gate, residual=residual
        ) -> Callable[[], object]:
            def run() -> object:
                with torch.no_grad():
                    return ops.gated_cross_attention(
                        q,
                        kv[..., :d],
                        kv[..., d:],
                        mask,
                        weight,
                        bias,
                        gate,
                        residual,
                        h,
                        dh**-0.5,
                        impl=impl,
                    )

            return run

        def fwd_bwd(
            impl: str,
            q=q,
            kv=kv,
            mask=mask,
            weight=weight,
            bias=bias,
            gate=gate,
            residual=residual,
            grad=grad,
        ) -> Callable[[], object]:
            def run() -> object:
                x, y = q.detach().requires_grad_(), kv.detach().requires_grad_()
                out = ops.gated_cross_attention(
                    x,
                    y[..., :d],
                    y[..., d:],
                    mask,
                    weight,
                    bias,
                    gate,
                    residual,
                    h,
                    dh**-0.5,
                    impl=impl,
                )
                out.backward(grad)
                return x.grad

            return run

        res = timed({"ref": fwd("reference"), "fused": fwd("fused")}, args.reps, 3)
        print(row(f"{name} fwd", res["ref"], res["fused"]))
        res = timed({"ref": fwd_bwd("reference"), "fused": fwd_bwd("fused")}, args.bwd_reps, 2)
        print(row(f"{name} fwd+bwd", res["ref"], res["fused"]))


# ---------------------------------------------------------------------------------------------
# Profiles


GEMM_OPS = (
    "aten::addmm",
    "aten::mm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::linear",
    "aten::matmul",
    "aten::convolution",
    "aten::_convolution",
    "aten::mkldnn_convolution",
)


def categorise(event: object) -> str:
    """Category of a profiler event's self time; work inside a GEMM (addmm copies its bias into the
    output first) counts as GEMM."""
    name = event.name
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in GEMM_OPS:
            return "GEMM / conv"
        if parent.name.startswith("egovlpv2::"):
            return "fused attention op"
        parent = parent.cpu_parent
    if name.startswith("egovlpv2::"):
        return "fused attention op"
    if name in GEMM_OPS:
        return "GEMM / conv"
    if "softmax" in name:
        return "softmax"
    if name in (
        "aten::copy_",
        "aten::clone",
        "aten::cat",
        "aten::contiguous",
        "aten::_to_copy",
        "aten::repeat",
        "aten::expand",
        "aten::index",
        "aten::narrow_copy",
    ):
        return "copies (rearrange/cat/repeat)"
    if name in ("aten::native_layer_norm", "aten::layer_norm"):
        return "layer norm"
    if name in ("aten::gelu", "aten::add", "aten::mul", "aten::add_", "aten::mul_", "aten::relu"):
        return "elementwise"
    return "other"


def profile(label: str, fn: Callable[[], object], rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    by_cat: dict[str, float] = {}
    for event in prof.events():
        cat = categorise(event)
        by_cat[cat] = by_cat.get(cat, 0.0) + event.self_cpu_time_total
    total = sum(by_cat.values())
    print(
        f"\n### Profile: {label} (self CPU time of the calling thread, "
        f"{total / 1e3:.1f} ms total)\n"
    )
    print("| category                      |     ms |     % |")
    print("|-------------------------------|--------|-------|")
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"| {cat:<29} | {us / 1e3:6.1f} | {100 * us / total:5.1f} |")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def profile_ops(args: argparse.Namespace) -> None:
    b, f, n, h, dh = args.batch, args.frames, args.patches, args.heads, args.head_dim
    qkv = torch.randn(b, 1 + f * n, 3 * h * dh)

    def step(impl: str) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                ops.divided_space_time_attention(qkv, h, f, True, dh**-0.5, impl=impl)
                return ops.divided_space_time_attention(qkv, h, f, False, dh**-0.5, impl=impl)

        return run

    profile("time + space attention, reference", step("reference"), args.profile_rows)
    profile("time + space attention, fused", step("fused"), args.profile_rows)


# ---------------------------------------------------------------------------------------------
# Whole encode_video


def bench_model(args: argparse.Namespace) -> None:
    try:
        from egovlpv2_rt.modeling import EgoVLPv2
    except ImportError as exc:
        print(f"\n## encode_video: skipped, the model is not importable ({exc})")
        return
    torch.manual_seed(0)
    # Dual mode only (no fusion heads); the pixel NaN check is a serving option, off here.
    model = EgoVLPv2.from_preset("base", task_names="EgoNCE", check_finite_pixels=False).eval()
    video = torch.randn(args.video_batch, args.frames, 3, 224, 224)
    print(
        f"\n## encode_video, base model (random weights), video [{args.video_batch}, "
        f"{args.frames}, 3, 224, 224] float32"
    )
    print("(milliseconds per call)\n")
    print(HEADER)

    def encode(impl: str) -> Callable[[], object]:
        def run() -> object:
            model.set_attention_impl(impl)
            with torch.inference_mode():
                return model.encode_video(video)

        return run

    with torch.inference_mode():
        model.set_attention_impl("reference")
        ref = model.encode_video(video)
        model.set_attention_impl("fused")
        fused = model.encode_video(video)
    err = ((fused - ref).abs().max() / ref.abs().max()).item()
    res = timed({"ref": encode("reference"), "fused": encode("fused")}, args.model_reps, 1)
    print(row("encode_video", res["ref"], res["fused"]))
    print(f"\nfused vs reference embeddings: err = {err:.2e}")
    if args.profile:
        profile("encode_video, reference", encode("reference"), args.profile_rows)
        profile("encode_video, fused", encode("fused"), args.profile_rows)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20, help="forward repetitions")
    parser.add_argument("--bwd-reps", type=int, default=10, help="forward+backward repetitions")
    parser.add_argument("--no-model", action="store_true", help="skip encode_video")
    parser.add_argument("--video-batch", type=int, default=2)
    parser.add_argument("--model-reps", type=int, default=3)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-rows", type=int, default=12)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    info = egovlpv2_rt.build_info()
    if info["build"] == "not built":
        sys.exit(f"the extension is not built: {info['error']}")
    print("# egovlpv2-rt CPU op benchmark\n")
    print(
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU kernels: {info['cpu_isa']} (compiled: {', '.join(info['cpu_isas_compiled'])})"
    )
    print(
        f"- machine: {platform.processor() or platform.machine()}, "
        f"{_cpu_model()}, python {platform.python_version()}"
    )
    bench_space_time(args)
    bench_cross(args)
    if args.profile:
        profile_ops(args)
    if not args.no_model:
        bench_model(args)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
