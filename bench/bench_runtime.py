"""Latency of the inference runtime (``egovlpv2_rt.load``) per backend.

CPU: ``encode_text`` (batch 1) and ``encode_video`` (batch 1 and 8), torch vs onnxruntime,
with the ratio torch / onnxruntime measured in the same run.
GPU (when CUDA is available): the same cases plus the fusion ``score`` (batch 8), torch eager
(reference attention, no CUDA graphs) vs torch fused (custom CUDA ops) + CUDA graphs, in the
chosen precision, and onnxruntime when it has the CUDA provider.

    python bench/bench_runtime.py                          # the shipped default model
    python bench/bench_runtime.py --model base --threads 2 # a random model of the released size
    python bench/bench_runtime.py --model PATH --device cuda --precision bf16

Pixels are given as tensors (video decoding is benchmarked in bench_video.py) and the text
cache is bypassed, so the numbers are model + runtime overhead. Each case: ``--warmup``
untimed calls, then the median (and min) of ``--repeats`` timed calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import egovlpv2_rt
except ImportError:  # a source tree that is not installed
    sys.path.insert(0, str(REPO / "python"))
    import egovlpv2_rt
from egovlpv2_rt.runtime import benchmark, load


def random_model(preset_name: str, out: Path) -> Path:
    """A randomly initialised model of a preset (weights + a small BPE tokenizer): latency
    does not depend on the weights."""
    from egovlpv2_rt.checkpoint import save_safetensors
    from egovlpv2_rt.config import preset
    from egovlpv2_rt.data.synthetic import COLOURS, SHAPES, VERBS, narration_words
    from egovlpv2_rt.modeling import EgoVLPv2
    from egovlpv2_rt.train.bpe import train_bpe_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    texts = [
        narration_words(v, c, s, r)
        for v in VERBS
        for c in COLOURS
        for s in SHAPES
        for r in ("", "left", "right")
    ]
    cfg = preset(preset_name)
    vocab = min(cfg.text.vocab_size, 300)
    train_bpe_tokenizer(texts, vocab, out / "tokenizer.json")
    torch.manual_seed(0)
    save_safetensors(EgoVLPv2(cfg), out / "model.safetensors")
    return out


def table(rows: list[dict], baseline: str, other: str) -> str:
    """One line per case: the two configurations' median ms and baseline / other."""
    by = {}
    for r in rows:
        by.setdefault(r["case"], {})[r["label"]] = r
    lines = [f"{'case':<10} {baseline + ' ms':>22} {other + ' ms':>26} {'ratio':>8}"]
    for case, d in by.items():
        a, b = d.get(baseline), d.get(other)
        if a is None or b is None:
            continue
        lines.append(
            f"{case:<10} {a['median_ms']:>22.2f} {b['median_ms']:>26.2f} "
            f"{a['median_ms'] / b['median_ms']:>7.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="default",
        help="'default' (shipped model), 'tiny' or 'base' (random weights), or a "
        "checkpoint path/folder",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default=None, help="fp32 (CPU default) / fp16 / bf16")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and ORT)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--text-length", type=int, default=16)
    p.add_argument("--onnx-dir", default=None, help="reuse/keep the exported graphs here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="egovlpv2-bench-"))
    if args.model in ("tiny", "base"):
        checkpoint = random_model(args.model, tmp / args.model)
    elif args.model == "default":
        checkpoint = None
    else:
        checkpoint = Path(args.model)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else tmp / "onnx"
    cuda = args.device.startswith("cuda")
    rows: list[dict] = []

    def run(label: str, cases, **kwargs) -> None:
        rt = load(checkpoint, device=args.device, precision=args.precision, **kwargs)
        rt.warmup(
            batch_sizes=sorted({int(c.split("_b")[1]) for c in cases}),
            text_lengths=[args.text_length],
            fusion=any(c.startswith("score") for c in cases),
        )
        for r in benchmark(
            rt, cases=cases, repeats=args.repeats, warmup=args.warmup, text_length=args.text_length
        ):
            r["label"] = label
            r["attention"] = rt.attention_impl
            r["cuda_graphs"] = rt.cuda_graphs
            rows.append(r)

    cases = ["text_b1", "video_b1", "video_b8"]
    if not cuda:
        run("torch", cases, backend="torch")
        run("onnxruntime", cases, backend="onnxruntime", onnx_dir=onnx_dir)
        pairs = [("torch", "onnxruntime")]
    else:
        cases = [*cases, "score_b8"]
        run("torch eager", cases, backend="torch", attention_impl="reference", cuda_graphs=False)
        run("torch fused+graphs", cases, backend="torch", cuda_graphs=True)
        pairs = [("torch eager", "torch fused+graphs")]
        try:
            import onnxruntime

            providers = onnxruntime.get_available_providers()
        except ImportError:  # GPU machines without onnxruntime: torch rows only
            providers = []
        if "CUDAExecutionProvider" in providers:
            run("onnxruntime", cases, backend="onnxruntime", onnx_dir=onnx_dir)
            pairs.append(("torch eager", "onnxruntime"))

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    device = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    print(
        f"egovlpv2-rt {egovlpv2_rt.__version__}, torch {torch.__version__}, device "
        f"{device}, threads {args.threads}, model {args.model}, precision "
        f"{rows[0]['precision']}, text length {args.text_length}"
    )
    print(
        f"median of {args.repeats} calls after {args.warmup} warm-up calls; ratio = "
        "left / right (> 1: right is faster)\n"
    )
    for a, b in pairs:
        print(table(rows, a, b) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
