"""EgoMCQ evaluation of an EgoVLPv2 model in dual, fusion and ensemble modes.

- dual: cosine similarity of the query's text embedding with each candidate's video embedding;
- fusion: the VTM "match" probability ``softmax(vtm_logits)[:, 1]`` of (candidate, query);
- ensemble: their sum, as the original's validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.clips import ClipReader
from ..data.egomcq import MCQItem, read_egomcq
from ..modeling.model import EgoVLPv2, sim_matrix
from ..video.reader import Backend
from .metrics import egomcq_accuracy

__all__ = ["MODES", "EgoMCQResult", "evaluate_egomcq", "score_egomcq"]

MODES = ("dual", "fusion", "ensemble")


@dataclass
class EgoMCQResult:
    """Accuracy (percent) per mode and type, plus the raw scores ``[Q, C]`` per mode."""

    accuracy: dict[str, dict[str, float]]
    scores: dict[str, Tensor] = field(repr=False)
    answers: Tensor = field(repr=False)
    types: Tensor = field(repr=False)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return self.accuracy


@torch.no_grad()
def score_egomcq(
    model: EgoVLPv2,
    items: Sequence[MCQItem],
    reader: ClipReader,
    tokenizer,
    *,
    max_length: int,
    batch_size: int = 8,
    modes: Sequence[str] = MODES,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Scores ``[Q, C]`` float64 per requested mode (higher = better match).

    Args:
        model: the model (put in eval mode here).
        items: the questions.
        reader: reads candidate clips (use uniform sampling).
        tokenizer: ``RobertaTokenizer``.
        max_length: caption length.
        batch_size: questions per forward pass.
        modes: subset of :data:`MODES`.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; choose from {MODES}")
    need_dual = any(m in ("dual", "ensemble") for m in modes)
    need_fusion = any(m in ("fusion", "ensemble") for m in modes)
    model.eval()
    p = next(model.parameters())
    dev, dtype = p.device, p.dtype
    dual, fusion = [], []
    rng = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc="egomcq", unit="batch")
    for start in rng:
        chunk = items[start : start + batch_size]
        n_c = len(chunk[0].choices)
        if any(len(it.choices) != n_c for it in chunk):
            raise ValueError("every question must have the same number of choices")
        video = torch.stack([reader.read(c) for it in chunk for c in it.choices])
        video = video.to(device=dev, dtype=dtype)
        tok = tokenizer(
            [it.text for it in chunk], max_length=max_length, padding="max_length", truncation=True
        )
        ids = tok["input_ids"].to(dev)
        am = tok["attention_mask"].to(dev)
        q = len(chunk)
        if need_dual:
            t = model.encode_text(ids, am)
            v = model.encode_video(video).reshape(q, n_c, -1)
            sims = torch.stack([sim_matrix(t[i : i + 1], v[i])[0] for i in range(q)])
            dual.append(sims.double().cpu())
        if need_fusion:
            logits = model.vtm_logits(
                video, ids.repeat_interleave(n_c, 0), am.repeat_interleave(n_c, 0)
            )
            prob = F.softmax(logits.double(), dim=-1)[:, 1].reshape(q, n_c)
            fusion.append(prob.cpu())
    out: dict[str, Tensor] = {}
    if "dual" in modes:
        out["dual"] = torch.cat(dual)
    if "fusion" in modes:
        out["fusion"] = torch.cat(fusion)
    if "ensemble" in modes:
        out["ensemble"] = torch.cat(dual) + torch.cat(fusion)
    return out


def evaluate_egomcq(
    model: EgoVLPv2,
    egomcq: str | Path | Sequence[MCQItem],
    video_dir: str | Path,
    tokenizer,
    *,
    num_frames: int | None = None,
    max_length: int = 16,
    batch_size: int = 8,
    modes: Sequence[str] = MODES,
    backend: Backend = "pyav",
    progress: bool = False,
) -> EgoMCQResult:
    """Accuracy on an EgoMCQ file (or parsed questions) in the requested modes.

    Returns:
        :class:`EgoMCQResult` with ``accuracy[mode] = {"inter": %, "intra": %, ...}``.
    """
    items = read_egomcq(egomcq) if isinstance(egomcq, (str, Path)) else list(egomcq)
    vc = model.config.video
    reader = ClipReader(
        video_dir,
        num_frames=num_frames or vc.num_frames,
        image_size=vc.img_size,
        sampling="uniform",
        backend=backend,
        cache_size=0,
    )
    scores = score_egomcq(
        model,
        items,
        reader,
        tokenizer,
        max_length=max_length,
        batch_size=batch_size,
        modes=modes,
        progress=progress,
    )
    answers = torch.tensor([it.answer for it in items])
    types = torch.tensor([it.type for it in items])
    acc = {m: egomcq_accuracy(s, answers, types) for m, s in scores.items()}
    return EgoMCQResult(acc, scores, answers, types)
