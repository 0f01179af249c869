"""A compact anchor-free temporal detection head for Ego4D moment queries (EgoMQ).

The original trains the Ego4D VSGN baseline on the clip features (see the README for pointing
it at our feature folder). This head is a small built-in alternative in the style of FCOS /
ActionFormer, CPU-fast, so the pipeline runs end to end without another repository:

- input: one clip's feature sequence ``[N, C]`` float32 (``C`` = 4096 for the original
  checkpoint's MQ features, one row per 16-frame window, ~1.87 rows per second);
- LayerNorm + Linear ``C -> hidden``, ``num_layers`` residual temporal conv blocks (kernel 3,
  LayerNorm over channels, GELU), then a pyramid of ``num_levels`` levels, each level a 2x max
  pool of the previous one followed by one more block: position ``j`` of level ``l`` covers
  windows ``[j, j + 1) * 2**l`` (centre ``(j + 0.5) * 2**l`` in window units);
- per position, heads shared over the levels: class logits ``[K]`` (sigmoid, focal loss) and
  the distances to the moment's start and end in window units (``softplus * 2**l``, 1-D GIoU
  loss). Level ``l`` learns the positions whose larger distance lies in
  ``[regression_base * 2**(l-1), regression_base * 2**l)`` (level 0 from 0, the last level
  without an upper bound), as ActionFormer's regression ranges.

Windows map to seconds by the clip's own rate: ``x`` windows = ``x * duration / N`` seconds.
Training, decoding and evaluation are in :mod:`.mq_train` and :mod:`.mq_targets`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ...errors import InputError, UnsafeFileError
from ...files import atomic_output, atomic_write_text

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "MQClip",
    "MQHead",
    "MQHeadConfig",
    "load_clip_features",
    "load_mq_head",
    "pad_features",
    "save_mq_head",
]

WEIGHTS_NAME = "mq_head.safetensors"
CONFIG_NAME = "mq_head.json"
_META_KEY = "egovlpv2_mq_head"


@dataclass(frozen=True)
class MQClip:
    """One clip of the MQ metadata: its id, length in seconds and the annotated moments
    ``(label, start_s, end_s)`` in clip-relative seconds."""

    clip_uid: str
    duration: float
    moments: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.clip_uid, str) or not self.clip_uid:
            raise InputError(f"MQClip.clip_uid must be a non-empty string, got {self.clip_uid!r}")
        if not (isinstance(self.duration, (int, float)) and math.isfinite(self.duration)):
            raise InputError(f"clip {self.clip_uid}: duration must be a finite number")
        if self.duration <= 0:
            raise InputError(f"clip {self.clip_uid}: duration must be > 0, got {self.duration}")
        for i, m in enumerate(self.moments):
            if len(m) != 3 or not isinstance(m[0], str):
                raise InputError(
                    f"clip {self.clip_uid}: moments[{i}] must be (label, start_s, end_s), got {m!r}"
                )
            s, e = m[1], m[2]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (s, e)):
                raise InputError(f"clip {self.clip_uid}: moments[{i}] times must be finite: {m!r}")
            if e < s:
                raise InputError(f"clip {self.clip_uid}: moments[{i}] ends before it starts: {m!r}")


@dataclass
class MQHeadConfig:
    """Architecture, optimisation and decoding settings of the MQ head.

    ``batch_size`` is per process (under ``torchrun`` a step sees ``batch_size * world`` clips).
    Decoding: positions/classes scoring above ``score_threshold``, at most ``pre_nms_top_k`` per
    clip, per-class NMS (``"hard"``: drop tIoU > ``nms_threshold``; ``"soft"``: Gaussian
    soft-NMS, score * exp(-tIoU^2 / ``soft_nms_sigma``)), then the ``max_detections`` best.
    """

    hidden_dim: int = 128
    num_layers: int = 2
    num_levels: int = 3
    regression_base: float = 4.0
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 8
    grad_clip: float = 1.0
    seed: int = 21
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_weight: float = 1.0
    score_threshold: float = 1e-3
    pre_nms_top_k: int = 2000
    nms_mode: str = "soft"
    nms_threshold: float = 0.5
    soft_nms_sigma: float = 0.5
    max_detections: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                raise InputError(f"MQHeadConfig.{f.name} must be an int, got {v!r}")
            if f.type in ("float", float) and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            ):
                raise InputError(f"MQHeadConfig.{f.name} must be a finite number, got {v!r}")
        positive = ("hidden_dim", "num_levels", "epochs", "batch_size", "pre_nms_top_k")
        for name in (*positive, "max_detections", "lr", "regression_base", "soft_nms_sigma"):
            if getattr(self, name) <= 0:
                raise InputError(f"MQHeadConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("num_layers", "weight_decay", "grad_clip", "focal_gamma", "reg_weight"):
            if getattr(self, name) < 0:
                raise InputError(f"MQHeadConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "focal_alpha", "score_threshold", "nms_threshold"):
            if not 0 <= getattr(self, name) < 1:
                raise InputError(
                    f"MQHeadConfig.{name} must lie in [0, 1), got {getattr(self, name)}"
                )
        if self.nms_mode not in ("hard", "soft"):
            raise InputError(
                f"MQHeadConfig.nms_mode must be 'hard' or 'soft', got {self.nms_mode!r}"
            )
        if self.num_levels > 8:
            raise InputError(f"MQHeadConfig.num_levels must be <= 8, got {self.num_levels}")

    @property
    def pad_multiple(self) -> int:
        """Sequences are padded to a multiple of this so every pooling level divides evenly."""
        return 2 ** (self.num_levels - 1)

    def level_ranges(self) -> list[tuple[float, float]]:
        """``[lo, hi)`` of the larger regression distance (window units) each level learns."""
        b = self.regression_base
        return [
            (
                0.0 if lvl == 0 else b * 2 ** (lvl - 1),
                math.inf if lvl == self.num_levels - 1 else b * 2**lvl,
            )
            for lvl in range(self.num_levels)
        ]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object], *, source: str = "config") -> MQHeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown MQ head setting(s) {unknown}")
        return cls(**data)  # type: ignore[arg-type]


class _Block(nn.Module):
    """Residual temporal conv: ``x + drop(GELU(conv(LN(x))))`` on ``[B, H, T]``; padded
    positions stay 0."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # Every conv input is masked: padding then reads as the zeros beyond a clip's end, so a
        # clip gives the same outputs alone and in a padded batch.
        y = self.norm(x.transpose(1, 2)).transpose(1, 2) * mask[:, None, :]
        y = self.drop(F.gelu(self.conv(y)))
        return (x + y) * mask[:, None, :]


