"""``egovlpv2-export``: write deployment graphs of an EgoVLPv2 checkpoint.

Examples::

    egovlpv2-export --mode dual --out exported/  # video_encoder.onnx, text_encoder.onnx
    egovlpv2-export --mode fusion --with-mlm --out exported/  # vtm.onnx, mlm.onnx
    egovlpv2-export --mode all --precision fp16 --format tensorrt \\
        --batch 1:8:32 --text-length 4:16:32 --timing-cache trt.cache --out engines/

The folder is self-contained for ``egovlpv2_rt.load(folder, backend="onnxruntime")`` (or
``"tensorrt"``): graphs, sidecars, ``export.json`` and ``tokenizer.json``. Errors are one line
on stderr with exit status 1 (2 for command-line usage errors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..export.tensorrt import EngineProfile, build_engine, import_tensorrt, parse_range
from ..files import atomic_write_with
from ..model_files import load_model_files, resolve_checkpoint
from ..tokenizer import RobertaTokenizer
from .common import ArgParser, at_least, positive_float, positive_int, print_json, run_command

__all__ = ["build_parser", "main", "profiles_from_args"]


def _range_arg(text: str) -> str:
    """``MIN:OPT:MAX`` or ``N``, checked here; the string is kept (profiles_from_args reads it)."""
    try:
        parse_range(text, "range")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("range: ")) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="egovlpv2-export",
        description="Export EgoVLPv2 graphs to ONNX (dual encoders, fusion VTM/MLM) and "
        "build TensorRT engines.",
    )
    p.add_argument(
        "--mode",
        choices=("dual", "fusion", "all"),
        default="dual",
        help="dual: video_encoder + text_encoder; fusion: vtm (+ mlm); all: both",
    )
    p.add_argument("--with-mlm", action="store_true", help="also export mlm.onnx (fusion)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model file or folder (default: the shipped default model)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json to copy into the folder (default: beside the model)",
    )
    p.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="frames per clip, fixed in the graph (default: the model's)",
    )
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument(
        "--format",
        choices=("onnx", "tensorrt"),
        default="onnx",
        help="tensorrt: also build engines from the ONNX graphs (needs tensorrt)",
    )
    p.add_argument(
        "--opset", type=at_least(18), default=None, help="ONNX opset (>= 18; default 18)"
    )
    p.add_argument(
        "--batch",
        action="append",
        default=None,
        type=_range_arg,
        metavar="MIN:OPT:MAX",
        help="TensorRT profile batch range; repeat for several profiles (default 1:8:32)",
    )
    p.add_argument(
        "--text-length",
        action="append",
        default=None,
        type=_range_arg,
        metavar="MIN:OPT:MAX",
        help="TensorRT profile text-length range, paired with --batch "
        "(default 4:16:min(32, model limit))",
    )
    p.add_argument(
        "--timing-cache",
        default=None,
        help="TensorRT timing cache file (read if present, then updated)",
    )
    p.add_argument(
        "--workspace-gib",
        type=positive_float,
        default=4.0,
        help="TensorRT builder workspace (GiB)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare each fp32 ONNX graph with PyTorch in onnxruntime",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    return p


def profiles_from_args(
    batch: list[str] | None, text_length: list[str] | None, max_text_length: int
) -> list[EngineProfile]:
    """EngineProfiles from the repeated ``--batch`` / ``--text-length`` flags (zipped; a
    single value of one flag pairs with every value of the other)."""
    default_text = (
        f"{min(4, max_text_length)}:{min(16, max_text_length)}:{min(32, max_text_length)}"
    )
    batches = [parse_range(b, "--batch") for b in (batch or ["1:8:32"])]
    texts = [parse_range(t, "--text-length") for t in (text_length or [default_text])]
    if len(batches) != len(texts):
        if len(batches) == 1:
            batches = batches * len(texts)
        elif len(texts) == 1:
            texts = texts * len(batches)
        else:
            raise ValueError(
                f"--batch given {len(batches)} times and --text-length "
                f"{len(texts)} times; give them equally often (one per profile)"
            )
    for _lo, _opt, hi in texts:
        if hi > max_text_length:
            raise ValueError(
                f"--text-length max {hi} exceeds the model's limit {max_text_length} tokens"
            )
    return [EngineProfile(b, t) for b, t in zip(batches, texts, strict=True)]


def run(args: argparse.Namespace) -> dict:
    """Export as ``args`` says; returns the summary (graphs, verification, engines)."""
    # onnx and onnxscript (the `export` extra) are imported only by a command that exports.
    from ..export.onnx_export import export_model, graphs_for_mode, verify_onnx
    from ..export.translation import ONNX_OPSET

    graphs = graphs_for_mode(args.mode, args.with_mlm)
    if args.format == "tensorrt":
        import_tensorrt()  # fail before the (slow) ONNX export
    files = resolve_checkpoint(args.checkpoint)
    if files.checkpoint is None:
        raise FileNotFoundError(
            f"{args.checkpoint}: no model weights (model.safetensors) to export"
        )
    model = load_model_files(files, attention_impl="fused")
    cfg = model.config
    if args.frames is not None and not 1 <= args.frames <= cfg.video.num_frames:
        raise ValueError(
            f"--frames {args.frames} is outside [1, {cfg.video.num_frames}], the "
            "model's maximum clip length (frame count mismatch)"
        )
    profiles: list[EngineProfile] = []  # TensorRT's only
    if args.format == "tensorrt":
        profiles = profiles_from_args(args.batch, args.text_length, cfg.text.max_text_length)
    tokenizer = Path(args.tokenizer) if args.tokenizer else files.tokenizer
    out = Path(args.out)
    if tokenizer is not None and tokenizer.is_dir():
        # vocab.json + merges.txt: the export folder gets the same pipeline as one file.
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_with(out / "tokenizer.json", RobertaTokenizer.from_directory(tokenizer).save)
        tokenizer = out / "tokenizer.json"

    def say(name: str) -> None:
        if not args.json:
            print(f"exporting {name} ...", file=sys.stderr, flush=True)

    done = export_model(
        model,
        out,
        graphs=graphs,
        num_frames=args.frames,
        precision=args.precision,
        opset=args.opset or ONNX_OPSET,
        tokenizer_file=tokenizer,
        source_checkpoint=files.checkpoint,
        progress=say,
    )
    summary: dict = {
        "out": str(out),
        "precision": args.precision,
        "frames": args.frames or cfg.video.num_frames,
        "graphs": [g.to_dict() for g in done],
    }
    if args.verify:
        if args.precision != "fp32":
            raise ValueError("--verify compares float32 graphs; export with --precision fp32")
        summary["verify"] = {g.name: verify_onnx(model, g) for g in done}
    if args.format == "tensorrt":
        engines = []
        for g in done:
            say(f"{g.name} engine")
            engines.append(
                str(
                    build_engine(
                        g.path,
                        profiles=profiles,
                        timing_cache=args.timing_cache,
                        workspace_gib=args.workspace_gib,
                    )
                )
            )
        summary["engines"] = engines
    return summary


def main(argv: list[str] | None = None) -> int:
    """The ``egovlpv2-export`` entry point."""
    args = build_parser().parse_args(argv)
    summary: dict = {}

    def export() -> int:
        summary.update(run(args))
        return 0

    rc = run_command("egovlpv2-export", "egovlpv2-export", export)
    if rc != 0:
        return rc
    if args.json:
        print_json(summary)
    else:
        for g in summary["graphs"]:
            print(
                f"{g['name']}: {g['path']} ({g['attention_subgraphs']} attention subgraphs, "
                f"{g['seconds']:.1f} s)"
            )
        for name, errs in summary.get("verify", {}).items():
            print(f"verify {name}: max relative error {max(errs.values()):.2e}")
        for e in summary.get("engines", []):
            print(f"engine: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
