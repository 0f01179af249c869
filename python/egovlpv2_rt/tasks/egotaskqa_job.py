"""EgoTaskQA fine-tuning through the training loop (torchrun/DDP, autocast, AdamW with warm-up +
cosine, resumable checkpoints, metrics CSV, periodic evaluation).

The recipe (``configs/finetune/egotaskqa.yaml``) is the original's: the whole backbone and the
head trained with cross-entropy over the answer vocabulary, AdamW lr 2e-4 (direct) / 1e-4
(indirect), 10% warm-up then cosine, 36 epochs, 8 questions per GPU x 8 GPUs. Differences: the
checkpoint is selected on the **val** split (the original picks its best epoch on test), and
evaluation samples frames deterministically. The optimiser uses the package's parameter groups
(no weight decay on biases and norms; the original decays every parameter by 0.01).

.. code-block:: yaml

    task: egotaskqa
    encoder: fusion                 # or dual: the same head on concat(video CLS, text CLS)
    model: {init_checkpoint: ckpt/EgoVLPv2.pth, preset: base, tokenizer: ckpt/roberta-base}
    data: {root: Data/qa/direct, videos: qa_videos, num_frames: 16, image_size: 224}
    optim: {lr: 2.0e-4, weight_decay: 0.01, betas: [0.9, 0.999], warmup_fraction: 0.1}
    epochs: 36
    global_batch_size: 64
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..files import atomic_write_text
from ..model_files import load_tokenizer
from ..tokenizer import RobertaTokenizer
from ..train.config import ConfigError, build_config, read_config_mapping
from ..train.distributed import DistInfo, all_reduce_sum, shutdown_distributed
from ..train.finetune import (
    finetune_loop_settings,
    finetune_model_config,
    finetune_tokenizer_path,
    init_finetune_model,
    local_batch_size,
    read_init_checkpoint,
)
from ..train.finetune_config import (
    FinetuneConfig,
    FinetuneData,
    FinetuneEval,
    FinetuneModel,
    FinetuneOptim,
)
from ..train.job import TrainingJob
from ..train.sampler import GlobalBatchSampler
from ..train.trainer import TrainResult, run_job
from ..video.reader import Backend
from .egotaskqa import (
    MAX_QUESTION_LENGTH,
    Encoder,
    TaskQAModel,
    clip_seed,
    evaluate_egotaskqa,
    question_text,
    read_qa_clip,
    save_taskqa_model,
)
from .egotaskqa_data import TaskQASplit, load_taskqa_split

__all__ = [
    "EgoTaskQAConfig",
    "EgoTaskQAData",
    "EgoTaskQAJob",
    "QABatch",
    "finetune_egotaskqa",
    "finetune_egotaskqa_from_file",
    "load_egotaskqa_config",
    "read_best",
]

BEST_WEIGHTS = "best.safetensors"
BEST_RECORD = "best.json"
SELECT_METRIC = "val/All"


@dataclass
class EgoTaskQAData:
    """The question folder and clips.

    Attributes:
        root: the folder with ``formatted_*_qas_encode.json``, ``answer_set.txt`` and
            ``all_reasoning_types.txt`` (``Data/qa/direct`` or ``.../indirect``).
        videos: the clip folder (``{interval}.mp4``; empty: ``{root}/videos``).
        num_frames: frames per clip (16; the temporal embedding is resized to it).
        image_size: the model's input size.
        max_text_length: question tokens (30), at most the model's text length.
        backend: video backend name.
    """

    root: str = ""
    videos: str = ""
    num_frames: int = 16
    image_size: int = 224
    max_text_length: int = MAX_QUESTION_LENGTH
    backend: Backend = "pyav"


@dataclass
class EgoTaskQAConfig:
    """One EgoTaskQA fine-tuning run (keys as :class:`~egovlpv2_rt.train.finetune_config.
    FinetuneConfig` where they mean the same; exactly one of ``max_steps`` and ``epochs``)."""

    task: str = "egotaskqa"
    encoder: Encoder = "fusion"
    dropout: float = 0.2
    model: FinetuneModel = field(default_factory=FinetuneModel)
    data: EgoTaskQAData = field(default_factory=EgoTaskQAData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    out_dir: str = "runs/egotaskqa"
    seed: int = 0
    global_batch_size: int = 64
    max_steps: int = 0
    epochs: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    amp: str = "auto"
    precision: str = "float32"
    deterministic: bool = False
    progress: bool = True
    num_threads: int = 0

    def as_finetune_config(self) -> FinetuneConfig:
        """The shared settings as a :class:`FinetuneConfig` (its model and loop helpers)."""
        d = self.data
        shared = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(FinetuneConfig)
            if f.name not in ("data", "loss")  # EgoTaskQA's own data; no pair loss
        }
        data = FinetuneData(d.root, d.num_frames, d.image_size, d.max_text_length, d.backend)
        return FinetuneConfig(**shared, data=data)

    def validate(self, where: str = "config") -> None:
        """Range checks (:class:`ConfigError` naming ``where`` and the key)."""
        if self.task != "egotaskqa":
            raise ConfigError(f"{where}: task: must be 'egotaskqa', got {self.task!r}")
        if self.encoder not in ("fusion", "dual"):
            raise ConfigError(f"{where}: encoder: must be 'fusion' or 'dual', got {self.encoder!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}: dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.data.root:
            raise ConfigError(f"{where}: data.root: is required")
        self.as_finetune_config().validate(where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def egotaskqa_config_from_dict(data: dict[str, Any], where: str = "config") -> EgoTaskQAConfig:
    """Build and validate an :class:`EgoTaskQAConfig` from a plain mapping."""
    cfg = build_config(EgoTaskQAConfig, data, where)
    cfg.validate(where)
    return cfg


def load_egotaskqa_config(path: str | Path) -> EgoTaskQAConfig:
    """Read a JSON or YAML EgoTaskQA fine-tuning file (strict: unknown keys are errors)."""
    return egotaskqa_config_from_dict(read_config_mapping(path), str(path))


def _video_root(cfg: EgoTaskQAConfig) -> Path | None:
    return Path(cfg.data.videos) if cfg.data.videos else None


@dataclass
class QABatch:
    """This rank's share of a global batch: video ``[B, F, 3, S, S]`` (model dtype),
    input_ids / attention_mask ``[B, L]`` int64, answer ``[B]`` int64."""

    video: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    answer: Tensor
    step: int


@dataclass
class QALosses:
    """``total``: this rank's mean cross-entropy (DDP's average makes it the global batch's
    gradient); ``loss``: the global mean (float64, CPU); ``train_acc``: the global batch's
    accuracy in percent."""

    total: Tensor
    loss: Tensor
    train_acc: Tensor


class QAObjective(nn.Module):
    """Cross-entropy of the answer logits (the original's, over the all-gathered batch: with
    equal per-rank batches the mean of the ranks' means is the same loss)."""

    def __init__(self, model: TaskQAModel, info: DistInfo) -> None:
        super().__init__()
        self.model = model
        self.info = info

    def forward(self, batch: QABatch) -> QALosses:
        logits = self.model(batch.video, batch.input_ids, batch.attention_mask)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss = F.cross_entropy(logits.float(), batch.answer)
        n = batch.answer.numel()
        stats = torch.stack(
            [
                loss.detach().double() * n,
                (logits.detach().argmax(-1) == batch.answer).sum().double(),
                torch.tensor(float(n), dtype=torch.float64, device=logits.device),
            ]
        )
        stats = all_reduce_sum(stats, self.info).cpu()
        return QALosses(loss, stats[0] / stats[2], 100.0 * stats[1] / stats[2])


class EgoTaskQAJob(TrainingJob):
    """EgoTaskQA fine-tuning of ``cfg`` as a :class:`~egovlpv2_rt.train.job.TrainingJob`;
    evaluates on the **val** split (model selection), never on test."""

    log_fields = ("train_acc",)
    # The ITM head, the projectors (fusion) or the fusion layers (dual) take no part.
    find_unused_parameters = True
    sampler: GlobalBatchSampler
    tokenizer: RobertaTokenizer
    model: TaskQAModel

    def __init__(
        self, cfg: EgoTaskQAConfig, train: TaskQASplit, info: DistInfo, dtype: torch.dtype
    ) -> None:
        self.cfg = cfg
        self.train = train
        self.info = info
        self.local_batch = local_batch_size(cfg.global_batch_size, info)
        self.sampler = GlobalBatchSampler(len(train), cfg.global_batch_size, cfg.seed)
        fc = cfg.as_finetune_config()
        state, stored = read_init_checkpoint(cfg.model.init_checkpoint)
        # The question length is capped at the model's text length (18 for the shipped model).
        if stored is not None:
            self.text_length = min(cfg.data.max_text_length, stored.text.max_text_length)
        else:
            self.text_length = cfg.data.max_text_length
        fc.data = dataclasses.replace(fc.data, max_text_length=self.text_length)
        mc = finetune_model_config(fc, stored)
        self.tokenizer = load_tokenizer(
            finetune_tokenizer_path(cfg.model.tokenizer), self.text_length
        )
        if cfg.encoder == "fusion" and "ITM" not in mc.task_names:
            raise ConfigError(
                f"encoder 'fusion' needs a model with fusion layers and an ITM head; "
                f"{cfg.model.init_checkpoint} has task_names {mc.task_names!r}"
            )
        backbone = init_finetune_model(mc, cfg.model, state)
        backbone.to(device=info.device, dtype=dtype)
        self.model = TaskQAModel(backbone, len(train.answers), cfg.encoder, cfg.dropout).train()
        self.objective = QAObjective(self.model, info)

    def batch(self, step: int, device: torch.device, dtype: torch.dtype) -> QABatch:
        epoch, _ = self.sampler.position(step)
        offset = self.info.rank * self.local_batch
        idx = self.sampler.global_indices(step)[offset : offset + self.local_batch]
        d = self.cfg.data
        items = [self.train.items[i] for i in idx]
        video = torch.stack(
            [
                read_qa_clip(
                    self.train.video_path(it),
                    num_frames=d.num_frames,
                    size=d.image_size,
                    train=True,
                    seed=clip_seed(self.cfg.seed, epoch, i),
                    backend=d.backend,
                )
                for i, it in zip(idx, items, strict=True)
            ]
        )
        tok = self.tokenizer(
            [question_text(it.question) for it in items],
            max_length=self.text_length,
            padding="max_length",
            truncation=True,
        )
        return QABatch(
            video.to(device=device, dtype=dtype),
            tok["input_ids"].to(device),
            tok["attention_mask"].to(device),
            torch.tensor([it.answer for it in items], dtype=torch.int64, device=device),
            step,
        )

    def log_values(self, losses: Any) -> Mapping[str, float]:
        return {"train_acc": float(losses.train_acc)}

    @property
    def has_evaluation(self) -> bool:
        return self.cfg.eval.enabled

    def evaluate(self, model: nn.Module, step: int) -> Mapping[str, Any]:
        assert isinstance(model, TaskQAModel)
        res = evaluate_egotaskqa(
            model,
            self.cfg.data.root,
            "val",
            self.tokenizer,
            video_root=_video_root(self.cfg),
            batch_size=self.cfg.eval.batch_size,
            backend=self.cfg.data.backend,
            max_text_length=self.text_length,
        )
        out = {f"val/{k}": v for k, v in res.items()}
        self._keep_if_best(model, step, res["All"])
        return out

    def _keep_if_best(self, model: TaskQAModel, step: int, score: float) -> None:
        """Model selection on val All (the original's ``acc_dct[split]`` on test, which
        is every question's accuracy too): the best step so far is written to
        ``best.safetensors`` and ``best.json`` (read back on resume; the earlier step wins a
        tie)."""
        out = Path(self.cfg.out_dir)
        record = read_best(out)
        if record is not None and record["step"] < step and score <= record[SELECT_METRIC]:
            return
        save_taskqa_model(model, out / BEST_WEIGHTS, steps=str(step))
        atomic_write_text(
            out / BEST_RECORD, json.dumps({"step": step, SELECT_METRIC: score}) + "\n"
        )

    def save_weights(self, model: nn.Module, path: Path, step: int) -> None:
        assert isinstance(model, TaskQAModel)
        save_taskqa_model(model, path, steps=str(step))


def read_best(out_dir: str | Path) -> dict[str, Any] | None:
    """``{out_dir}/best.json`` (the step chosen on val and its val All), None before the
    first evaluation."""
    path = Path(out_dir) / BEST_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        step, score = int(record["step"]), float(record[SELECT_METRIC])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a best-step record ({e})") from None
    return {"step": step, SELECT_METRIC: score}


def finetune_egotaskqa(
    cfg: EgoTaskQAConfig,
    *,
    resume: bool = False,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune (or resume) ``cfg``, one process or under ``torchrun``.

    Returns the loop's :class:`~egovlpv2_rt.train.trainer.TrainResult`; ``<out_dir>`` holds
    ``metrics.csv`` (with ``train_acc``), ``eval.jsonl`` (``val/All``, ``val/Open``,
    ``val/Binary``, ``val/<tag>``), ``checkpoints/``, ``best.safetensors`` and ``best.json``
    (the evaluated step with the best val All: the model to test) and, after the last step,
    ``model.safetensors`` (backbone + ``qa_head.*``; :func:`~.egotaskqa.load_taskqa_model`)
    and ``tokenizer.json``.
    """
    train = load_taskqa_split(cfg.data.root, "train", _video_root(cfg))
    if not train.items:
        raise ValueError(f"{cfg.data.root}: the train split has no question")
    fc = cfg.as_finetune_config()
    total = fc.total_steps(len(train))
    loop = finetune_loop_settings(fc, total)
    loop.config = cfg.to_dict()
    return run_job(
        loop,
        lambda info, dtype: EgoTaskQAJob(cfg, train, info, dtype),
        resume=resume,
        device=device,
        stop_after=stop_after,
    )


def finetune_egotaskqa_from_file(
    path: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """:func:`finetune_egotaskqa` on the config file ``path``, then leave the process group."""
    cfg = load_egotaskqa_config(path)
    try:
        return finetune_egotaskqa(cfg, resume=resume, device=device, stop_after=stop_after)
    finally:
        shutdown_distributed()
