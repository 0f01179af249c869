"""egovlpv2-rt: a production runtime for EgoVLPv2 egocentric video-language models.

Importing the package loads the compiled op libraries (when built) and registers the custom
ops' fake kernels and autograd. The inference API (``load``, ``Runtime``, ``MCQAnswer``,
``default_model_path``) is loaded on first use, and no module of the package imports this one:
the package's face sits above every floor.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _extension, ops  # ops registers the fake kernels and autograd
from ._version import __version__

if TYPE_CHECKING:
    from .runtime import MCQAnswer, Runtime, default_model_path, load

__all__ = ["MCQAnswer", "Runtime", "__version__", "build_info", "default_model_path", "load", "ops"]

_LAZY = {
    "load": ".runtime",
    "Runtime": ".runtime",
    "MCQAnswer": ".runtime",
    "default_model_path": ".runtime",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_info() -> dict[str, object]:
    """What was built and what runs.

    Keys: ``build`` ("cpu", "cuda", or "not built" with the reason under ``error``),
    ``cuda`` (CUDA kernels compiled), ``cuda_kernels_loaded``, ``cuda_architectures``,
    ``cuda_compiler``, ``version``, ``torch_built_against``, ``torch_cuda_built_against``,
    ``torch_target_version`` (oldest torch the binaries load into), ``torch_runtime``,
    ``compiler``, ``build_type``, ``cpu_isa`` (CPU kernel variant in use),
    ``cpu_isas_compiled``, ``libraries`` (op libraries loaded).
    """
    return _extension.build_info()
