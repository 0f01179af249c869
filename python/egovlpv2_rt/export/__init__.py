"""Deployment graphs: ONNX export of the dual encoders and the fusion heads, and TensorRT engines
(the ``egovlpv2-export`` command lives in ``egovlpv2_rt.cli.export``).

- :mod:`.graphs`: the exportable wrappers (``video_encoder``, ``text_encoder``, ``vtm``, ``mlm``);
- :mod:`.translation`: the custom ops as standard ONNX attention subgraphs;
- :mod:`.passes`: graph rewrites (pre-scaled queries, precision cast) and structural checks;
- :mod:`.onnx_export`: :func:`export_graph`, :func:`export_model`, :func:`verify_onnx`;
- :mod:`.tensorrt`: engine profiles and building (needs the ``tensorrt`` package);
- :mod:`.metadata`: preprocessing description and JSON sidecars.

Names are loaded on first use, so ``import egovlpv2_rt.export.metadata`` does not pull in
onnx or onnxscript.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExportedGraph",
    "Preprocessing",
    "TensorRTUnavailableError",
    "build_engine",
    "export_graph",
    "export_model",
    "graphs_for_mode",
    "verify_onnx",
]

_LAZY = {
    "ExportedGraph": ".onnx_export",
    "export_graph": ".onnx_export",
    "export_model": ".onnx_export",
    "graphs_for_mode": ".onnx_export",
    "verify_onnx": ".onnx_export",
    "Preprocessing": ".metadata",
    "TensorRTUnavailableError": ".tensorrt",
    "build_engine": ".tensorrt",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
