"""EgoTaskQA accuracy: per reasoning-type tag, with Open / Binary / All.

The original (``ReasongingTypeAccCalculator``) counts a question once for every tag it carries
and divides, per tag, the correct by the asked (a tag never asked scores 0). EgoTaskQA reports
Open (questions whose structural type is ``query``), Binary (``verify``) and All (every
question once). Values are percentages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = ["QAItemLike", "majority_answer", "majority_baseline", "taskqa_accuracy"]

OPEN_TYPE = "query"
BINARY_TYPE = "verify"


class QAItemLike(Protocol):
    """What the metric reads of a question (:class:`~egovlpv2_rt.tasks.egotaskqa_data.
    TaskQAItem`)."""

    @property
    def structural(self) -> str: ...

    @property
    def reasoning(self) -> tuple[str, ...]: ...


def _as_index_array(x: Tensor | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D integer sequence, got shape {a.shape} {a.dtype}")
    return a.astype(np.int64)


def taskqa_accuracy(
    pred: Tensor | np.ndarray | Sequence[int],
    target: Tensor | np.ndarray | Sequence[int],
    items: Sequence[QAItemLike],
    reasoning_types: Iterable[str] | None = None,
) -> dict[str, float]:
    """Accuracy (percent) of answer indices ``pred`` against ``target`` ([N] ints each).

    Returns ``{"All", "Open", "Binary", **{tag: acc}}`` with one entry per tag of
    ``reasoning_types`` (default: the tags the items carry, sorted). A group with no question
    scores 0, as the original's calculator. ``items[i]`` is question ``i``.
    """
    p = _as_index_array(pred, "pred")
    t = _as_index_array(target, "target")
    if not (len(p) == len(t) == len(items)):
        raise ValueError(
            f"pred ({len(p)}), target ({len(t)}) and items ({len(items)}) must have one entry "
            "per question"
        )
    right = p == t
    tags = (
        list(reasoning_types)
        if reasoning_types is not None
        else sorted({tag for it in items for tag in it.reasoning})
    )
    correct: Counter[str] = Counter()
    asked: Counter[str] = Counter()
    for ok, it in zip(right, items, strict=True):
        groups = [*it.reasoning, "All"]
        if it.structural == OPEN_TYPE:
            groups.append("Open")
        elif it.structural == BINARY_TYPE:
            groups.append("Binary")
        for g in groups:
            asked[g] += 1
            correct[g] += int(ok)
    out = {}
    for g in ("All", "Open", "Binary", *tags):
        out[g] = 100.0 * correct[g] / asked[g] if asked[g] else 0.0
    return out


def majority_answer(train_answers: Sequence[int]) -> int:
    """The most frequent training answer (the smallest index among ties)."""
    if not len(train_answers):
        raise ValueError("no training answer to take the majority of")
    counts = Counter(int(a) for a in train_answers)
    best = max(counts.values())
    return min(a for a, c in counts.items() if c == best)


def majority_baseline(
    train_answers: Sequence[int],
    target: Tensor | np.ndarray | Sequence[int],
    items: Sequence[QAItemLike],
    reasoning_types: Iterable[str] | None = None,
) -> dict[str, float]:
    """:func:`taskqa_accuracy` of answering every question with :func:`majority_answer`."""
    t = _as_index_array(target, "target")
    pred = torch.full((len(t),), majority_answer(train_answers), dtype=torch.int64)
    return taskqa_accuracy(pred, t, items, reasoning_types)
