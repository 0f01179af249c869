"""Inference engines of :mod:`egovlpv2_rt.runtime`: one class per backend with the same
three calls (``video``, ``text``, ``vtm``), and the CUDA-graph machinery of the torch backend.

Tensors in: pixels ``[B, F, 3, S, S]`` float, ``input_ids`` / ``attention_mask`` ``[B, L]``
int64 (CPU or the backend's device). Tensors out: ``[B, P]`` embeddings or ``[B, 2]`` VTM
logits, float32.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..export.tensorrt import TensorRTEngine, import_tensorrt
from ..modeling.model import EgoVLPv2
from ..modeling.validation import skip_value_checks

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

__all__ = [
    "CudaGraphs",
    "Engine",
    "OrtEngine",
    "TensorRTEngines",
    "TorchEngine",
    "batch_bucket",
    "length_bucket",
    "no_value_checks",
]


def no_value_checks() -> contextlib.AbstractContextManager[None]:
    """Skip the model's data-dependent input checks (token range, finite pixels) while a
    CUDA graph is captured: they read tensor values on the host, which a capture forbids.
    The runtime builds its inputs itself (ids from its tokenizer), so they are valid."""
    return skip_value_checks()


class Engine:
    """Backend interface: float32/int64 CPU or device tensors in, float32 tensors out."""

    name = "engine"
    has_fusion = True

    def video(self, video: Tensor) -> Tensor:  # [B, F, 3, S, S] -> [B, P]
        raise NotImplementedError

    def text(self, ids: Tensor, mask: Tensor) -> Tensor:  # [B, L] -> [B, P]
        raise NotImplementedError

    def vtm(self, video: Tensor, ids: Tensor, mask: Tensor) -> Tensor:  # -> [B, 2]
        raise NotImplementedError


class CudaGraphs:
    """CUDA graphs of one function, captured per input shape (callers pad to buckets) and
    replayed; all graphs share one memory pool. Replays return a copy of the static output."""

    def __init__(self, fn: Callable[..., Tensor], device: torch.device) -> None:
        self.fn = fn
        self.device = device
        self.graphs: dict[tuple, tuple[list[Tensor], Tensor, Any]] = {}
        self.pool: _POOL_HANDLE | None = None

    def __call__(self, *args: Tensor) -> Tensor:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        # Streams and graphs belong to the current device: make it the runtime's.
        with torch.cuda.device(self.device):
            entry = self.graphs.get(key)
            if entry is None:
                entry = self._capture(args)
                self.graphs[key] = entry
            static_in, static_out, graph = entry
            for s, a in zip(static_in, args, strict=True):
                s.copy_(a, non_blocking=True)
            graph.replay()
            return static_out.clone()

    def _capture(self, args: Sequence[Tensor]) -> tuple[list[Tensor], Tensor, torch.cuda.CUDAGraph]:
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with no_value_checks():
            # Warm-up on a side stream (lazy initialisation, cuBLAS workspaces) as the CUDA
            # graph documentation prescribes, then capture.
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(*static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = self.fn(*static_in)
        self.pool = graph.pool()
        return static_in, static_out, graph


def batch_bucket(n: int, cap: int) -> int:
    """Batch bucket: the smallest power of two >= n, at most ``cap`` (n <= cap)."""
    return min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def length_bucket(n: int, cap: int) -> int:
    """Text-length bucket: a multiple of 8 up to 64, then a power of two; at most ``cap``."""
    b = 8 * math.ceil(n / 8) if n <= 64 else 1 << math.ceil(math.log2(n))
    return min(cap, b)


class TorchEngine(Engine):
    """The PyTorch model. On CUDA: pinned host memory, and with ``cuda_graphs`` inputs padded
    to shape buckets and run through captured CUDA graphs."""

    name = "torch"

    def __init__(
        self,
        model: EgoVLPv2,
        device: torch.device,
        dtype: torch.dtype,
        *,
        cuda_graphs: bool,
        max_batch: int,
        max_text_length: int,
        pad_token_id: int,
        bos_token_id: int,
    ) -> None:
        self.model = model
        self.device, self.dtype = device, dtype
        self.has_fusion = hasattr(model, "itm_score")
        self.max_batch = max_batch
        self.max_len = max_text_length
        self.pad_id, self.bos_id = pad_token_id, bos_token_id
        self.bucketing = cuda_graphs
        self._graphs: dict[str, CudaGraphs] = {}
        if cuda_graphs:
            self._graphs = {
                "video": CudaGraphs(model.encode_video, device),
                "text": CudaGraphs(model.encode_text, device),
                "vtm": CudaGraphs(model.vtm_logits, device),
            }

    def _to_device(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.to(device=self.device, dtype=dtype or x.dtype)

    def _pad_batch(self, n: int) -> int:
        return batch_bucket(n, self.max_batch) if self.bucketing else n

    def _pad_len(self, length: int) -> int:
        return length_bucket(length, self.max_len) if self.bucketing else length

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, i + self.max_batch) for i in range(0, n, self.max_batch)]

    def _pad_text(self, ids: Tensor, mask: Tensor, rows: int, length: int) -> tuple[Tensor, Tensor]:
        b, n = ids.shape
        if (rows, length) == (b, n):
            return ids, mask
        # Extra positions are padding (mask 0: the text embedding does not change); extra
        # rows hold a lone <s> so that no row is fully masked.
        out_ids = ids.new_full((rows, length), self.pad_id)
        out_mask = mask.new_zeros((rows, length))
        out_ids[:b, :n], out_mask[:b, :n] = ids, mask
        out_ids[b:, 0], out_mask[b:, 0] = self.bos_id, 1
        return out_ids, out_mask

    def _pad_video(self, video: Tensor, rows: int) -> Tensor:
        if rows == video.shape[0]:
            return video
        pad = video.new_zeros((rows - video.shape[0], *video.shape[1:]))
        return torch.cat([video, pad])

    def _run(self, kind: str, *args: Tensor) -> Tensor:
        fns: dict[str, Callable[..., Tensor]] = {
            "video": self.model.encode_video,
            "text": self.model.encode_text,
            "vtm": self.model.vtm_logits,
        }
        fn = fns[kind]
        if kind in self._graphs:
            return self._graphs[kind](*args)
        return fn(*args)

    def video(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        if b > self.max_batch:
            return torch.cat([self.video(video[sl]) for sl in self._chunks(b)])
        with torch.inference_mode():
            x = self._pad_video(self._to_device(video, self.dtype), self._pad_batch(b))
            return self._run("video", x)[:b].float()

    def text(self, ids: Tensor, mask: Tensor) -> Tensor:
        b, n = ids.shape
        if b > self.max_batch:
            return torch.cat([self.text(ids[sl], mask[sl]) for sl in self._chunks(b)])
        with torch.inference_mode():
            ids, mask = self._pad_text(ids, mask, self._pad_batch(b), self._pad_len(n))
            return self._run("text", self._to_device(ids), self._to_device(mask))[:b].float()

    def vtm(self, video: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        b, n = ids.shape
        if b > self.max_batch:
            return torch.cat([self.vtm(video[sl], ids[sl], mask[sl]) for sl in self._chunks(b)])
        with torch.inference_mode():
            rows = self._pad_batch(b)
            v = self._pad_video(self._to_device(video, self.dtype), rows)
            ids, mask = self._pad_text(ids, mask, rows, self._pad_len(n))
            return self._run("vtm", v, self._to_device(ids), self._to_device(mask))[:b].float()


class OrtEngine(Engine):
    """onnxruntime sessions over an export folder; graphs missing from the folder are
    exported on first use through ``exporter`` (when a torch model is at hand)."""

    name = "onnxruntime"

    def __init__(
        self,
        export_dir: Path,
        device: torch.device,
        exporter: Callable[[str], None] | None,
        has_fusion: bool,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.dir = export_dir
        self.exporter = exporter
        self.has_fusion = has_fusion
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "onnxruntime here has no CUDAExecutionProvider; install "
                    "onnxruntime-gpu or use device='cpu'"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.providers = providers
        self.threads = threads or torch.get_num_threads()
        self.sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def session(self, name: str) -> Any:  # an onnxruntime.InferenceSession
        with self._lock:
            if name not in self.sessions:
                path = self.dir / f"{name}.onnx"
                if not path.is_file():
                    if self.exporter is None:
                        raise FileNotFoundError(
                            f"{path} is missing from the export folder; "
                            f"export it with egovlpv2-export"
                        )
                    self.exporter(name)
                opts = self.ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self.sessions[name] = self.ort.InferenceSession(
                    str(path), opts, providers=self.providers
                )
            return self.sessions[name]

    def _run(self, name: str, feeds: dict[str, Tensor]) -> Tensor:
        sess = self.session(name)
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
        return torch.from_numpy(sess.run(None, arrays)[0]).float()

    def video(self, video: Tensor) -> Tensor:
        return self._run("video_encoder", {"video": video.float()})

    def text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self._run("text_encoder", {"input_ids": ids.long(), "attention_mask": mask.long()})

    def vtm(self, video: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return self._run(
            "vtm", {"video": video.float(), "input_ids": ids.long(), "attention_mask": mask.long()}
        )


class TensorRTEngines(Engine):
    """TensorRT engines (``<graph>.engine`` + ``.engine.json``) of an export folder."""

    name = "tensorrt"

    def __init__(self, export_dir: Path, device: torch.device) -> None:
        import_tensorrt()
        if device.type != "cuda":
            raise ValueError("backend 'tensorrt' needs a CUDA device")
        self.dir, self.device = export_dir, device
        self._cls = TensorRTEngine
        self.engines: dict[str, Any] = {}
        self.has_fusion = (export_dir / "vtm.engine").is_file()

    def _engine(self, name: str) -> TensorRTEngine:
        if name not in self.engines:
            path = self.dir / f"{name}.engine"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing; build it with egovlpv2-export --format tensorrt"
                )
            self.engines[name] = self._cls(path, self.device)
        return self.engines[name]

    def video(self, video: Tensor) -> Tensor:
        return self._engine("video_encoder")(video=video).cpu()

    def text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self._engine("text_encoder")(input_ids=ids, attention_mask=mask).cpu()

    def vtm(self, video: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return self._engine("vtm")(video=video, input_ids=ids, attention_mask=mask).cpu()
