"""Low-latency inference: ``load()`` -> :class:`Runtime` over one engine (torch, onnxruntime,
TensorRT), the embedding store (files, shards, FAISS indexes), and the latency benchmark.

- :mod:`.api`: :class:`Runtime` (encode, score, MCQ, warm-up) and :class:`MCQAnswer`;
- :mod:`.loader`: :func:`load`, which picks device, precision, engine and batch sizes;
- :mod:`.engines`: the engines behind one interface, and the CUDA-graph machinery;
- :mod:`.inputs`: clip and caption inputs, output conversion;
- :mod:`.store`: embeddings files, shard manifests, top-k search, FAISS indexes;
- :mod:`.bench`: :func:`benchmark`.
"""

from __future__ import annotations

from ..model_files import (
    DefaultModelMissingError,
    ModelFiles,
    default_model_dir,
    default_model_path,
    resolve_checkpoint,
)
from .api import MCQ_MODES, MCQAnswer, Runtime
from .bench import benchmark
from .loader import BACKENDS, PRECISIONS, load

__all__ = [
    "BACKENDS",
    "MCQ_MODES",
    "PRECISIONS",
    "DefaultModelMissingError",
    "MCQAnswer",
    "ModelFiles",
    "Runtime",
    "benchmark",
    "default_model_dir",
    "default_model_path",
    "load",
    "resolve_checkpoint",
]
