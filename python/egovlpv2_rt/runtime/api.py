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

Every clip's pixels are checked after preprocessing, on the exact tensor the engine receives,
whatever the backend: floating point and finite (``check_finite_pixels``, on by default; one
fused per-clip reduction over each batch while it is still on the CPU, so no device sync and no
effect on CUDA graphs). A clip with a NaN or Inf pixel raises
:class:`~egovlpv2_rt.errors.InputError` naming the clip instead of coming out as a NaN
embedding.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig
from ..errors import InputError
from ..model_files import ModelFiles
from ..modeling.attention_maps import CrossAttentionMaps, cross_attention_maps
from ..ops import fused_available
from ..preprocessing import Preprocessing
from ..progress import progress_bar
from ..tokenizer import RobertaTokenizer
from ..video.pipeline import DecodedBatch, EncodedBatch, overlapped
from ..video.reader import Backend
from .decoding import ClipDecoder
from .engines import Engine, batch_bucket, length_bucket
from .inputs import (
    Output,
    batch_size_or,
    check_texts,
    flatten_clips,
    l2_normalize,
    to_output,
)

__all__ = ["MCQ_MODES", "PRECISIONS", "CrossAttention", "MCQAnswer", "Runtime"]


def _has_items(clips: Any) -> bool:
    """False for an empty list or batch of candidates (reported as "need at least 2")."""
    if isinstance(clips, (Tensor, np.ndarray)):
        return clips.ndim != 5 or clips.shape[0] > 0
    return not (isinstance(clips, Sequence) and not isinstance(clips, str) and len(clips) == 0)


MCQ_MODES = ("dual", "fusion", "ensemble")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


@dataclass(frozen=True)
class CrossAttention:
    """:meth:`Runtime.cross_attention` of one (clip, caption): the maps, the caption's tokens
    (``tokens[j]`` is the text of token j, special tokens included, padding excluded) and the
    clip's model-ready pixels ``[F, 3, S, S]`` float32 (CPU)."""

    maps: CrossAttentionMaps
    tokens: list[str]
    pixels: Tensor


