"""egovlpv2-rt: a production runtime for EgoVLPv2 egocentric video-language models.

Importing the package loads the compiled op libraries (when built) and registers the custom
ops' fake kernels and autograd; the model, export and training code load on first use of
their modules.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import _extension, ops  # ops registers the fake kernels and autograd
from .runtime import Runtime, default_model_path, load

__all__ = ["Runtime", "__version__", "build_info", "default_model_path", "load", "ops"]


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