class _Head(nn.Module):
    def __init__(self, dim: int, out: int, bias: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, out, 3, padding=1)
        nn.init.normal_(self.conv2.weight, std=0.01)
        assert self.conv2.bias is not None
        nn.init.constant_(self.conv2.bias, bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask[:, None, :]
        y = F.gelu(self.conv1(self.norm(x.transpose(1, 2)).transpose(1, 2) * m))
        return self.conv2(y * m)


class MQHead(nn.Module):
    """The detection head. ``labels`` are the class names in logit order."""

    def __init__(self, in_dim: int, labels: Sequence[str], config: MQHeadConfig) -> None:
        super().__init__()
        if in_dim < 1:
            raise InputError(f"MQHead in_dim must be >= 1, got {in_dim}")
        if not labels or len(set(labels)) != len(labels):
            raise InputError(f"MQHead labels must be non-empty and distinct, got {list(labels)}")
        self.in_dim = int(in_dim)
        self.labels = tuple(str(x) for x in labels)
        self.config = config
        h = config.hidden_dim
        self.in_norm = nn.LayerNorm(in_dim)
        self.in_proj = nn.Linear(in_dim, h)
        self.stem = nn.ModuleList(_Block(h, config.dropout) for _ in range(config.num_layers))
        self.down = nn.ModuleList(_Block(h, config.dropout) for _ in range(config.num_levels - 1))
        prior = 0.01  # initial foreground probability: keeps the focal loss stable at step 0
        self.cls_head = _Head(h, len(self.labels), bias=-math.log((1 - prior) / prior))
        self.reg_head = _Head(h, 2)

    def forward(
        self, feats: Tensor, mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per-level outputs for a padded batch.

        Args:
            feats: ``[B, T, C]`` float32, ``T`` a multiple of ``config.pad_multiple``.
            mask: ``[B, T]`` float32, 1 on real windows, 0 on padding.

        Returns:
            ``(logits, distances, masks)``, one entry per level ``l``: class logits
            ``[B, T / 2**l, K]``, start/end distances ``[B, T / 2**l, 2]`` (window units, >= 0)
            and the level's validity mask ``[B, T / 2**l]`` (a position is valid when it covers
            at least one real window).
        """
        if feats.ndim != 3 or feats.shape[-1] != self.in_dim:
            raise InputError(
                f"MQHead expects features [B, T, {self.in_dim}], got {tuple(feats.shape)}"
            )
        if feats.shape[1] % self.config.pad_multiple:
            raise InputError(
                f"MQHead needs T a multiple of {self.config.pad_multiple}, got {feats.shape[1]}"
            )
        x = self.in_proj(self.in_norm(feats)).transpose(1, 2) * mask[:, None, :]
        for block in self.stem:
            x = block(x, mask)
        logits, dists, masks = [], [], []
        m = mask
        for lvl in range(self.config.num_levels):
            if lvl > 0:
                x = F.max_pool1d(x, 2, 2)
                m = F.max_pool1d(m[:, None, :], 2, 2)[:, 0]
                x = self.down[lvl - 1](x * m[:, None, :], m)
            logits.append(self.cls_head(x, m).transpose(1, 2))
            dists.append(F.softplus(self.reg_head(x, m)).transpose(1, 2) * float(2**lvl))
            masks.append(m)
        return logits, dists, masks


def pad_features(seqs: Sequence[Tensor], multiple: int) -> tuple[Tensor, Tensor]:
    """Stack ``[N_i, C]`` sequences into ``[B, T, C]`` zero-padded (``T`` = the longest
    rounded up to ``multiple``) and a ``[B, T]`` float mask."""
    longest = max(int(s.shape[0]) for s in seqs)
    t = -(-longest // multiple) * multiple
    feats = seqs[0].new_zeros((len(seqs), t, seqs[0].shape[1]))
    mask = seqs[0].new_zeros((len(seqs), t))
    for i, s in enumerate(seqs):
        feats[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1.0
    return feats, mask


# -- files ----------------------------------------------------------------------------------


def load_clip_features(folder: Path | str, clip_uid: str, *, dim: int | None = None) -> Tensor:
    """Read ``{folder}/{clip_uid}.pt`` (``torch.save`` of a ``[N, C]`` float tensor, as the
    original's ``test_mq.py`` writes) with ``torch.load(weights_only=True)``.

    Returns:
        ``[N, C]`` float32 on the CPU.

    Raises:
        InputError: missing file, not a tensor, not 2-D, not floating point, no row,
            non-finite values, or ``C != dim``; the message names the file.
        UnsafeFileError: the file would need code to run to be unpickled.
    """
    path = Path(folder) / f"{clip_uid}.pt"
    if not path.is_file():
        raise InputError(f"{path}: MQ feature file of clip {clip_uid} not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise InputError(
            f"{path}: not a torch.save file (not a zip archive); expected a [N, C] tensor"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UnsafeFileError(
            f"{path}: refused, loading it would run code from the file ({reason}); save the "
            "features as a plain tensor with torch.save(tensor)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a non-torch file
        raise InputError(
            f"{path}: not a torch.save file ({type(exc).__name__}); expected a [N, C] tensor"
        ) from None
    if not isinstance(obj, Tensor):
        raise InputError(f"{path}: expected a [N, C] float tensor, got {type(obj).__name__}")
    if obj.ndim != 2 or obj.shape[0] < 1:
        raise InputError(
            f"{path}: expected a [N, C] tensor with N >= 1, got shape {tuple(obj.shape)}"
        )
    if not obj.is_floating_point():
        raise InputError(f"{path}: expected a floating-point tensor, got {obj.dtype}")
    if dim is not None and obj.shape[1] != dim:
        raise InputError(f"{path}: expected feature dim {dim}, got {obj.shape[1]}")
    out = obj.to(torch.float32).contiguous()
    if not bool(torch.isfinite(out).all()):
        raise InputError(f"{path}: features contain NaN or infinite values")
    return out


def save_mq_head(
    model: MQHead, out_dir: Path | str, *, extra: dict[str, object] | None = None
) -> Path:
    """Write ``mq_head.safetensors`` (weights; metadata: config, labels, input dim) and
    ``mq_head.json`` (the same plus ``extra``, e.g. the training log), both atomically.
    Returns the weights path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    desc = {"in_dim": model.in_dim, "labels": list(model.labels), "config": model.config.to_dict()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    with atomic_output(weights) as tmp:
        save_file(tensors, os.fspath(tmp), metadata={"format": "pt", _META_KEY: json.dumps(desc)})
    atomic_write_text(out / CONFIG_NAME, json.dumps({**desc, **(extra or {})}, indent=2) + "\n")
    return weights


def load_mq_head(path: Path | str) -> MQHead:
    """Load a head :func:`save_mq_head` wrote: ``path`` is the ``mq_head.safetensors`` file or
    its folder. Safetensors only; the model is returned in eval mode on the CPU."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if p.suffix != ".safetensors":
        raise InputError(f"{p}: an MQ head is loaded from a .safetensors file only")
    if not p.is_file():
        raise InputError(f"{p}: MQ head weights not found")
    try:
        with safe_open(os.fspath(p), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise InputError(f"{p}: not a readable safetensors file ({exc})") from None
    if _META_KEY not in meta:
        raise InputError(f"{p}: no {_META_KEY} metadata; not an MQ head written by save_mq_head")
    try:
        desc = json.loads(meta[_META_KEY])
        config = MQHeadConfig.from_dict(desc["config"], source=str(p))
        model = MQHead(int(desc["in_dim"]), desc["labels"], config)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: malformed {_META_KEY} metadata ({exc})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"{p}: weights do not fit the head described in its metadata ({exc})"
        ) from None
    return model.eval()