class Runtime:
    """Inference over one backend; create with :func:`load`.

    Attributes: ``backend``, ``device``, ``precision``, ``config`` (ModelConfig),
    ``preprocessing`` (frames, image size, text length), ``tokenizer``,
    ``check_finite_pixels`` (refuse clips with NaN/Inf pixels; the caller's switch, see
    :func:`~egovlpv2_rt.runtime.load`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        config: ModelConfig,
        preprocessing: Preprocessing,
        tokenizer: RobertaTokenizer,
        device: torch.device,
        precision: str,
        video_batch_size: int,
        text_batch_size: int,
        video_backend: Backend,
        decode_workers: int,
        cache_size: int,
        files: ModelFiles | None = None,
        check_finite_pixels: bool = True,
    ) -> None:
        self._engine = engine
        self.check_finite_pixels = bool(check_finite_pixels)
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

    def __repr__(self) -> str:
        p = self.preprocessing
        return (
            f"Runtime(backend={self.backend!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r}, frames={p.num_frames}, size={p.size}, "
            f"projection_dim={self.config.projection_dim})"
        )

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
        if model is None:
            return None
        if model.attention_impl != "auto":
            return model.attention_impl
        fused = fused_available(self.device, PRECISIONS[self.precision])
        return "fused" if fused else "reference"

    @property
    def cuda_graphs(self) -> bool:
        """Whether the torch backend replays CUDA graphs."""
        return bool(getattr(self._engine, "_graphs", None))

    # -- inputs -----------------------------------------------------------------------------
    @property
    def clip_decoder(self) -> ClipDecoder:
        """This runtime's decoding settings as a picklable value (no model): what a decode
        worker in another process needs to give the same pixels."""
        return ClipDecoder(
            self.preprocessing,
            self.config.video.in_chans,
            self.video_backend,
            self.decode_workers,
            self.check_finite_pixels,
        )

    def read_clip(self, clip: Any) -> Tensor:
        """One clip -> model-ready pixels ``[F, 3, S, S]`` float32 (CPU)."""
        return self.read_clips([clip])[0]

    def read_clips(self, clips: Any, *, progress: bool = False) -> Tensor:
        """Clips -> ``[N, F, 3, S, S]`` float32 pixels (CPU); paths are decoded in parallel
        (``decode_workers`` threads) with uniform frame sampling and the eval transform. With
        ``check_finite_pixels`` (default), a clip whose pixels hold a NaN or an Inf raises
        :class:`~egovlpv2_rt.errors.InputError` naming it."""
        return self._read_clips(flatten_clips(clips), 0, progress)

    def _read_clips(self, items: list[Any], offset: int, progress: bool = False) -> Tensor:
        """``read_clips`` of ``items``, which are clips ``offset, offset + 1, ...`` of the
        caller's list (error messages use those numbers)."""
        batch = self._decode(items, offset, progress=progress, skip_bad=False)
        assert batch.pixels is not None  # skip_bad=False raises instead
        return batch.pixels

    def _decode(
        self, items: list[Any], offset: int, *, progress: bool = False, skip_bad: bool = False
    ) -> DecodedBatch:
        """Decode ``items`` (clips ``offset, offset + 1, ...`` of the caller's list) in parallel
        (``decode_workers`` threads). With ``skip_bad`` a clip whose file cannot be decoded
        (:class:`~egovlpv2_rt.video.VideoError`) is reported in ``failed`` and the others go on;
        without, the first such error is raised."""
        batch, paths = self.clip_decoder.decode(items, offset, progress=progress, skip_bad=skip_bad)
        self.stats.clips_decoded += paths
        return batch

    def tokenize(self, texts: Any) -> tuple[Tensor, Tensor]:
        """Captions -> (input_ids, attention_mask) ``[N, L]`` int64, padded to the longest,
        truncated to ``preprocessing.max_text_length`` tokens."""
        texts = check_texts(texts)
        tok = self.tokenizer(
            texts, max_length=self.preprocessing.max_text_length, padding="longest", truncation=True
        )
        return tok["input_ids"], tok["attention_mask"]

    def cross_attention(self, clip: Any, text: str) -> CrossAttention:
        """Where each word of ``text`` looks in ``clip`` (t2i) and each video token in the text
        (i2t), per fused layer and head (:func:`~egovlpv2_rt.modeling.attention_maps.
        cross_attention_maps`; the fast path is not changed). PyTorch backend only."""
        self._require_fusion()
        model = getattr(self._engine, "model", None)
        if model is None:
            raise RuntimeError(
                f"cross_attention needs the PyTorch backend (attention probabilities are not "
                f"in the exported graphs), this runtime uses {self.backend!r}"
            )
        (text,) = check_texts([text])
        pixels = self.read_clips([clip])
        ids, mask = self.tokenize([text])
        engine_dtype = next(model.parameters()).dtype
        maps = cross_attention_maps(
            model,
            pixels.to(self.device, engine_dtype),
            ids.to(self.device),
            mask.to(self.device),
        )
        maps = dataclasses.replace(
            maps,
            **{
                name: getattr(maps, name).float().cpu()
                for name in ("t2i", "i2t", "text_states", "video_states")
            },
        )
        n = int(mask[0].sum())
        tokens = [
            self.tokenizer.decode([t], skip_special_tokens=False) for t in ids[0, :n].tolist()
        ]
        return CrossAttention(maps, tokens, pixels[0])

    # -- dual mode --------------------------------------------------------------------------
    def encode_video(
        self,
        clips: Any,
        *,
        batch_size: int | None = None,
        output: Output = "numpy",
        normalize: bool = False,
        progress: bool = False,
    ) -> Any:
        """Clips -> retrieval embeddings ``[N, P]`` float32 (L2-normalised with
        ``normalize``). Clips are paths, ``(path, start, end)``, ClipSpecs, or pixels. A clip
        with a NaN/Inf pixel raises :class:`~egovlpv2_rt.errors.InputError` naming it (unless
        ``check_finite_pixels`` is off: then its embedding is NaN)."""
        items = flatten_clips(clips)
        outs = []
        for batch in self.iter_encode_video(items, batch_size=batch_size, progress=progress):
            assert batch.embeddings is not None  # skip_bad=False raises instead
            outs.append(batch.embeddings)
        emb = torch.cat(outs)
        return to_output(l2_normalize(emb) if normalize else emb, output)

    def iter_encode_video(
        self,
        clips: Any,
        *,
        batch_size: int | None = None,
        skip_bad: bool = False,
        depth: int = 1,
        progress: bool = False,
    ) -> Iterator[EncodedBatch]:
        """Encode ``clips`` batch by batch, decoding the next ``depth`` batches while the model
        runs on the current one (:func:`~egovlpv2_rt.video.pipeline.overlapped`): yields
        :class:`~egovlpv2_rt.video.pipeline.EncodedBatch` (positions in ``clips``,
        embeddings ``[n, P]`` float32 CPU, failed clips) in order. With ``skip_bad`` a clip
        whose file cannot be decoded is reported in its batch's ``failed`` and the others are
        encoded; without, its error is raised."""
        items = flatten_clips(clips)
        bs = batch_size_or(batch_size, self.video_batch_size)
        batches = [list(range(i, min(i + bs, len(items)))) for i in range(0, len(items), bs)]

        def decode(positions: Sequence[int]) -> DecodedBatch:
            return self._decode([items[k] for k in positions], positions[0], skip_bad=skip_bad)

        bar = progress_bar(len(items), "embed clips", progress)
        t0 = time.perf_counter()
        try:
            done = 0
            postfix = getattr(bar, "set_postfix", None)  # tqdm's; the no-op bar has none
            for batch in overlapped(batches, decode, self._encode_pixels, depth=depth):
                n = len(batch.positions) + len(batch.failed)
                done += n
                bar.update(n)
                if postfix is not None:
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    postfix(clips_s=f"{rate:.1f}", refresh=False)
                yield batch
        finally:
            bar.close()

    def encode_text(
        self,
        texts: Any,
        *,
        batch_size: int | None = None,
        output: Output = "numpy",
        normalize: bool = False,
        cache: bool = True,
        progress: bool = False,
    ) -> Any:
        """Captions -> retrieval embeddings ``[N, P]`` float32. Unseen strings are tokenized,
        sorted by token length and run in batches; results are cached by string (LRU of
        ``cache_size`` entries) unless ``cache=False``."""
        texts = check_texts(texts)
        bs = batch_size_or(batch_size, self.text_batch_size)
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
            bar = progress_bar(len(todo), "embed texts", progress)
            try:
                for start in range(0, len(order), bs):
                    idx = order[start : start + bs]
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
        return to_output(l2_normalize(emb) if normalize else emb, output)

    def clear_cache(self) -> None:
        """Forget cached text embeddings."""
        with self._cache_lock:
            self._cache.clear()

    def similarity(self, texts: Any, clips: Any, *, output: Output = "numpy") -> Any:
        """Cosine similarities ``[Nt, Nv]`` of captions (rows) and clips (columns)."""
        t = self.encode_text(texts, output="torch", normalize=True)
        v = self.encode_video(clips, output="torch", normalize=True)
        return to_output(t @ v.T, output)

    def _encode_pixels(self, pixels: Tensor) -> Tensor:
        """One batch of decoded clips ``[n, F, 3, S, S]`` -> embeddings ``[n, P]`` float32 CPU."""
        return self._engine.video(pixels).float().cpu()

    def _embed_pixels(self, pixels: Tensor, bs: int) -> Tensor:
        """[N, F, 3, S, S] -> [N, P] float32 CPU, in batches of ``bs``."""
        return torch.cat(
            [
                self._engine.video(pixels[i : i + bs]).float().cpu()
                for i in range(0, pixels.shape[0], bs)
            ]
        )

    # -- fusion mode ------------------------------------------------------------------------
    def _require_fusion(self) -> None:
        if not self.has_fusion:
            raise RuntimeError(
                "this model/export has no fusion (VTM) head: score() and "
                "mcq(mode='fusion'|'ensemble') need one"
            )

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

    def score(
        self,
        clips: Any,
        texts: Any,
        *,
        all_pairs: bool = False,
        top_k: int | None = None,
        batch_size: int | None = None,
        output: Output = "numpy",
    ) -> Any:
        """Fusion VTM match probability (``softmax(vtm_logits)[:, 1]``).

        Pairwise (default): ``clips`` and ``texts`` of equal length N -> ``[N]``.
        ``all_pairs=True``: every caption against every clip -> ``[Nt, Nv]``; with ``top_k``,
        only each caption's ``top_k`` clips by dual-encoder similarity are scored with the
        fusion encoder and the other entries are ``-inf`` (they rank below every scored one).
        """
        self._require_fusion()
        texts = check_texts(texts)
        items = flatten_clips(clips)
        bs = batch_size_or(batch_size, self.video_batch_size)
        pixels = self.read_clips(items)
        ids, mask = self.tokenize(texts)
        if not all_pairs:
            if len(items) != len(texts):
                raise ValueError(
                    f"score: {len(items)} clips and {len(texts)} texts; pairwise "
                    "scoring needs equal counts (or all_pairs=True)"
                )
            return to_output(self._vtm_probs(pixels, ids, mask, bs), output)
        nt, nv = len(texts), len(items)
        if top_k is None or top_k >= nv:
            pairs_t = torch.arange(nt).repeat_interleave(nv)
            pairs_v = torch.arange(nv).repeat(nt)
        else:
            if top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}")
            sims = (
                l2_normalize(self.encode_text(texts, output="torch"))
                @ l2_normalize(self._embed_pixels(pixels, bs)).T
            )
            top = sims.topk(top_k, dim=1).indices  # [Nt, k]
            pairs_t = torch.arange(nt).repeat_interleave(top_k)
            pairs_v = top.reshape(-1)
        probs = self._vtm_probs(pixels[pairs_v], ids[pairs_t], mask[pairs_t], bs)
        full = torch.full((nt, nv), float("-inf"))
        full[pairs_t, pairs_v] = probs
        return to_output(full, output)

    def mcq(
        self, query: str, candidates: Any, *, mode: str = "ensemble", batch_size: int | None = None
    ) -> MCQAnswer:
        """Pick the candidate clip that matches ``query``.

        ``mode``: ``"dual"`` (cosine of the embeddings), ``"fusion"`` (VTM match probability)
        or ``"ensemble"`` (their sum, as the original EgoMCQ evaluation).
        """
        if mode not in MCQ_MODES:
            raise ValueError(f"mode must be one of {MCQ_MODES}, got {mode!r}")
        queries = check_texts([query] if isinstance(query, str) else query, "query")
        if len(queries) != 1:
            raise InputError(f"query: expected one question, got {len(queries)}")
        (query,) = queries
        bs = batch_size_or(batch_size, self.video_batch_size)
        items = flatten_clips(candidates) if _has_items(candidates) else []
        if len(items) < 2:
            raise InputError(f"mcq: need at least 2 candidates, got {len(items)}")
        pixels = self.read_clips(items)
        dual = fusion = None
        if mode in ("dual", "ensemble"):
            t = l2_normalize(self.encode_text([query], output="torch"))
            v = self._embed_pixels(pixels, bs)
            dual = (l2_normalize(v) @ t[0]).numpy()
        if mode in ("fusion", "ensemble"):
            self._require_fusion()
            ids, mask = self.tokenize([query])
            n = len(items)
            fusion = self._vtm_probs(pixels, ids.repeat(n, 1), mask.repeat(n, 1), bs).numpy()
        scores = {"dual": dual, "fusion": fusion}.get(mode)
        if mode == "ensemble":
            assert dual is not None and fusion is not None
            scores = dual + fusion
        assert scores is not None
        return MCQAnswer(int(np.argmax(scores)), mode, scores.astype(np.float32), dual, fusion)

    # -- warm-up ----------------------------------------------------------------------------
    def warmup(
        self,
        *,
        batch_sizes: Sequence[int] | None = None,
        text_lengths: Sequence[int] | None = None,
        fusion: bool | None = None,
    ) -> dict[str, float]:
        """Run every shape bucket once (captures CUDA graphs on the torch/CUDA backend, creates
        sessions or engine contexts elsewhere). Returns seconds per part."""
        p = self.preprocessing
        if batch_sizes is None:
            cap = self.video_batch_size
            batch_sizes = sorted(
                {batch_bucket(b, cap) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= cap}
                | {cap}
            )
        if text_lengths is None:
            # Captions are short: warm the buckets up to 32 tokens; longer ones are captured
            # on first use.
            text_lengths = sorted({length_bucket(n, p.max_text_length) for n in (8, 16, 24, 32)})
        fusion = self.has_fusion if fusion is None else fusion
        times: dict[str, float] = {}
        gen = torch.Generator().manual_seed(0)
        for b in batch_sizes:
            video = torch.randn(
                b, p.num_frames, self.config.video.in_chans, p.size, p.size, generator=gen
            )
            t0 = time.perf_counter()
            self._engine.video(video)
            times[f"video_b{b}"] = time.perf_counter() - t0
            for length in text_lengths:
                ids = torch.full((b, length), p.pad_token_id, dtype=torch.int64)
                ids[:, 0] = self.config.text.bos_token_id
                ids[:, length - 1] = self.config.text.eos_token_id
                ids[:, 1 : length - 1] = torch.randint(
                    5, self.config.text.vocab_size, (b, max(0, length - 2)), generator=gen
                )
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
