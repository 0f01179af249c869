"""What the training loop needs from a task: the :class:`TrainingJob` interface.

The loop of :mod:`.trainer` (torchrun/DDP, autocast, gradient clipping, AdamW and its
schedule, resumable safe checkpoints, the metrics CSV, the progress bar, periodic evaluation,
the run-folder lock) knows nothing about data or losses. A job supplies them:

- ``model``: the :class:`~egovlpv2_rt.modeling.model.EgoVLPv2` to train, on the loop's device
  and dtype, in training mode (the loop builds the optimiser from its parameters and
  checkpoints its state dict);
- ``objective``: an ``nn.Module`` whose ``forward(batch)`` runs every model call of a step (so
  one ``DistributedDataParallel`` wrapper sees them all) and returns :class:`StepLossesLike`;
- ``sampler``: the step -> global batch map, resumable (:class:`ResumableSampler`);
- ``batch(step, device, dtype)``: this rank's inputs of global step ``step``;
- ``log_fields`` / ``log_values(losses)``: the task's columns of ``metrics.csv`` (between
  ``loss`` and ``grad_norm``);
- ``evaluate(model, step)``: optional, run on rank 0 only; its dict becomes one line of
  ``eval.jsonl`` (``{"step": step, **result}``).

Pre-training (:class:`~egovlpv2_rt.train.trainer.PretrainJob`) and dual-encoder fine-tuning
(:class:`~egovlpv2_rt.train.finetune.FinetuneJob`) are the two jobs.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..checkpoint import save_safetensors
from ..modeling.model import EgoVLPv2
from .config import OptimConfig

__all__ = ["LoopSettings", "ResumableSampler", "StepLossesLike", "TrainingJob"]


class ResumableSampler(Protocol):
    """A deterministic step -> global batch map (see :class:`.sampler.GlobalBatchSampler`)."""

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of global step ``step``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON values identifying the sampler (saved with each checkpoint)."""
        ...

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` when a checkpoint's sampler differs (a resume would diverge)."""
        ...


class StepLossesLike(Protocol):
    """What ``objective(batch)`` returns: ``total`` drives the backward pass (this rank's
    surrogate, scaled so that DDP's gradient average is the gradient of the global loss);
    ``loss`` is the global loss value logged (detached, identical on every rank)."""

    total: Tensor
    loss: Tensor


class TokenizerLike(Protocol):
    """The tokenizer saved beside the final weights (``tokenizer.json``)."""

    @property
    def vocab_size(self) -> int: ...

    def save(self, path: Any) -> None: ...


class TrainingJob(abc.ABC):
    """A task for :func:`egovlpv2_rt.train.trainer.run_job`.

    Built after the loop has seeded every RNG with the run's seed (the model's initial weights
    are then the same on every rank). Subclasses set ``model``, ``objective``, ``sampler``,
    ``tokenizer`` and ``log_fields`` in ``__init__``.
    """

    model: nn.Module
    objective: nn.Module
    sampler: ResumableSampler
    tokenizer: TokenizerLike
    log_fields: tuple[str, ...] = ()
    # DDP must look for parameters without a gradient when some take no part in a step (the
    # fusion layers in dual-encoder fine-tuning, a loss term that starts later).
    find_unused_parameters: bool = False

    @abc.abstractmethod
    def batch(self, step: int, device: torch.device, dtype: torch.dtype) -> Any:
        """This rank's inputs of global step ``step`` (fed to ``objective``); pixels in
        ``dtype`` on ``device``."""

    def log_values(self, losses: Any) -> Mapping[str, float]:
        """The values of ``log_fields`` for one step's losses (NaN for a term not computed)."""
        return {}

    @property
    def has_evaluation(self) -> bool:
        """Whether :meth:`evaluate` does anything (the loop skips it, and its barrier, if not)."""
        return False

    def evaluate(self, model: nn.Module, step: int) -> Mapping[str, Any]:
        """Evaluate ``model`` (rank 0 only; the loop puts it back in training mode after).
        Returns JSON values for ``eval.jsonl``."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation")

    def save_weights(self, model: nn.Module, path: Path, step: int) -> None:
        """Write the final weights (rank 0, after the last step): an EgoVLPv2 as a
        self-describing safetensors file; a job whose model wraps one (a task head) overrides
        this."""
        if not isinstance(model, EgoVLPv2):
            raise TypeError(f"{type(self).__name__}: override save_weights for a {type(model)}")
        save_safetensors(model, path, metadata={"steps": str(step)})


@dataclass
class LoopSettings:
    """How the loop runs, whatever the job.

    Attributes:
        out_dir: run folder (``metrics.csv``, ``eval.jsonl``, ``checkpoints/``, final
            ``model.safetensors`` and ``tokenizer.json``).
        seed: seeds every RNG before the job is built, and each rank's dropout stream.
        max_steps: optimiser steps of the whole run.
        checkpoint_every, log_every: in steps (the log is flushed every ``log_every`` steps).
        eval_every: evaluate every this many steps (0: only after the last step).
        amp: ``auto`` (bf16 autocast on CUDA), ``bf16`` or ``off``.
        precision: ``float32`` or ``float64`` parameters and activations.
        deterministic: ``torch.use_deterministic_algorithms``.
        num_threads: intra-op CPU threads (0: PyTorch's default).
        progress: a tqdm bar on rank 0.
        optim: AdamW groups, warm-up + cosine schedule over ``max_steps``, gradient clip.
        config: the experiment as plain JSON values (written to ``config.json`` and into each
            checkpoint).
    """

    out_dir: str
    seed: int
    max_steps: int
    optim: OptimConfig
    checkpoint_every: int = 50
    log_every: int = 10
    eval_every: int = 0
    amp: str = "auto"
    precision: str = "float32"
    deterministic: bool = False
    num_threads: int = 0
    progress: bool = True
    config: dict[str, Any] = field(default_factory=dict)
