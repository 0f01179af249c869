"""Denormal flushing is scoped to the job that asks for it."""

from __future__ import annotations

import sys

from egovlpv2_rt.denormals import flushing_denormals


def _smallest_subnormal() -> float:
    return sys.float_info.min / 2**52


def test_flushing_is_on_inside_and_off_after() -> None:
    assert _smallest_subnormal() == 5e-324
    with flushing_denormals():
        # Flush-to-zero applies to results of arithmetic, the way the kernels see it.
        import torch

        x = torch.tensor([sys.float_info.min], dtype=torch.float64)
        assert float(x / 2) == 0.0
    assert _smallest_subnormal() == 5e-324


def test_disabled_leaves_ieee_behaviour() -> None:
    with flushing_denormals(enabled=False):
        assert sys.float_info.min / 2 == 1.1125369292536007e-308
