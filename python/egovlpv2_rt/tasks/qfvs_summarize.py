"""Summarise a video for a query (c1, c2) with a trained QFVS head; save and load heads.

:func:`summarize` is the job a user wants from QFVS: the video's shots (5 s each, frames at
1 fps) fused with the query's prompts, scored by the head segment by segment, and the top
``budget`` share of shots returned in time order with their times and scores. Heads are stored
as safetensors (no pickle) with their feature size in the metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..files import atomic_output
from ..modeling.model import EgoVLPv2
from ..tokenizer import RobertaTokenizer
from .qfvs import SHOT_SECONDS, segment_shots, shot_features
from .qfvs_head import PROMPT_QUERY, QFVSHead, score_shots, top_shots

__all__ = [
    "SummaryShot",
    "load_qfvs_head",
    "parse_query",
    "save_qfvs_head",
    "summarize",
    "summary_json",
]

_FORMAT = "egovlpv2-qfvs-head"


@dataclass(frozen=True)
class SummaryShot:
    """A chosen shot: 0-based index, its span in seconds ``[start, end)``, query score."""

    shot: int
    start: float
    end: float
    score: float


def parse_query(query: str | tuple[str, str]) -> tuple[str, str]:
    """``"c1,c2"`` (or a pair) -> (c1, c2), names stripped; anything else is an InputError."""
    parts = [p.strip() for p in query.split(",")] if isinstance(query, str) else list(query)
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise InputError(f"query: expected two concepts 'c1,c2', got {query!r}")
    return parts[0], parts[1]


@torch.no_grad()
def summarize(
    model: EgoVLPv2,
    tokenizer: RobertaTokenizer,
    head: QFVSHead,
    video: str | Path | torch.Tensor,
    query: str | tuple[str, str],
    *,
    budget: float = 0.02,
) -> list[SummaryShot]:
    """The top ``max(1, int(S * budget))`` shots of ``video`` for ``query``, in time order.

    video: a file or decoded shots [S, 5, 3, H, W]; query: ``"c1,c2"``; budget in (0, 1]."""
    if not 0 < budget <= 1:
        raise InputError(f"budget: expected a fraction in (0, 1], got {budget!r}")
    c1, c2 = parse_query(query)
    feats = shot_features(model, tokenizer, video, [(c1, c2)])
    segments = segment_shots(feats.prefix_cls)
    head.eval()
    q = feats.fused[0, PROMPT_QUERY : PROMPT_QUERY + 1].float()
    scores = score_shots(head, q, segments)[0]
    top = top_shots(scores, budget)
    return [
        SummaryShot(i, i * SHOT_SECONDS, (i + 1) * SHOT_SECONDS, float(scores[i]))
        for i in sorted(top)
    ]


def save_qfvs_head(path: str | Path, head: QFVSHead, meta: dict[str, str] | None = None) -> None:
    """Write ``head`` as safetensors (atomically), its feature size in the metadata."""
    from safetensors.torch import save_file

    dim = int(head.projector.in_features)
    info = {"format": _FORMAT, "dim": str(dim), **(meta or {})}
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=info)


def load_qfvs_head(path: str | Path) -> QFVSHead:
    """A head written by :func:`save_qfvs_head` (eval mode)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: not a safetensors QFVS head ({type(exc).__name__})") from exc
    if meta.get("format") != _FORMAT or not meta.get("dim", "").isdigit():
        raise InputError(
            f"{path}: metadata format={meta.get('format')!r}, expected {_FORMAT!r} with a dim"
        )
    head = QFVSHead(int(meta["dim"]))
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit a QFVS head: {exc}") from None
    return head.eval()


def summary_json(shots: list[SummaryShot]) -> str:
    """The shots as a JSON list of ``{"shot", "start", "end", "score"}`` (shot 0-based)."""
    return json.dumps([s.__dict__ for s in shots])
