"""Typed configuration of dual-encoder fine-tuning (EK-100 MIR, Charades-Ego), read from JSON
or YAML with the same strict loader as pre-training: an unknown key, a wrong type or a bad
value raises :class:`~.config.ConfigError` naming the file, the dotted key, what was expected
and the value.

.. code-block:: yaml

    task: ek100_mir
    model: {init_checkpoint: ckpt/EgoVLPv2_smallproj.pth, preset: base-smallproj,
            tokenizer: ckpt/roberta-base}
    data: {root: data/epic-kitchens-100, num_frames: 16, image_size: 224, max_text_length: 30}
    optim: {lr: 2.0e-4, weight_decay: 0.01, warmup_fraction: 0.1}
    loss: {name: max_margin, margin: 0.2}
    epochs: 100
    global_batch_size: 128
    out_dir: runs/ek100_mir

The shipped recipes are ``egovlpv2_rt/configs/finetune/{ek100_mir,charades_ego}.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..video.reader import Backend
from .config import ConfigError, OptimConfig, build_config, read_config_mapping

__all__ = [
    "FinetuneConfig",
    "FinetuneData",
    "FinetuneEval",
    "FinetuneLoss",
    "FinetuneModel",
    "FinetuneOptim",
    "finetune_config_from_dict",
    "load_finetune_config",
]

PairLossName = Literal["max_margin", "infonce"]


@dataclass
class FinetuneModel:
    """Where the weights start and how the model runs.

    Attributes:
        init_checkpoint: a released ``.pth`` or a safetensors file (required; ``default``: the
            model shipped with the package). Its 4-frame
            temporal embedding is resized to ``data.num_frames`` as the checkpoint loader does.
        preset: the model preset of a file that stores no config (a released ``.pth``, e.g.
            ``base-smallproj``); ignored when the file stores its config.
        tokenizer: ``tokenizer.json``, or a folder with it or ``vocab.json`` + ``merges.txt``
            (required; ``default``: the shipped model's).
        attention_impl: ``auto`` | ``fused`` | ``reference``.
        gradient_checkpointing: recompute each block in the backward pass (the original's
            fine-tuning uses it).
    """

    init_checkpoint: str = ""
    preset: str = ""
    tokenizer: str = ""
    attention_impl: str = "auto"
    gradient_checkpointing: bool = False


@dataclass
class FinetuneData:
    """The task's data.

    Attributes:
        root: the task's data folder (the task reads it; e.g. EK-100's annotations and videos).
        num_frames: frames per clip (16 for EK-100, 32 for Charades-Ego).
        image_size: square input side (224; the model's ``video.img_size``).
        max_text_length: captions are padded / truncated to this many tokens.
        backend: video backend name.
    """

    root: str = ""
    num_frames: int = 16
    image_size: int = 224
    max_text_length: int = 30
    backend: Backend = "pyav"


@dataclass
class FinetuneOptim:
    """AdamW with the original's parameter groups (:func:`.optim.param_groups`); a linear
    warm-up over ``warmup_fraction`` of the run, then cosine to ``min_lr_ratio`` (the original's
    ``get_cosine_schedule_with_warmup(0.1 * max_steps, max_steps)`` with the defaults)."""

    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    lr_mult_head: float = 1.0
    lr_mult_cross_modal: float = 1.0
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0

    def build(self, total_steps: int) -> OptimConfig:
        """The :class:`~.config.OptimConfig` of a run of ``total_steps`` steps (the warm-up
        rounded down to whole steps)."""
        return OptimConfig(
            lr=self.lr,
            weight_decay=self.weight_decay,
            betas=self.betas,
            eps=self.eps,
            lr_mult_head=self.lr_mult_head,
            lr_mult_cross_modal=self.lr_mult_cross_modal,
            warmup_steps=int(self.warmup_fraction * total_steps),
            min_lr_ratio=self.min_lr_ratio,
            grad_clip=self.grad_clip,
        )


@dataclass
class FinetuneLoss:
    """``max_margin``: the adaptive max-margin ranking loss (EK-100 MIR; ``margin`` scaled by
    each pair's relevancy weight); ``infonce``: symmetric InfoNCE at ``temperature``
    (Charades-Ego's NormSoftmaxLoss). Both over the batch gathered across ranks."""

    name: PairLossName = "max_margin"
    margin: float = 0.2
    temperature: float = 0.05


@dataclass
class FinetuneEval:
    """The task's evaluation: every ``every_steps`` steps (0: only after the last step);
    ``enabled: false`` skips it."""

    enabled: bool = True
    every_steps: int = 0
    batch_size: int = 16


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Exactly one of ``max_steps`` and ``epochs`` is > 0; an epoch is
    ``len(train items) // global_batch_size`` steps (the last partial batch is dropped)."""

    task: str = ""
    model: FinetuneModel = field(default_factory=FinetuneModel)
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    loss: FinetuneLoss = field(default_factory=FinetuneLoss)
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    out_dir: str = "runs/finetune"
    seed: int = 0
    global_batch_size: int = 128
    max_steps: int = 0
    epochs: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    amp: str = "auto"
    precision: str = "float32"
    deterministic: bool = False
    progress: bool = True
    num_threads: int = 0

    def validate(self, where: str = "config") -> None:
        """Range checks that the dataclass types alone do not express."""

        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                value: Any = self
                for part in key.split("."):
                    value = getattr(value, part)
                raise ConfigError(f"{where}: {key}: {msg}, got {value!r}")

        need(bool(self.task), "task", "must name the task (e.g. 'ek100_mir', 'charades_ego')")
        need(bool(self.model.init_checkpoint), "model.init_checkpoint", "is required")
        need(bool(self.model.tokenizer), "model.tokenizer", "is required")
        need(
            self.model.attention_impl in ("auto", "fused", "reference"),
            "model.attention_impl",
            "must be 'auto', 'fused' or 'reference'",
        )
        need(self.data.num_frames >= 1, "data.num_frames", "must be >= 1")
        need(self.data.image_size >= 1, "data.image_size", "must be >= 1")
        need(
            self.data.max_text_length >= 2,
            "data.max_text_length",
            "must be >= 2 (room for <s> and </s>)",
        )
        need(self.optim.lr > 0, "optim.lr", "must be > 0")
        need(self.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        need(all(0 <= b < 1 for b in self.optim.betas), "optim.betas", "must both be in [0, 1)")
        need(self.optim.eps > 0, "optim.eps", "must be > 0")
        need(self.optim.lr_mult_head > 0, "optim.lr_mult_head", "must be > 0")
        need(self.optim.lr_mult_cross_modal > 0, "optim.lr_mult_cross_modal", "must be > 0")
        need(0 <= self.optim.warmup_fraction < 1, "optim.warmup_fraction", "must be in [0, 1)")
        need(0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        need(self.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0: off)")
        need(self.loss.margin >= 0, "loss.margin", "must be >= 0")
        need(self.loss.temperature > 0, "loss.temperature", "must be > 0")
        need(self.eval.every_steps >= 0, "eval.every_steps", "must be >= 0 (0: at the end only)")
        need(self.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
        need(self.global_batch_size >= 2, "global_batch_size", "must be >= 2 (negatives)")
        need(self.max_steps >= 0, "max_steps", "must be >= 0")
        need(self.epochs >= 0, "epochs", "must be >= 0")
        need(
            (self.max_steps > 0) != (self.epochs > 0),
            "epochs",
            f"exactly one of max_steps ({self.max_steps}) and epochs must be > 0",
        )
        need(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.num_threads >= 0, "num_threads", "must be >= 0 (0: the default)")
        need(self.amp in ("auto", "bf16", "off"), "amp", "must be 'auto', 'bf16' or 'off'")
        need(
            self.precision in ("float32", "float64"),
            "precision",
            "must be 'float32' or 'float64' (parameters and activations)",
        )

    def total_steps(self, num_items: int) -> int:
        """Optimiser steps of the run on ``num_items`` training items."""
        if self.max_steps > 0:
            return self.max_steps
        per_epoch = num_items // self.global_batch_size
        if per_epoch < 1:
            raise ValueError(
                f"{num_items} training items make no global batch of {self.global_batch_size}"
            )
        return self.epochs * per_epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finetune_config_from_dict(data: dict[str, Any], where: str = "config") -> FinetuneConfig:
    """Build and validate a :class:`FinetuneConfig` from a plain mapping."""
    cfg = build_config(FinetuneConfig, data, where)
    cfg.validate(where)
    return cfg


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) fine-tuning file.

    Raises:
        ConfigError: unreadable file, unknown key (named with its dotted path) or a bad value.
    """
    return finetune_config_from_dict(read_config_mapping(path), str(path))
