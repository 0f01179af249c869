"""Low-latency inference: ``egovlpv2_rt.load()`` returns a :class:`Runtime` that embeds clips
and captions, scores (clip, caption) pairs with the fusion encoder, and answers EgoMCQ-style
questions, over one of three backends:

- ``"torch"``: the PyTorch model (fused custom ops where they are built). On CUDA it runs
  under ``torch.inference_mode`` with pinned host memory, and replays CUDA graphs captured per
  shape bucket (batch rounded up to a power of two, text length to a multiple of 8);
  :meth:`Runtime.warmup` captures them ahead of time.
- ``"onnxruntime"``: the exported ONNX graphs (an export folder, or exported on first use into
  a cache folder keyed by the checkpoint's hash).
- ``"tensorrt"``: engines built by ``egovlpv2-export --format tensorrt``.

Inputs are clips (a path, ``(path, start_sec, end_sec)``, a :class:`~egovlpv2_rt.video.ClipSpec`,
or pixels ``[F, 3, S, S]`` / ``[B, F, 3, S, S]``) and captions (strings). Captions are batched
by token length and their embeddings cached by string. Outputs are numpy arrays (default) or
torch tensors, float32, on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig
from .model_files import (
    DefaultModelMissingError,
    ModelFiles,
    default_model_dir,
    default_model_path,
    load_model_files,
    load_tokenizer,
    resolve_checkpoint,
)
from .preprocessing import Preprocessing
from .runtime_backends import (
    Engine,
    OrtEngine,
    TensorRTEngines,
    TorchEngine,
    batch_bucket,
    length_bucket,
)

__all__ = [
    "BACKENDS",
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

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MCQ_MODES = ("dual", "fusion", "ensemble")
PathLike = str | os.PathLike
Output = Literal["numpy", "torch"]


# ------------------------------------------------------------------------------ inputs


def _clip_label(i: int, item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"clip {i} ({os.fspath(item)})"
    return f"clip {i}"


def _as_spec(item: Any, i: int):
    """A clip description -> ClipSpec, or None for pixel tensors."""
    from .video import ClipSpec

    if isinstance(item, ClipSpec):
        return item
    if isinstance(item, (str, os.PathLike)):
        return ClipSpec(os.fspath(item))
    if isinstance(item, dict):
        if "path" not in item:
            raise ValueError(f"clip {i}: a dict clip needs a 'path' key, got {sorted(item)}")
        return ClipSpec(os.fspath(item["path"]), item.get("start_sec", item.get("start")),
                        item.get("end_sec", item.get("end")))
    if isinstance(item, (tuple, list)) and len(item) in (1, 3) and isinstance(
            item[0], (str, os.PathLike)):
        start = item[1] if len(item) == 3 else None
        end = item[2] if len(item) == 3 else None
        return ClipSpec(os.fspath(item[0]), None if start is None else float(start),
                        None if end is None else float(end))
    if isinstance(item, (Tensor, np.ndarray)):
        return None
    raise TypeError(f"clip {i}: expected a path, (path, start_sec, end_sec), a ClipSpec or a "
                    f"pixel tensor [F, 3, S, S], got {type(item).__name__}")


def _flatten_clips(clips: Any) -> list[Any]:
    """Accept one clip, a list of clips, or a batch tensor [B, F, 3, S, S]."""
    if isinstance(clips, (Tensor, np.ndarray)):
        if clips.ndim == 5:
            return list(clips)
        if clips.ndim == 4:
            return [clips]
        raise ValueError(f"clips: a pixel tensor must be [F, 3, S, S] or [B, F, 3, S, S], got "
                         f"shape {tuple(clips.shape)}")
    if isinstance(clips, (str, os.PathLike, dict)) or _is_spec(clips):
        return [clips]
    if isinstance(clips, tuple) and len(clips) == 3 and isinstance(clips[0], (str, os.PathLike)) \
            and not isinstance(clips[1], (str, os.PathLike)):
        return [clips]
    if not isinstance(clips, Sequence) or isinstance(clips, (bytes, bytearray)):
        raise TypeError(f"clips: expected a clip or a sequence of clips, got "
                        f"{type(clips).__name__}")
    if len(clips) == 0:
        raise ValueError("clips: empty; give at least one clip")
    return list(clips)


def _is_spec(x: Any) -> bool:
    from .video import ClipSpec

    return isinstance(x, ClipSpec)


def _texts(texts: Any, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError(f"{what}: expected a non-empty string or list of strings")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}]: expected str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{what}[{i}]: empty text; give a caption or query")
        out.append(t)
    return out


def _out(x: Tensor, output: Output) -> Any:
    x = x.detach().to("cpu", torch.float32)
    if output == "numpy":
        return x.numpy()
    if output == "torch":
        return x
    raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")


def _normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


# ------------------------------------------------------------------------------ runtime


@dataclass
class MCQAnswer:
    """Answer to a multiple-choice question: ``answer`` = index of the best candidate under
    ``mode``; ``scores`` [C] under that mode; ``dual`` (cosine) and ``fusion`` (VTM match
    probability) [C] when computed."""

    answer: int
    mode: str
    scores: np.ndarray
    dual: np.ndarray | None = None
    fusion: np.ndarray | None = None

    def ranking(self) -> list[int]:
        """Candidate indices, best first."""
        return [int(i) for i in np.argsort(-self.scores, kind="stable")]


@dataclass
class _Stats:
    text_cache_hits: int = 0
    text_cache_misses: int = 0
    clips_decoded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class Runtime:
    """Inference over one backend; create with :func:`load`.

    Attributes: ``backend``, ``device``, ``precision``, ``config`` (ModelConfig),
    ``preprocessing`` (frames, image size, text length), ``tokenizer``.
    """

    def __init__(self, engine: Engine, *, config: ModelConfig, preprocessing: Preprocessing,
                 tokenizer, device: torch.device, precision: str, video_batch_size: int,
                 text_batch_size: int, video_backend: str, decode_workers: int,
                 cache_size: int, files: ModelFiles | None = None) -> None:
        self._engine = engine
        self.backend = engine.name
        self.config = config
        self.preprocessing = preprocessing
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.video_batch_size = video_batch_size
        self.text_batch_size = text_batch_size
        self.video_backend = video_backend
        self.decode_workers = max(1, decode_workers)
        self.cache_size = cache_size
        self.files = files
        self.stats = _Stats()
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()
        from .video import EvalTransform

        p = preprocessing
        self._transform = EvalTransform(resize=p.resize, crop=p.crop, size=p.size,
                                        mean=p.mean, std=p.std)

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"Runtime(backend={self.backend!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r}, frames={p.num_frames}, size={p.size}, "
                f"projection_dim={self.config.projection_dim})")

    @property
    def num_frames(self) -> int:
        return self.preprocessing.num_frames

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    @property
    def has_fusion(self) -> bool:
        return self._engine.has_fusion

    @property
    def attention_impl(self) -> str | None:
        """``"fused"`` or ``"reference"`` on the torch backend; None for exported graphs."""
        model = getattr(self._engine, "model", None)
        return None if model is None else model.config.attention_impl

    @property
    def cuda_graphs(self) -> bool:
        """Whether the torch backend replays CUDA graphs."""
        return bool(getattr(self._engine, "_graphs", None))

    # -- inputs -----------------------------------------------------------------------------
    def _check_pixels(self, x: Tensor, label: str) -> Tensor:
        p = self.preprocessing
        expected = (p.num_frames, self.config.video.in_chans, p.size, p.size)
        if x.ndim != 4 or tuple(x.shape) != expected:
            if x.ndim == 4 and x.shape[0] != p.num_frames and tuple(x.shape[1:]) == expected[1:]:
                raise ValueError(f"{label}: {x.shape[0]} frames, but this model/export takes "
                                 f"{p.num_frames} frames per clip (frame count mismatch)")
            raise ValueError(f"{label}: expected pixels of shape [F, C, S, S] = "
                             f"{list(expected)}, got {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{label}: expected normalised float pixels, got {x.dtype}")
        return x.float()

    def read_clip(self, clip: Any) -> Tensor:
        """One clip -> model-ready pixels ``[F, 3, S, S]`` float32 (CPU)."""
        return self.read_clips([clip])[0]

    def read_clips(self, clips: Any, *, progress: bool = False) -> Tensor:
        """Clips -> ``[N, F, 3, S, S]`` float32 pixels (CPU); paths are decoded in parallel
        (``decode_workers`` threads) with uniform frame sampling and the eval transform."""
        from .video import read_clip

        items = _flatten_clips(clips)
        specs = [_as_spec(item, i) for i, item in enumerate(items)]
        p = self.preprocessing

        def decode(i: int) -> Tensor:
            spec = specs[i]
            if spec is None:
                x = items[i]
                x = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
                return self._check_pixels(x.detach().cpu(), _clip_label(i, items[i]))
            return read_clip(spec.path, spec.start_sec, spec.end_sec, num_frames=p.num_frames,
                             sampling=p.sampling, backend=self.video_backend,
                             transform=self._transform)

        paths = sum(s is not None for s in specs)
        bar = _progress(len(items), "decode", progress and paths > 0)
        out: list[Tensor] = [None] * len(items)  # type: ignore[list-item]
        try:
            if paths > 1 and self.decode_workers > 1:
                with ThreadPoolExecutor(self.decode_workers) as pool:
                    for i, x in enumerate(pool.map(decode, range(len(items)))):
                        out[i] = x
                        bar.update(1)
            else:
                for i in range(len(items)):
                    out[i] = decode(i)
                    bar.update(1)
        finally:
            bar.close()
        self.stats.clips_decoded += paths
        return torch.stack(out)

    def tokenize(self, texts: Any) -> tuple[Tensor, Tensor]:
        """Captions -> (input_ids, attention_mask) ``[N, L]`` int64, padded to the longest,
        truncated to ``preprocessing.max_text_length`` tokens."""
        texts = _texts(texts)
        tok = self.tokenizer(texts, max_length=self.preprocessing.max_text_length,
                             padding="longest", truncation=True)
        return tok["input_ids"], tok["attention_mask"]

    # -- dual mode --------------------------------------------------------------------------
    def encode_video(self, clips: Any, *, batch_size: int | None = None,
                     output: Output = "numpy", normalize: bool = False,
                     progress: bool = False) -> Any:
        """Clips -> retrieval embeddings ``[N, P]`` float32 (L2-normalised with
        ``normalize``). Clips are paths, ``(path, start, end)``, ClipSpecs, or pixels."""
        items = _flatten_clips(clips)
        bs = batch_size or self.video_batch_size
        outs = []
        bar = _progress(len(items), "embed clips", progress)
        try:
            for start in range(0, len(items), bs):
                chunk = items[start:start + bs]
                pixels = self.read_clips(chunk)
                outs.append(self._engine.video(pixels).float().cpu())
                bar.update(len(chunk))
        finally:
            bar.close()
        emb = torch.cat(outs)
        return _out(_normalize(emb) if normalize else emb, output)

    def encode_text(self, texts: Any, *, batch_size: int | None = None,
                    output: Output = "numpy", normalize: bool = False, cache: bool = True,
                    progress: bool = False) -> Any:
        """Captions -> retrieval embeddings ``[N, P]`` float32. Unseen strings are tokenized,
        sorted by token length and run in batches; results are cached by string (LRU of
        ``cache_size`` entries) unless ``cache=False``."""
        texts = _texts(texts)
        bs = batch_size or self.text_batch_size
        found: dict[str, Tensor] = {}
        if cache and self.cache_size > 0:
            with self._cache_lock:
                for t in texts:
                    if t in self._cache:
                        self._cache.move_to_end(t)
                        found[t] = self._cache[t]
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        self.stats.text_cache_hits += sum(t in found for t in texts)
        self.stats.text_cache_misses += len(todo)
        if todo:
            ids, mask = self.tokenize(todo)
            lengths = mask.sum(1)
            order = torch.argsort(lengths, descending=True, stable=True).tolist()
            bar = _progress(len(todo), "embed texts", progress)
            try:
                for start in range(0, len(order), bs):
                    idx = order[start:start + bs]
                    width = int(lengths[idx].max())
                    emb = self._engine.text(ids[idx, :width], mask[idx, :width]).float().cpu()
                    for row, k in enumerate(idx):
                        found[todo[k]] = emb[row]
                    bar.update(len(idx))
            finally:
                bar.close()
            if cache and self.cache_size > 0:
                with self._cache_lock:
                    for t in todo:
                        self._cache[t] = found[t]
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        emb = torch.stack([found[t] for t in texts])
        return _out(_normalize(emb) if normalize else emb, output)

    def clear_cache(self) -> None:
        """Forget cached text embeddings."""
        with self._cache_lock:
            self._cache.clear()

    def similarity(self, texts: Any, clips: Any, *, output: Output = "numpy") -> Any:
        """Cosine similarities ``[Nt, Nv]`` of captions (rows) and clips (columns)."""
        t = self.encode_text(texts, output="torch", normalize=True)
        v = self.encode_video(clips, output="torch", normalize=True)
        return _out(t @ v.T, output)

    def _embed_pixels(self, pixels: Tensor, bs: int) -> Tensor:
        """[N, F, 3, S, S] -> [N, P] float32 CPU, in batches of ``bs``."""
        return torch.cat([self._engine.video(pixels[i:i + bs]).float().cpu()
                          for i in range(0, pixels.shape[0], bs)])

    # -- fusion mode ------------------------------------------------------------------------
    def _require_fusion(self) -> None:
        if not self.has_fusion:
            raise RuntimeError("this model/export has no fusion (VTM) head: score() and "
                               "mcq(mode='fusion'|'ensemble') need one")

    def _vtm_probs(self, pixels: Tensor, ids: Tensor, mask: Tensor, bs: int) -> Tensor:
        """Match probabilities [N] for pairs (pixels[i], text i)."""
        probs = []
        lengths = mask.sum(1)
        for start in range(0, pixels.shape[0], bs):
            sl = slice(start, start + bs)
            width = int(lengths[sl].max())
            logits = self._engine.vtm(pixels[sl], ids[sl, :width], mask[sl, :width])
            probs.append(F.softmax(logits.double().cpu(), dim=-1)[:, 1].float())
        return torch.cat(probs)

    def score(self, clips: Any, texts: Any, *, all_pairs: bool = False,
              top_k: int | None = None, batch_size: int | None = None,
              output: Output = "numpy") -> Any:
        """Fusion VTM match probability (``softmax(vtm_logits)[:, 1]``).

        Pairwise (default): ``clips`` and ``texts`` of equal length N -> ``[N]``.
        ``all_pairs=True``: every caption against every clip -> ``[Nt, Nv]``; with ``top_k``,
        only each caption's ``top_k`` clips by dual-encoder similarity are scored with the
        fusion encoder and the other entries are ``-inf`` (they rank below every scored one).
        """
        self._require_fusion()
        texts = _texts(texts)
        items = _flatten_clips(clips)
        bs = batch_size or self.video_batch_size
        pixels = self.read_clips(items)
        ids, mask = self.tokenize(texts)
        if not all_pairs:
            if len(items) != len(texts):
                raise ValueError(f"score: {len(items)} clips and {len(texts)} texts; pairwise "
                                 "scoring needs equal counts (or all_pairs=True)")
            return _out(self._vtm_probs(pixels, ids, mask, bs), output)
        nt, nv = len(texts), len(items)
        if top_k is None or top_k >= nv:
            pairs_t = torch.arange(nt).repeat_interleave(nv)
            pairs_v = torch.arange(nv).repeat(nt)
        else:
            if top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}")
            sims = (_normalize(self.encode_text(texts, output="torch"))
                    @ _normalize(self._embed_pixels(pixels, bs)).T)
            top = sims.topk(top_k, dim=1).indices  # [Nt, k]
            pairs_t = torch.arange(nt).repeat_interleave(top_k)
            pairs_v = top.reshape(-1)
        probs = self._vtm_probs(pixels[pairs_v], ids[pairs_t], mask[pairs_t], bs)
        full = torch.full((nt, nv), float("-inf"))
        full[pairs_t, pairs_v] = probs
        return _out(full, output)

    def mcq(self, query: str, candidates: Any, *, mode: str = "ensemble",
            batch_size: int | None = None) -> MCQAnswer:
        """Pick the candidate clip that matches ``query``.

        ``mode``: ``"dual"`` (cosine of the embeddings), ``"fusion"`` (VTM match probability)
        or ``"ensemble"`` (their sum, as the original EgoMCQ evaluation).
        """
        if mode not in MCQ_MODES:
            raise ValueError(f"mode must be one of {MCQ_MODES}, got {mode!r}")
        (query,) = _texts([query] if isinstance(query, str) else query, "query")
        items = _flatten_clips(candidates)
        if len(items) < 2:
            raise ValueError(f"mcq: need at least 2 candidates, got {len(items)}")
        pixels = self.read_clips(items)
        dual = fusion = None
        if mode in ("dual", "ensemble"):
            t = _normalize(self.encode_text([query], output="torch"))
            v = self._embed_pixels(pixels, batch_size or self.video_batch_size)
            dual = (_normalize(v) @ t[0]).numpy()
        if mode in ("fusion", "ensemble"):
            self._require_fusion()
            ids, mask = self.tokenize([query])
            n = len(items)
            fusion = self._vtm_probs(pixels, ids.repeat(n, 1), mask.repeat(n, 1),
                                     batch_size or self.video_batch_size).numpy()
        scores = {"dual": dual, "fusion": fusion}.get(mode)
        if mode == "ensemble":
            assert dual is not None and fusion is not None
            scores = dual + fusion
        assert scores is not None
        return MCQAnswer(int(np.argmax(scores)), mode, scores.astype(np.float32), dual, fusion)

    # -- warm-up ----------------------------------------------------------------------------
    def warmup(self, *, batch_sizes: Sequence[int] | None = None,
               text_lengths: Sequence[int] | None = None, fusion: bool | None = None
               ) -> dict[str, float]:
        """Run every shape bucket once (captures CUDA graphs on the torch/CUDA backend, creates
        sessions or engine contexts elsewhere). Returns seconds per part."""
        p = self.preprocessing
        if batch_sizes is None:
            cap = self.video_batch_size
            batch_sizes = sorted({batch_bucket(b, cap) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)
                                  if b <= cap} | {cap})
        if text_lengths is None:
            # Captions are short: warm the buckets up to 32 tokens; longer ones are captured
            # on first use.
            text_lengths = sorted({length_bucket(n, p.max_text_length) for n in (8, 16, 24, 32)})
        fusion = self.has_fusion if fusion is None else fusion
        times: dict[str, float] = {}
        gen = torch.Generator().manual_seed(0)
        for b in batch_sizes:
            video = torch.randn(b, p.num_frames, self.config.video.in_chans, p.size, p.size,
                                generator=gen)
            t0 = time.perf_counter()
            self._engine.video(video)
            times[f"video_b{b}"] = time.perf_counter() - t0
            for length in text_lengths:
                ids = torch.full((b, length), p.pad_token_id, dtype=torch.int64)
                ids[:, 0] = self.config.text.bos_token_id
                ids[:, length - 1] = self.config.text.eos_token_id
                ids[:, 1:length - 1] = torch.randint(5, self.config.text.vocab_size,
                                                     (b, max(0, length - 2)), generator=gen)
                mask = torch.ones(b, length, dtype=torch.int64)
                t0 = time.perf_counter()
                self._engine.text(ids, mask)
                times[f"text_b{b}_l{length}"] = time.perf_counter() - t0
                if fusion:
                    t0 = time.perf_counter()
                    self._engine.vtm(video, ids, mask)
                    times[f"vtm_b{b}_l{length}"] = time.perf_counter() - t0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return times


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a convenience: run without them
        return _NoBar()

    return tqdm(total=total, desc=desc, unit="clip" if "clip" in desc else "item",
                leave=False)


# ------------------------------------------------------------------------------ load


def _resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (torch "
                         f"{torch.__version__}); use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def _cache_root() -> Path:
    env = os.environ.get("EGOVLPV2_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "egovlpv2_rt"


def _checkpoint_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    # Content hash of the first and last MiB guards against a file replaced in place.
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def load(
    checkpoint: PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    precision: str | None = None,
    backend: str = "torch",
    tokenizer: PathLike | None = None,
    config: ModelConfig | None = None,
    num_frames: int | None = None,
    max_text_length: int | None = None,
    video_batch_size: int | None = None,
    text_batch_size: int | None = None,
    cuda_graphs: bool | None = None,
    onnx_dir: PathLike | None = None,
    video_backend: str = "pyav",
    decode_workers: int | None = None,
    cache_size: int = 4096,
    attention_impl: str | None = None,
) -> Runtime:
    """Load a model for inference.

    Args:
        checkpoint: None (the shipped default model), a model folder (``model.safetensors`` +
            ``tokenizer.json``), an export folder (``export.json``, from ``egovlpv2-export``),
            or a weights file (``.safetensors`` with its config in the metadata; ``.pth`` with
            ``config=``) with the tokenizer files beside it.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA when available.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; default fp32 on CPU, fp16 on CUDA.
            For onnxruntime/tensorrt, the precision of the export folder.
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        tokenizer: tokenizer.json or a folder with it (default: beside the checkpoint).
        config: ModelConfig for checkpoints that do not store one (released ``.pth``).
        num_frames: frames per clip (default: the model's ``video.num_frames``; fixed by the
            export for onnxruntime/tensorrt).
        max_text_length: caption tokens kept (default: the model's limit).
        video_batch_size, text_batch_size: batch sizes (defaults 8/64 on CPU, 32/256 on CUDA).
        cuda_graphs: capture CUDA graphs per shape bucket (torch backend on CUDA; default on).
        onnx_dir: where the onnxruntime backend keeps exported graphs when the checkpoint is
            not an export folder (default: a cache folder keyed by the checkpoint file).
        video_backend: ``egovlpv2_rt.video`` decoder (``"pyav"``, ``"torchcodec"``, ...).
        decode_workers: threads decoding clips in parallel (default min(4, CPUs)).
        cache_size: text embeddings kept in the LRU cache (0 disables it).
        attention_impl: torch backend: ``"fused"`` (custom ops) or ``"reference"`` (plain
            PyTorch); default fused where the ops are built for the device and precision.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dev = _resolve_device(device)
    requested = precision
    precision = precision or ("fp16" if dev.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if backend == "torch" and dev.type == "cpu" and precision == "fp16":
        raise ValueError("precision 'fp16' is not supported on the CPU; use 'fp32' or 'bf16'")
    files = resolve_checkpoint(checkpoint)
    tok_path = Path(tokenizer) if tokenizer is not None else files.tokenizer
    cuda = dev.type == "cuda"
    vbs = video_batch_size or (32 if cuda else 8)
    tbs = text_batch_size or (256 if cuda else 64)
    workers = decode_workers or min(4, os.cpu_count() or 1)
    if vbs < 1 or tbs < 1:
        raise ValueError("batch sizes must be >= 1")

    if files.export_dir is not None and backend != "torch":
        from .export.onnx_export import read_manifest

        manifest = read_manifest(files.export_dir)
        cfg = ModelConfig.from_dict(manifest["config"])
        prep = Preprocessing.from_dict(manifest["preprocessing"])
        if num_frames is not None and num_frames != prep.num_frames:
            raise ValueError(f"num_frames={num_frames}, but the export in {files.export_dir} "
                             f"takes {prep.num_frames} frames per clip (frame count mismatch)")
        exported = manifest.get("precision", "fp32")
        if requested is not None and requested != exported:
            raise ValueError(f"precision {requested!r} requested, but the export in "
                             f"{files.export_dir} is {exported!r} (export it again with "
                             f"--precision {requested})")
        precision = exported
        if max_text_length is not None:
            prep = Preprocessing(**{**prep.to_dict(), "max_text_length": min(
                max_text_length, prep.max_text_length)})
        tokenizer_obj = load_tokenizer(tok_path, prep.max_text_length)
        if backend == "onnxruntime":
            engine: Engine = OrtEngine(files.export_dir, dev, None,
                                         has_fusion="vtm" in manifest["graphs"])
        else:
            engine = TensorRTEngines(files.export_dir, dev)
        return Runtime(engine, config=cfg, preprocessing=prep, tokenizer=tokenizer_obj,
                       device=dev, precision=precision, video_batch_size=vbs,
                       text_batch_size=tbs, video_backend=video_backend,
                       decode_workers=workers, cache_size=cache_size, files=files)

    if backend == "tensorrt":
        raise ValueError("backend 'tensorrt' needs an export folder with engines (build them "
                         "with `egovlpv2-export --format tensorrt --out DIR`, then "
                         "load(DIR, backend='tensorrt'))")
    if files.checkpoint is None:
        raise FileNotFoundError(f"{files.export_dir}: an export folder without "
                                "model.safetensors serves backend='onnxruntime' or "
                                "'tensorrt' only")
    fused_ok = _fused_available(dev, PRECISIONS[precision])
    if attention_impl == "fused" and not fused_ok:
        raise ValueError(f"attention_impl='fused': the custom ops are not built for {dev.type} "
                         f"{precision} here (see egovlpv2_rt.build_info())")
    if attention_impl not in (None, "fused", "reference"):
        raise ValueError(f"attention_impl must be 'fused' or 'reference', got "
                         f"{attention_impl!r}")
    impl = attention_impl or ("fused" if fused_ok else "reference")
    model = load_model_files(files, config=config, device="cpu", dtype=torch.float32,
                       attention_impl=impl)
    cfg = model.config
    frames = num_frames or cfg.video.num_frames
    if not 1 <= frames <= cfg.video.num_frames:
        raise ValueError(f"num_frames={frames} is outside [1, {cfg.video.num_frames}] (the "
                         "model's maximum clip length; frame count mismatch)")
    limit = cfg.text.max_text_length
    prep = Preprocessing.for_config(cfg, num_frames=frames,
                                    max_text_length=min(max_text_length or limit, limit))
    tokenizer_obj = load_tokenizer(tok_path, prep.max_text_length)
    if tokenizer_obj.vocab_size > cfg.text.vocab_size:
        raise ValueError(f"tokenizer {tok_path} has {tokenizer_obj.vocab_size} tokens but the "
                         f"model's vocabulary is {cfg.text.vocab_size}: wrong tokenizer for "
                         f"this checkpoint")

    if backend == "onnxruntime":
        if precision == "bf16" and dev.type == "cpu":
            raise ValueError("onnxruntime on the CPU does not run bfloat16 graphs; use "
                             "precision 'fp32' or 'fp16'")
        assert files.checkpoint is not None
        out = Path(onnx_dir) if onnx_dir is not None else (
            _cache_root() / "onnx" / f"{_checkpoint_key(files.checkpoint)}-f{frames}-{precision}")

        def exporter(name: str, _model=model, _out=out) -> None:
            from .export.onnx_export import export_model

            export_model(_model, _out, graphs=(name,), num_frames=frames, precision=precision,
                         tokenizer_file=tok_path if tok_path and Path(tok_path).is_file()
                         else None, source_checkpoint=files.checkpoint,
                         max_text_length=prep.max_text_length)

        engine = OrtEngine(out, dev, exporter, has_fusion=hasattr(model, "itm_score"))
        return Runtime(engine, config=cfg, preprocessing=prep, tokenizer=tokenizer_obj,
                       device=dev, precision=precision, video_batch_size=vbs,
                       text_batch_size=tbs, video_backend=video_backend,
                       decode_workers=workers, cache_size=cache_size, files=files)

    dtype = PRECISIONS[precision]
    if dev.type == "cuda":
        # Host-side value checks would synchronise (and break CUDA-graph capture).
        model.config = model.config.replace(check_finite_pixels=False)
    model = model.to(device=dev, dtype=dtype).eval()
    use_graphs = (dev.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
    if use_graphs and dev.type != "cuda":
        raise ValueError("cuda_graphs=True needs a CUDA device")
    engine = TorchEngine(model, dev, dtype, cuda_graphs=use_graphs, max_batch=max(vbs, tbs),
                          max_text_length=prep.max_text_length,
                          pad_token_id=cfg.text.pad_token_id,
                          bos_token_id=cfg.text.bos_token_id)
    return Runtime(engine, config=cfg, preprocessing=prep, tokenizer=tokenizer_obj, device=dev,
                   precision=precision, video_batch_size=vbs, text_batch_size=tbs,
                   video_backend=video_backend, decode_workers=workers,
                   cache_size=cache_size, files=files)


def _fused_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused custom ops run for this device and dtype (else: reference path)."""
    from . import _extension
    from .ops import _FUSED_DTYPES

    ext = _extension.loaded()
    if ext is None or dtype not in _FUSED_DTYPES.get(device.type, ()):
        return False
    return device.type == "cpu" or ext.cuda_library is not None


# ------------------------------------------------------------------------------ benchmark


def _time(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]
          ) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1e3
    return {"median_ms": float(np.median(arr)), "min_ms": float(arr.min()),
            "p90_ms": float(np.percentile(arr, 90)), "repeats": repeats}


def benchmark(rt: Runtime, *, cases: Sequence[str] = ("text_b1", "video_b1", "video_b8"),
              repeats: int = 10, warmup: int = 2, text_length: int = 16) -> list[dict]:
    """Latency of the public calls on synthetic inputs (decoding excluded: pixels are given
    as tensors; the text cache is bypassed). ``cases``: ``text_bN``, ``video_bN``,
    ``score_bN`` (fusion, pairwise). Returns one row per case."""
    p = rt.preprocessing
    gen = torch.Generator().manual_seed(0)
    words = ["the", "red", "square", "moves", "left", "picks", "up", "blue", "circle", "C"]
    sync = (lambda: torch.cuda.synchronize(rt.device)) if rt.device.type == "cuda" else (
        lambda: None)
    rows = []
    for case in cases:
        kind, _, b = case.partition("_b")
        if kind not in ("text", "video", "score") or not b.isdigit():
            raise ValueError(f"benchmark case {case!r}: expected text_bN, video_bN or score_bN")
        n = int(b)
        video = torch.randn(n, p.num_frames, rt.config.video.in_chans, p.size, p.size,
                            generator=gen)
        texts = [" ".join(words[(i + k) % len(words)] for k in range(max(2, text_length - 2)))
                 for i in range(n)]
        if kind == "text":
            def fn(texts=texts):
                return rt.encode_text(texts, cache=False)
        elif kind == "video":
            def fn(video=video):
                return rt.encode_video(video)
        else:
            def fn(video=video, texts=texts):
                return rt.score(video, texts)
        row = {"case": case, "backend": rt.backend, "device": str(rt.device),
               "precision": rt.precision}
        row.update(_time(fn, repeats, warmup, sync))
        rows.append(row)
    return rows
