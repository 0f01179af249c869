"""``python -m egovlpv2_rt.train --config FILE [--resume]`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import sys

from .config import load_train_config
from .distributed import shutdown_distributed
from .trainer import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egovlpv2_rt.train",
                                description="Pre-train EgoVLPv2 (EgoNCE + MLM + VTM).")
    p.add_argument("--config", required=True, help="experiment file (.json, .yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out_dir>/checkpoints/last.pt when it exists")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps of this call (testing interruptions)")
    args = p.parse_args(argv)
    cfg = load_train_config(args.config)
    try:
        result = train(cfg, resume=args.resume, device=args.device, stop_after=args.stop_after)
    finally:
        shutdown_distributed()
    print(f"steps={result.steps} loss={result.final_loss:.6f} seconds={result.seconds:.1f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
