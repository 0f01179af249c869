"""Dual-encoder fine-tuning (EK-100 MIR, Charades-Ego) through the training loop of
:mod:`.trainer`: torchrun/DDP, autocast, AdamW with the original's groups and its warm-up +
cosine schedule, resumable safe checkpoints, the metrics CSV, progress and periodic evaluation.

A task plugs in with a :class:`FinetuneTask`: its training items (:class:`TrainItems`, one
``(video, text, weight)`` per index and epoch) and, optionally, an evaluation of the model.
The model starts from ``model.init_checkpoint`` (its temporal embedding resized to the task's
frame count) and trains its dual encoder only: text and video embeddings through the towers and
projectors; the fusion layers and heads take no part (they get no gradient and are not moved).

Per step every rank reads its slice of the global batch (:class:`.sampler.GlobalBatchSampler`,
independent of the number of ranks), embeds it, and the embeddings and weights are gathered
across ranks so that the loss sees the whole global batch, as the original's ``AllGather``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from ..checkpoint import infer_config, load_checkpoint, read_checkpoint
from ..config import ModelConfig, preset
from ..model_files import default_model_dir, default_model_path, load_tokenizer
from ..modeling.model import EgoVLPv2, sim_matrix
from ..tokenizer import RobertaTokenizer
from .config import ConfigError
from .distributed import DistInfo, all_gather_no_grad, all_gather_with_grad, shutdown_distributed
from .finetune_config import FinetuneConfig, FinetuneLoss, FinetuneModel, load_finetune_config
from .job import LoopSettings, TrainingJob
from .losses import adaptive_max_margin_ranking_loss, norm_softmax_loss
from .sampler import GlobalBatchSampler
from .trainer import TrainResult, run_job

__all__ = [
    "DualEncoderObjective",
    "Evaluator",
    "FinetuneJob",
    "FinetuneTask",
    "PairBatch",
    "PairLoss",
    "PairLosses",
    "TrainItem",
    "TrainItems",
    "finetune",
    "finetune_from_file",
    "finetune_model_config",
    "finetune_tokenizer_path",
    "init_finetune_model",
    "local_batch_size",
    "pair_loss",
    "read_init_checkpoint",
]


class TrainItem(NamedTuple):
    """One training pair.

    video: float32 ``[F, 3, S, S]`` normalised pixels (F = ``data.num_frames``, S =
    ``data.image_size``); text: the caption; weight: the pair's relevancy (the max-margin loss
    scales its margin by it; 1 for a clip's own narration; unused by InfoNCE).
    """

    video: Tensor
    text: str
    weight: float


class TrainItems(Protocol):
    """A task's training set. ``item(index, epoch)`` must be a pure function of its arguments
    (and the task's seed): the random frames, crops and caption draws of an epoch are then the
    same whatever the number of ranks, and the same after a resume."""

    def __len__(self) -> int: ...

    def item(self, index: int, epoch: int) -> TrainItem: ...


Evaluator = Callable[[EgoVLPv2], Mapping[str, float]]


class FinetuneTask(Protocol):
    """What a task gives fine-tuning (the adapter of ``egovlpv2 finetune --task NAME``)."""

    def train_items(self, cfg: FinetuneConfig) -> TrainItems:
        """The training set of ``cfg.data`` (read once per process, before the model)."""
        ...

    def evaluator(self, cfg: FinetuneConfig, tokenizer: RobertaTokenizer) -> Evaluator | None:
        """An evaluation of the model on the task's test split (rank 0; JSON-able numbers),
        or None for none."""
        ...


# A loss over the gathered batch: (sim [N, N] float, texts are rows; weights [N] float64) ->
# scalar. The diagonal holds the positive pairs.
PairLoss = Callable[[Tensor, Tensor], Tensor]

# model.init_checkpoint / model.tokenizer value naming the model shipped with the package.
DEFAULT = "default"


def pair_loss(section: FinetuneLoss) -> PairLoss:
    """The configured loss: ``max_margin`` (EK-100 MIR) or ``infonce`` (Charades-Ego)."""
    if section.name == "max_margin":
        margin = section.margin
        return lambda sim, w: adaptive_max_margin_ranking_loss(sim, w, margin)
    if section.name == "infonce":
        temperature = section.temperature
        return lambda sim, w: norm_softmax_loss(sim, temperature)
    raise ValueError(f"loss.name must be 'max_margin' or 'infonce', got {section.name!r}")


@dataclass
class PairBatch:
    """This rank's share ``B`` of a global batch ``G``.

    Attributes:
        video: ``[B, F, 3, S, S]`` in the model's dtype.
        input_ids, attention_mask: ``[B, L]`` int64.
        weight: ``[B]`` float64 pair weights.
        step: global step.
    """

    video: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    weight: Tensor
    step: int


@dataclass
class PairLosses:
    """``total`` drives the backward pass; ``loss`` (float64, CPU) is the global loss;
    ``sim_pos`` / ``sim_neg`` the mean cosine of the positive / other pairs of the batch."""

    total: Tensor
    loss: Tensor
    sim_pos: Tensor
    sim_neg: Tensor


class DualEncoderObjective(nn.Module):
    """A pair loss on the dual encoder's similarities over the batch gathered across ranks.

    The loss is the same on every rank; the all-gather's backward sums its identical per-rank
    gradients, and DDP's average turns that back into the one-process gradient of the global
    batch (as the pre-training's EgoNCE term).
    """

    def __init__(self, model: EgoVLPv2, loss: PairLoss, info: DistInfo) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.info = info

    def forward(self, batch: PairBatch) -> PairLosses:
        info = self.info
        v_emb = self.model.encode_video(batch.video)
        t_emb = self.model.encode_text(batch.input_ids, batch.attention_mask)
        v_all = all_gather_with_grad(v_emb, info)
        t_all = all_gather_with_grad(t_emb, info)
        w_all = all_gather_no_grad(batch.weight.to(v_emb.device), info)
        # float32 or wider even under bf16 autocast (a 0.05 temperature, 0.2 margins).
        acc = torch.promote_types(v_all.dtype, torch.float32)
        with torch.autocast(device_type=v_all.device.type, enabled=False):
            sim = sim_matrix(t_all.to(acc), v_all.to(acc))
            loss = self.loss_fn(sim, w_all)
        n = sim.shape[0]
        s = sim.detach().double()
        pos = s.diagonal().mean()
        neg = (s.sum() - s.diagonal().sum()) / (n * (n - 1))
        return PairLosses(loss, loss.detach().double().cpu(), pos.cpu(), neg.cpu())


def finetune_model_config(cfg: FinetuneConfig, stored: ModelConfig | None) -> ModelConfig:
    """The model of the run: the checkpoint's stored config (or ``model.preset``) with
    ``video.num_frames = data.num_frames``; its input size must be ``data.image_size``."""
    if stored is None:
        if not cfg.model.preset:
            raise ConfigError(
                f"model.init_checkpoint {cfg.model.init_checkpoint} stores no model config; "
                "set model.preset (e.g. 'base-smallproj' for a released .pth)"
            )
        try:
            stored = preset(cfg.model.preset)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"model.preset: {e}") from None
    d = stored.to_dict()
    d["video"] = {**d["video"], "num_frames": cfg.data.num_frames}
    mc = ModelConfig.from_dict(d)
    if mc.video.img_size != cfg.data.image_size:
        raise ConfigError(
            f"data.image_size {cfg.data.image_size} != the model's video.img_size "
            f"{mc.video.img_size} ({cfg.model.init_checkpoint})"
        )
    if cfg.data.max_text_length > mc.text.max_text_length:
        raise ConfigError(
            f"data.max_text_length {cfg.data.max_text_length} exceeds the model's "
            f"{mc.text.max_text_length}"
        )
    return mc


def local_batch_size(global_batch_size: int, info: DistInfo) -> int:
    """This rank's share of a global batch (it must divide evenly over the ranks)."""
    if global_batch_size % info.world_size:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the world "
            f"size {info.world_size}"
        )
    return global_batch_size // info.world_size


def finetune_tokenizer_path(name: str) -> Path:
    """``model.tokenizer`` as a path ("default": the model shipped with the package, so a
    quick start needs no path); a missing one is an error naming the key."""
    path = default_model_dir() if name == DEFAULT else Path(name)
    if not path.exists():
        raise FileNotFoundError(f"model.tokenizer: no tokenizer file or folder at {path}")
    return path


def read_init_checkpoint(name: str) -> tuple[dict[str, Tensor], ModelConfig | None]:
    """The tensors of ``model.init_checkpoint`` ("default": the shipped model) and their config:
    the one the file stores, else a released checkpoint's recognised by its keys (a ``.pth``
    stores none), else None (``model.preset`` decides)."""
    state, stored = read_checkpoint(default_model_path() if name == DEFAULT else name)
    return state, stored or infer_config(state)


def init_finetune_model(
    mc: ModelConfig, section: FinetuneModel, state: dict[str, Tensor]
) -> EgoVLPv2:
    """The EgoVLPv2 of ``mc`` with ``state`` loaded (``section``: how it runs). Pixels come
    from the tasks' own readers: the finite check would only add a host sync."""
    model = EgoVLPv2(
        mc,
        attention_impl=section.attention_impl,
        gradient_checkpointing=section.gradient_checkpointing,
        check_finite_pixels=False,
    )
    load_checkpoint(model, state, source=section.init_checkpoint)
    return model


class FinetuneJob(TrainingJob):
    """Dual-encoder fine-tuning of ``cfg`` on ``items`` as a :class:`~.job.TrainingJob`."""

    log_fields = ("sim_pos", "sim_neg")
    # The fusion layers and heads are part of the model (and of its checkpoints) but not of
    # the dual path: DDP must not wait for their gradients.
    find_unused_parameters = True
    sampler: GlobalBatchSampler
    tokenizer: RobertaTokenizer

    def __init__(
        self,
        cfg: FinetuneConfig,
        task: FinetuneTask,
        items: TrainItems,
        info: DistInfo,
        dtype: torch.dtype,
    ) -> None:
        self.cfg = cfg
        self.items = items
        self.info = info
        self.local_batch = local_batch_size(cfg.global_batch_size, info)
        self.sampler = GlobalBatchSampler(len(items), cfg.global_batch_size, cfg.seed)
        self.tokenizer = load_tokenizer(
            finetune_tokenizer_path(cfg.model.tokenizer), cfg.data.max_text_length
        )
        state, stored = read_init_checkpoint(cfg.model.init_checkpoint)
        mc = finetune_model_config(cfg, stored)
        if mc.text.vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(
                f"the model's text.vocab_size {mc.text.vocab_size} != the tokenizer's "
                f"{self.tokenizer.vocab_size} (model.tokenizer={cfg.model.tokenizer})"
            )
        model = init_finetune_model(mc, cfg.model, state)
        self.model = model.to(device=info.device, dtype=dtype).train()
        self.objective = DualEncoderObjective(self.model, pair_loss(cfg.loss), info)
        self._evaluator = task.evaluator(cfg, self.tokenizer) if cfg.eval.enabled else None

    def batch(self, step: int, device: torch.device, dtype: torch.dtype) -> PairBatch:
        epoch, _ = self.sampler.position(step)
        offset = self.info.rank * self.local_batch
        idx = self.sampler.global_indices(step)[offset : offset + self.local_batch]
        items = [self.items.item(i, epoch) for i in idx]
        d = self.cfg.data
        want = (d.num_frames, 3, d.image_size, d.image_size)
        for i, it in zip(idx, items, strict=True):
            if tuple(it.video.shape) != want:
                raise ValueError(
                    f"training item {i} (epoch {epoch}): video shape {tuple(it.video.shape)}, "
                    f"expected {want} (data.num_frames, 3, data.image_size, data.image_size)"
                )
        tok = self.tokenizer(
            [it.text for it in items],
            max_length=d.max_text_length,
            padding="max_length",
            truncation=True,
        )
        return PairBatch(
            torch.stack([it.video for it in items]).to(device=device, dtype=dtype),
            tok["input_ids"].to(device),
            tok["attention_mask"].to(device),
            torch.tensor([float(it.weight) for it in items], dtype=torch.float64),
            step,
        )

    def log_values(self, losses: Any) -> Mapping[str, float]:
        return {"sim_pos": float(losses.sim_pos), "sim_neg": float(losses.sim_neg)}

    @property
    def has_evaluation(self) -> bool:
        return self._evaluator is not None

    def evaluate(self, model: nn.Module, step: int) -> Mapping[str, Any]:
        assert self._evaluator is not None and isinstance(model, EgoVLPv2)
        return {k: float(v) for k, v in self._evaluator(model).items()}


def finetune_loop_settings(cfg: FinetuneConfig, total_steps: int) -> LoopSettings:
    """The loop part of a fine-tuning run of ``total_steps`` steps."""
    return LoopSettings(
        out_dir=cfg.out_dir,
        seed=cfg.seed,
        max_steps=total_steps,
        optim=cfg.optim.build(total_steps),
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        eval_every=cfg.eval.every_steps,
        amp=cfg.amp,
        precision=cfg.precision,
        deterministic=cfg.deterministic,
        num_threads=cfg.num_threads,
        progress=cfg.progress,
        config=cfg.to_dict(),
    )


def finetune(
    cfg: FinetuneConfig,
    task: FinetuneTask,
    *,
    resume: bool = False,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune (or resume) ``cfg`` on ``task``, one process or under ``torchrun``.

    Args:
        cfg: the run (``load_finetune_config``).
        task: the task's items and evaluation.
        resume, device, stop_after: as :func:`.trainer.train`.

    Returns:
        :class:`~.trainer.TrainResult`; ``<out_dir>`` holds ``metrics.csv`` (with ``sim_pos``
        and ``sim_neg``), ``eval.jsonl`` (``{"step": s, **task metrics}``), ``checkpoints/``
        and, after the last step, ``model.safetensors`` + ``tokenizer.json``.
    """
    items = task.train_items(cfg)
    total = cfg.total_steps(len(items))
    return run_job(
        finetune_loop_settings(cfg, total),
        lambda info, dtype: FinetuneJob(cfg, task, items, info, dtype),
        resume=resume,
        device=device,
        stop_after=stop_after,
    )


def finetune_from_file(
    path: str | Path,
    make_task: Callable[[FinetuneConfig], FinetuneTask],
    *,
    resume: bool = False,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """:func:`finetune` on the config file ``path`` with the task ``make_task(cfg)`` (e.g. a
    registry lookup on ``cfg.task``), then leave the process group (if any)."""
    cfg = load_finetune_config(path)
    try:
        return finetune(cfg, make_task(cfg), resume=resume, device=device, stop_after=stop_after)
    finally:
        shutdown_distributed()
