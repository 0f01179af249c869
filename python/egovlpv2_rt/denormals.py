"""Flushing denormal floats to zero on the CPU, for the span of one job only.

Zero-initialised gates and time attention make denormal floats early in training and in
evaluation; x86 CPUs handle them ~100x slower, so long CPU jobs flush them (an effect below
1e-38). The flag is process-global processor state: left on, it would change the arithmetic of
the caller's own code after the job returned (and breaks libraries that need IEEE subnormals).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["flushing_denormals"]


@contextlib.contextmanager
def flushing_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormals to zero inside the block; IEEE behaviour again on exit.

    torch offers no getter for the flag, so on exit it is switched off (the default of every
    process); a caller that had switched it on itself sets it again after the block."""
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
