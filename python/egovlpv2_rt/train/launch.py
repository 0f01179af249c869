"""The command line that runs a pre-training config in fresh processes."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["pretrain_command"]


def pretrain_command(
    config: str | Path, nproc: int = 1, device: str = "cpu", *extra: str
) -> list[str]:
    """``python -m egovlpv2_rt.train --config CONFIG --device DEVICE EXTRA...`` with this
    interpreter: one process for ``nproc == 1``, else under ``torch.distributed.run``
    (``--standalone``, ``nproc`` processes on this machine)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    launcher = (
        []
        if nproc == 1
        else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    )
    train = ["-m", "egovlpv2_rt.train", "--config", str(config), "--device", device]
    return [sys.executable, *launcher, *train, *extra]
