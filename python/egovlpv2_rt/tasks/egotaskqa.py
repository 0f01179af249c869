"""EgoTaskQA video question answering: the QA model on EgoVLPv2, its clips and its evaluation.

The original (``EgoTaskQA/model/video_qa_model_linear_end2end.py``) runs 16 frames and the
question (``.strip().lower()``, 30 tokens) through the fusion path of the backbone and classifies
the fused video CLS (``norm(video)[:, 0]``, D) over the whole answer vocabulary A with
``Linear(D, A) -> ReLU -> Dropout(0.2) -> Linear(A, A)``; yes/no are two of its entries. The
whole backbone is fine-tuned with cross-entropy.

``encoder='dual'`` is the comparison the fusion claim needs: the same head on the dual
encoder's features, ``concat(video CLS [B, D], text CLS [B, H])`` (no fusion layer runs).

Clips: ``{interval}.mp4`` whole, ``sampling='uniform'`` (segment midpoints) at evaluation and
``'rand'`` (one random frame per segment, seeded from (seed, epoch, index)) in training. The
original samples randomly for every split; evaluation here is deterministic. Its transform is
the test transform for every split (``Resize(256) + CenterCrop(256) + Resize(224)``, ImageNet
normalisation; sizes scaled by ``S / 224`` for a model of input size S), no augmentation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..checkpoint import CONFIG_METADATA_KEY, load_checkpoint, read_checkpoint
from ..config import ModelConfig
from ..errors import InputError
from ..eval.taskqa import taskqa_accuracy
from ..files import atomic_output
from ..modeling.model import EgoVLPv2
from ..tokenizer import RobertaTokenizer
from ..video.reader import Backend, read_clip
from .charades_clips import eval_transform
from .egotaskqa_data import TaskQASplit, load_taskqa_split

__all__ = [
    "MAX_QUESTION_LENGTH",
    "NUM_FRAMES",
    "Encoder",
    "TaskQAModel",
    "evaluate_egotaskqa",
    "load_taskqa_model",
    "predict_answers",
    "question_text",
    "read_qa_clip",
    "save_taskqa_model",
]

Encoder = Literal["fusion", "dual"]
NUM_FRAMES = 16
MAX_QUESTION_LENGTH = 30
# safetensors metadata key of the QA head's settings.
HEAD_METADATA_KEY = "egotaskqa_head"
HEAD_PREFIX = "qa_head."


def question_text(question: str) -> str:
    """The question as the original tokenises it: stripped, lower-cased."""
    return question.strip().lower()


def question_length(model: EgoVLPv2, max_text_length: int = MAX_QUESTION_LENGTH) -> int:
    """``max_text_length`` (30) tokens, capped at the model's text length."""
    return min(max_text_length, model.config.text.max_text_length)


