"""``python -m egovlpv2_rt.train --config FILE [--resume]`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import sys

from .trainer import train_from_file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m egovlpv2_rt.train", description="Pre-train EgoVLPv2 (EgoNCE + MLM + VTM)."
    )
    p.add_argument("--config", required=True, help="experiment file (.json, .yaml)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out_dir>/checkpoints/last.json (or a 0.1 run's last.pt)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many steps of this call (testing interruptions)",
    )
    args = p.parse_args(argv)
    result = train_from_file(
        args.config, resume=args.resume, device=args.device, stop_after=args.stop_after
    )
    print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
