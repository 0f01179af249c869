"""Decode batch k+1 while batch k is encoded.

:func:`overlapped` runs the decoding of the next ``depth`` batches in one background thread
(which may itself fan the clips of a batch out to decode workers, as the runtime's does) while
the calling thread runs the model on the current one, so the slower of the two stages sets the pace
instead of their sum. At most ``depth`` decoded batches wait at any time, whatever the number
of clips: memory stays flat. A decode error of a clip is either raised (in order, from the
batch it belongs to) or, with ``skip_bad`` in the decoder, reported with the batch and the
other clips go on. Used by :meth:`egovlpv2_rt.runtime.Runtime.iter_encode_video` (clips) and by
``egovlpv2 features`` (the windows of a clip).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["DecodedBatch", "EncodedBatch", "overlapped"]


@dataclass
class DecodedBatch:
    """Pixels ``[n, F, 3, S, S]`` of the clips at ``positions`` (None when all failed), and
    the clips that could not be decoded: ``(position, the error)``."""

    positions: list[int]
    pixels: Tensor | None
    failed: list[tuple[int, Exception]] = field(default_factory=list)


@dataclass
class EncodedBatch:
    """Embeddings ``[n, P]`` float32 CPU of the clips at ``positions`` (None when none was
    decoded), and the clips that failed."""

    positions: list[int]
    embeddings: Tensor | None
    failed: list[tuple[int, Exception]] = field(default_factory=list)


def overlapped(
    batches: Sequence[Sequence[int]],
    decode: Callable[[Sequence[int]], DecodedBatch],
    encode: Callable[[Tensor], Tensor],
    *,
    depth: int = 1,
) -> Iterator[EncodedBatch]:
    """Yield the encoded batches in order; ``decode(positions)`` runs in a background thread
    up to ``depth`` batches ahead of ``encode(pixels)`` in the caller's thread."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    todo = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="egovlpv2-decode") as pool:
        pending: deque[Future[DecodedBatch]] = deque()
        for _ in range(depth):
            nxt = next(todo, None)
            if nxt is None:
                break
            pending.append(pool.submit(decode, nxt))
        try:
            while pending:
                got = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:  # queued before the model runs: the overlap
                    pending.append(pool.submit(decode, nxt))
                emb = encode(got.pixels) if got.pixels is not None else None
                yield EncodedBatch(got.positions, emb, got.failed)
        finally:
            for f in pending:  # an error or a consumer that stopped: drop the queued work
                f.cancel()