class TaskQAModel(nn.Module):
    """EgoVLPv2 with the EgoTaskQA answer classifier.

    Args:
        backbone: the EgoVLPv2 (fusion layers and the ITM head needed for ``fusion``).
        num_answers: A, the answer vocabulary's size.
        encoder: ``fusion`` (the original) or ``dual``.
        dropout: the head's dropout (0.2 in the original).
    """

    def __init__(
        self,
        backbone: EgoVLPv2,
        num_answers: int,
        encoder: Encoder = "fusion",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if encoder not in ("fusion", "dual"):
            raise InputError(f"encoder must be 'fusion' or 'dual', got {encoder!r}")
        if num_answers < 2:
            raise InputError(f"num_answers must be >= 2, got {num_answers}")
        self.backbone = backbone
        self.encoder: Encoder = encoder
        self.num_answers = num_answers
        self.dropout = dropout
        d = backbone.config.video.embed_dim
        width = d if encoder == "fusion" else d + backbone.config.text.hidden_size
        self.qa_head = nn.Sequential(
            nn.Linear(width, num_answers),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(num_answers, num_answers),
        )
        p = next(backbone.parameters())
        self.qa_head.to(device=p.device, dtype=p.dtype)

    @property
    def config(self) -> ModelConfig:
        """The backbone's config (the trainer stores it with each checkpoint)."""
        return self.backbone.config

    def head_settings(self) -> dict[str, object]:
        return {"num_answers": self.num_answers, "encoder": self.encoder, "dropout": self.dropout}

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """video ``[B, F, 3, S, S]`` float; input_ids, attention_mask ``[B, L]`` int64 ->
        answer logits ``[B, A]``."""
        if self.encoder == "fusion":
            cls = self.backbone.forward_fusion(video, input_ids, attention_mask, task="itm")
            assert cls.video_cls is not None
            feats = cls.video_cls
        else:
            v = self.backbone.forward_video(video).features
            t = self.backbone.forward_text(input_ids, attention_mask).features
            feats = torch.cat([v, t], dim=-1)
        return self.qa_head(feats)


def save_taskqa_model(model: TaskQAModel, path: str | Path, **metadata: str) -> None:
    """A self-describing safetensors file: the backbone's keys as ``save_safetensors`` writes
    them, the head's under ``qa_head.``, the backbone config and the head settings in the
    metadata. Atomic."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.backbone.state_dict().items()}
    for k, v in model.qa_head.state_dict().items():
        tensors[HEAD_PREFIX + k] = v.detach().to("cpu").contiguous()
    meta = {
        "format": "pt",
        CONFIG_METADATA_KEY: model.backbone.config.to_json(),
        HEAD_METADATA_KEY: json.dumps(model.head_settings()),
        **{str(k): str(v) for k, v in metadata.items()},
    }
    with atomic_output(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=meta)


def load_taskqa_model(
    path: str | Path, *, device: torch.device | str = "cpu", attention_impl: str = "auto"
) -> TaskQAModel:
    """Read a :func:`save_taskqa_model` file (eval mode)."""
    p = Path(path)
    state, stored = read_checkpoint(p)
    with safe_open(str(p), framework="pt") as handle:
        meta = handle.metadata() or {}
    if stored is None or HEAD_METADATA_KEY not in meta:
        raise InputError(f"{p}: not an EgoTaskQA model file (no {HEAD_METADATA_KEY} metadata)")
    try:
        head = json.loads(meta[HEAD_METADATA_KEY])
        num_answers, encoder, dropout = head["num_answers"], head["encoder"], head["dropout"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{p}: bad {HEAD_METADATA_KEY} metadata ({e})") from None
    backbone = EgoVLPv2(stored, attention_impl=attention_impl)
    head_state = {k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    load_checkpoint(
        backbone,
        {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)},
        source=str(p),
    )
    model = TaskQAModel(backbone, int(num_answers), encoder, float(dropout))
    model.qa_head.load_state_dict(head_state)
    return model.to(device).eval()


def clip_seed(seed: int, epoch: int, index: int) -> int:
    """The frame-draw seed of training item ``index`` in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def read_qa_clip(
    path: str | Path,
    *,
    num_frames: int,
    size: int,
    train: bool,
    seed: int | None = None,
    backend: Backend = "pyav",
) -> Tensor:
    """One question's clip, ``[F, 3, size, size]`` float32: the whole video, random frames per
    segment (``train``, seeded) or segment midpoints; the test transform either way."""
    return read_clip(
        str(path),
        num_frames=num_frames,
        sampling="rand" if train else "uniform",
        backend=backend,
        transform=eval_transform(size),
        seed=seed if train else None,
    )


@torch.no_grad()
def predict_answers(
    model: TaskQAModel,
    split: TaskQASplit,
    tokenizer: RobertaTokenizer,
    *,
    batch_size: int = 8,
    backend: Backend = "pyav",
    indices: Sequence[int] | None = None,
    max_text_length: int = MAX_QUESTION_LENGTH,
) -> Tensor:
    """Answer indices ``[N]`` int64 of the split's questions (deterministic clips)."""
    model.eval()
    cfg = model.backbone.config
    p = next(model.parameters())
    length = question_length(model.backbone, max_text_length)
    idx = list(range(len(split))) if indices is None else list(indices)
    out = []
    for b in range(0, len(idx), batch_size):
        items = [split.items[i] for i in idx[b : b + batch_size]]
        video = torch.stack(
            [
                read_qa_clip(
                    split.video_path(it),
                    num_frames=cfg.video.num_frames,
                    size=cfg.video.img_size,
                    train=False,
                    backend=backend,
                )
                for it in items
            ]
        )
        tok = tokenizer(
            [question_text(it.question) for it in items],
            max_length=length,
            padding="max_length",
            truncation=True,
        )
        logits = model(
            video.to(device=p.device, dtype=p.dtype),
            tok["input_ids"].to(p.device),
            tok["attention_mask"].to(p.device),
        )
        out.append(logits.argmax(dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def evaluate_egotaskqa(
    model: TaskQAModel,
    data_dir: str | Path,
    split: str,
    tokenizer: RobertaTokenizer,
    *,
    video_root: str | Path | None = None,
    batch_size: int = 8,
    backend: Backend = "pyav",
    max_text_length: int = MAX_QUESTION_LENGTH,
) -> dict[str, float]:
    """Accuracy (percent) of ``model`` on split ``split`` of ``data_dir``: ``All``, ``Open``,
    ``Binary`` and one entry per tag of ``all_reasoning_types.txt``. Frames are sampled
    uniformly (the same numbers on every run).

    ``video_root``: the clip folder (default ``{data_dir}/videos``); ``max_text_length``: the
    question tokens (that of training; capped at the model's text length).
    """
    data = load_taskqa_split(data_dir, split, video_root)
    if model.num_answers != len(data.answers):
        raise InputError(
            f"the model answers over {model.num_answers} entries, {data_dir}/answer_set.txt "
            f"has {len(data.answers)}"
        )
    pred = predict_answers(
        model,
        data,
        tokenizer,
        batch_size=batch_size,
        backend=backend,
        max_text_length=max_text_length,
    )
    target = torch.tensor([it.answer for it in data.items], dtype=torch.int64)
    return taskqa_accuracy(pred, target, data.items, data.reasoning_types)
