"""The training loop, and pre-training as its first job: ``python -m egovlpv2_rt.train --config
FILE [--resume]``, or under ``torchrun --nproc_per_node N`` for data-parallel training (NCCL on
GPU, gloo on CPU).

:func:`run_job` runs any :class:`~.job.TrainingJob`. Per step: the job builds this rank's batch;
its objective (DDP-wrapped when distributed) runs under bf16 autocast on GPU; clip the gradient
norm; AdamW step; scheduler step. Rank 0 writes a CSV metrics log, shows a progress bar, writes
checkpoints atomically and runs the job's evaluation.

:class:`PretrainJob`: build the global batch's captions, masks and MLM targets on every rank,
read this rank's clips, :class:`PretrainObjective` (EgoNCE + MLM + VTM), EgoMCQ evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import load_checkpoint
from ..config import ModelConfig
from ..data.clips import ClipReader, clip_seed
from ..data.collate import collate_text
from ..data.egoclip import ClipRecord, read_egoclip, segment_ids
from ..denormals import flushing_denormals
from ..files import atomic_write_text, exclusive_output, remove_stale_temporaries
from ..model_files import default_model_path, load_tokenizer
from ..modeling.model import EgoVLPv2
from .config import TrainConfig, load_train_config
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .job import LoopSettings, TrainingJob
from .objective import GlobalBatch, PretrainObjective
from .optim import build_optimizer, build_scheduler
from .sampler import GlobalBatchSampler
from .state import (
    LEGACY_STATE_NAME,
    STATE_NAME,
    capture_rng,
    find_training_state,
    load_training_state,
    remove_unreferenced_tensor_files,
    restore_rng,
    save_training_state,
)

__all__ = ["PretrainJob", "TrainResult", "log_fields", "run_job", "train", "train_from_file"]

# metrics.csv: these columns, the job's own between "loss" and "grad_norm".
LEADING_FIELDS = ("step", "epoch", "lr", "loss")
TRAILING_FIELDS = ("grad_norm", "seconds")
PRETRAIN_LOG_FIELDS = ("egonce", "mlm", "vtm", "vtm_acc")
LOG_FIELDS = (*LEADING_FIELDS, *PRETRAIN_LOG_FIELDS, *TRAILING_FIELDS)


def log_fields(job_fields: tuple[str, ...]) -> tuple[str, ...]:
    """The columns of ``metrics.csv`` for a job's own ``log_fields``."""
    clash = sorted(set(job_fields) & {*LEADING_FIELDS, *TRAILING_FIELDS})
    if clash or len(set(job_fields)) != len(job_fields):
        raise ValueError(f"job log fields {job_fields} repeat a column (clash: {clash})")
    return (*LEADING_FIELDS, *job_fields, *TRAILING_FIELDS)


@dataclass
class TrainResult:
    """What a run produced (rank 0 fills the paths)."""

    steps: int
    final_loss: float
    checkpoint: Path
    weights: Path | None
    seconds: float

    def summary(self) -> str:
        """One line for the log: steps, last loss, wall time."""
        return f"steps={self.steps} loss={self.final_loss:.6f} seconds={self.seconds:.1f}"


def train_from_file(
    path: str | Path, *, resume: bool = False, device: str = "auto", stop_after: int | None = None
) -> TrainResult:
    """:func:`train` on the experiment file ``path``, then leave the process group (if any)."""
    cfg = load_train_config(path)
    try:
        return train(cfg, resume=resume, device=device, stop_after=stop_after)
    finally:
        shutdown_distributed()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    mc = cfg.model.build()
    if mc.text.vocab_size != vocab_size:
        raise ValueError(
            f"model text.vocab_size {mc.text.vocab_size} != tokenizer vocabulary "
            f"size {vocab_size} (data.tokenizer={cfg.data.tokenizer})"
        )
    if mc.video.img_size != cfg.data.image_size:
        raise ValueError(
            f"model video.img_size {mc.video.img_size} != data.image_size {cfg.data.image_size}"
        )
    if cfg.data.num_frames > mc.video.num_frames:
        raise ValueError(
            f"data.num_frames {cfg.data.num_frames} exceeds the model's "
            f"video.num_frames {mc.video.num_frames}"
        )
    if cfg.data.max_text_length > mc.text.max_text_length:
        raise ValueError(
            f"data.max_text_length {cfg.data.max_text_length} exceeds the "
            f"model's {mc.text.max_text_length}"
        )
    return mc


class _Data:
    """Everything that turns a step number into a :class:`GlobalBatch`."""

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        d = cfg.data
        root = Path(d.root)
        self.records: list[ClipRecord] = read_egoclip(root / d.metadata)
        if not Path(d.tokenizer).exists():
            raise FileNotFoundError(f"data.tokenizer: no tokenizer file or folder at {d.tokenizer}")
        self.tokenizer = load_tokenizer(Path(d.tokenizer), d.max_text_length)
        groups = segment_ids(self.records, d.neg_seconds) if d.neg_seconds > 0 else None
        self.sampler = GlobalBatchSampler(
            len(self.records), cfg.global_batch_size, cfg.seed, groups
        )
        self.reader = ClipReader(
            root / d.video_dir,
            num_frames=d.num_frames,
            image_size=d.image_size,
            sampling=d.sampling,
            backend=d.backend,
            augment=d.train_augment,
            cache_size=len(self.records) if d.cache_clips else 0,
        )
        self.num_verbs = 1 + max((max(r.tag_verb) for r in self.records if r.tag_verb), default=0)
        self.num_nouns = 1 + max((max(r.tag_noun) for r in self.records if r.tag_noun), default=0)
        self.cfg = cfg
        self.info = info

    def batch(self, step: int, device: torch.device, dtype: torch.dtype) -> GlobalBatch:
        cfg, info = self.cfg, self.info
        idx = self.sampler.global_indices(step)
        epoch, _ = self.sampler.position(step)
        recs = [self.records[i] for i in idx]
        gen = torch.Generator().manual_seed(clip_seed("mlm", cfg.seed, step))
        text = collate_text(
            recs,
            self.tokenizer,
            max_length=cfg.data.max_text_length,
            generator=gen,
            num_verbs=self.num_verbs,
            num_nouns=self.num_nouns,
            use_verb=cfg.loss.verb_positives,
            use_noun=cfg.loss.noun_positives,
        )
        b = cfg.global_batch_size // info.world_size
        offset = info.rank * b
        clips = [
            self.reader.read(self.records[i], seed=clip_seed("frames", cfg.seed, epoch, i))
            for i in idx[offset : offset + b]
        ]
        video = torch.stack(clips).to(device=device, dtype=dtype)

        def dev(t):
            return None if t is None else t.to(device)

        return GlobalBatch(
            video,
            dev(text.input_ids),
            dev(text.attention_mask),
            dev(text.mlm_ids),
            dev(text.mlm_labels),
            dev(text.mask_v),
            dev(text.mask_n),
            offset,
            step,
        )


@torch.no_grad()
def scale_initialisation(model: EgoVLPv2, factor: float) -> None:
    """Multiply the weight matrices of Linear and Embedding layers by ``factor``.

    Biases and LayerNorms are untouched; zero-initialised tensors (gates, the time attention's
    qkv) stay zero; the time attention's ``proj`` (initialised to 1 so that the block starts as
    the image ViT) is left as is.
    """
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            if name.endswith("timeattn.proj"):
                continue
            module.weight.mul_(factor)
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    mine = capture_rng()
    if not info.distributed:
        return [mine]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


class PretrainJob(TrainingJob):
    """Pre-training (EgoNCE + MLM + VTM on EgoClip-format data, EgoMCQ evaluation) as a
    :class:`~.job.TrainingJob`."""

    log_fields = PRETRAIN_LOG_FIELDS

    def __init__(
        self, cfg: TrainConfig, info: DistInfo, dtype: torch.dtype, *, load_init: bool = True
    ) -> None:
        """``load_init`` False: ``model.init_checkpoint`` is not read (a resumed run's weights
        come from its state, and the file may be gone by then)."""
        self.cfg = cfg
        self.data = _Data(cfg, info)
        self.sampler = self.data.sampler
        self.tokenizer = self.data.tokenizer
        mc = _model_config(cfg, self.data.tokenizer.vocab_size)
        # Pixels come from the package's own decoder: the finite check would only add a host sync.
        model = EgoVLPv2(
            mc,
            attention_impl=cfg.attention_impl,
            gradient_checkpointing=cfg.gradient_checkpointing,
            check_finite_pixels=False,
        )
        init = cfg.model.init_checkpoint
        if init == "default":  # as in the fine-tuning configs: the model shipped with the package
            init = str(default_model_path())
        if init and load_init:
            if not Path(init).is_file():
                raise FileNotFoundError(f"model.init_checkpoint: no such file {init}")
            # Strict: every key, shape and dtype of the model (errors name the file and keys).
            load_checkpoint(model, init)
        if cfg.init_scale != 1.0:
            scale_initialisation(model, cfg.init_scale)
        if cfg.gate_init != 0.0:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(("alpha_i2t", "alpha_t2i")):
                        p.fill_(cfg.gate_init)
        model = model.to(device=info.device, dtype=dtype)
        model.train()
        self.model = model
        objective = PretrainObjective(
            model,
            cfg.loss.weights(),
            cfg.loss.temperature,
            info,
            cfg.seed,
            cfg.loss.mlm_start_step,
            cfg.loss.vtm_start_step,
            cfg.loss.mlm_stop_step,
            vtm_negatives="random" if cfg.loss.vtm_negatives == "random" else "hard",
            time_reversal=cfg.loss.time_reversal,
            object_negatives=cfg.loss.object_negatives,
            time_reversal_share=cfg.loss.time_reversal_share,
        )
        self.objective = objective
        self.find_unused_parameters = not objective.every_term_every_step

    def batch(self, step: int, device: torch.device, dtype: torch.dtype) -> GlobalBatch:
        return self.data.batch(step, device, dtype)

    def log_values(self, losses: Any) -> Mapping[str, float]:
        return {
            "egonce": _f(losses.egonce),
            "mlm": _f(losses.mlm),
            "vtm": _f(losses.vtm),
            "vtm_acc": _f(losses.vtm_accuracy),
        }

    @property
    def has_evaluation(self) -> bool:
        return bool(self.cfg.eval.egomcq)

    def evaluate(self, model: torch.nn.Module, step: int) -> Mapping[str, Any]:
        """EgoMCQ accuracy (``eval.egomcq``)."""
        from ..eval.egomcq import evaluate_egomcq

        cfg = self.cfg
        ev = cfg.eval
        video_dir = ev.video_dir or str(Path(ev.egomcq).parent / "videos")
        assert isinstance(model, EgoVLPv2)
        res = evaluate_egomcq(
            model,
            ev.egomcq,
            video_dir,
            self.data.tokenizer,
            num_frames=cfg.data.num_frames,
            max_length=cfg.data.max_text_length,
            batch_size=ev.batch_size,
            backend=cfg.data.backend,
        )
        return {"egomcq": res.accuracy}


def pretrain_loop_settings(cfg: TrainConfig) -> LoopSettings:
    """The loop part of a pre-training experiment."""
    return LoopSettings(
        out_dir=cfg.out_dir,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        optim=cfg.optim,
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


def train(
    cfg: TrainConfig, *, resume: bool = False, device: str = "auto", stop_after: int | None = None
) -> TrainResult:
    """Run (or resume) the pre-training experiment ``cfg``.

    Args:
        cfg: the experiment.
        resume: continue from ``<out_dir>/checkpoints/last.json`` (or a 0.1 run's
            ``last.pt``) when it exists.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        stop_after: stop (without a final checkpoint) after this many steps of this call;
            for tests that simulate an interrupted run.

    Returns:
        :class:`TrainResult`.

    Raises:
        OutputBusyError: another training job writes ``cfg.out_dir``.
        UnsafeFileError: ``--resume`` met a state file that would need code to run to be read.
    """
    resuming = resume and find_training_state(Path(cfg.out_dir) / CHECKPOINTS) is not None
    return run_job(
        pretrain_loop_settings(cfg),
        lambda info, dtype: PretrainJob(cfg, info, dtype, load_init=not resuming),
        resume=resume,
        device=device,
        stop_after=stop_after,
    )


JobFactory = Callable[[DistInfo, torch.dtype], TrainingJob]


def run_job(
    loop: LoopSettings,
    make_job: JobFactory,
    *,
    resume: bool = False,
    device: str = "auto",
    stop_after: int | None = None,
) -> TrainResult:
    """Run (or resume) the job ``make_job(info, dtype)`` with the loop ``loop``.

    ``make_job`` is called once per process after every RNG is seeded with ``loop.seed``; it
    returns the job with its model on ``info.device`` in ``dtype``. Arguments and errors as
    :func:`train`.
    """
    info = init_distributed(device)
    # Rank 0 writes every file of the run, so it holds the run folder for the whole job.
    with (
        hold_run_folder(loop.out_dir) if info.is_main else nullcontext(),
        flushing_denormals(info.device.type == "cpu"),
    ):
        return _run(loop, make_job, info, resume, stop_after)


RUN_LOCK_NAME = "training"
CHECKPOINTS = "checkpoints"
# The files the trainer writes into out_dir (checkpoints/ aside).
RUN_OUTPUTS = ("config.json", "metrics.csv", "eval.jsonl", "model.safetensors", "tokenizer.json")


@contextlib.contextmanager
def hold_run_folder(out_dir: str | Path) -> Iterator[None]:
    """Hold ``<out_dir>/.training.lock`` (a second trainer on ``out_dir`` is refused with
    :class:`~egovlpv2_rt.errors.OutputBusyError`); on entry remove what a killed run of the
    folder left: temporary files of every output and tensor files no ``last.json`` names."""
    out_dir = Path(out_dir)
    with exclusive_output(out_dir / RUN_LOCK_NAME, what="training run"):
        ckpt = out_dir / CHECKPOINTS
        for name in RUN_OUTPUTS:
            remove_stale_temporaries(out_dir / name)
        # "state-*" is a glob: temporaries of every step's tensor file.
        for name in (STATE_NAME, LEGACY_STATE_NAME, "state-*.safetensors"):
            remove_stale_temporaries(ckpt / name)
        remove_unreferenced_tensor_files(ckpt)
        yield


def _run(
    loop: LoopSettings,
    make_job: JobFactory,
    info: DistInfo,
    resume: bool,
    stop_after: int | None,
) -> TrainResult:
    if loop.num_threads > 0:
        torch.set_num_threads(loop.num_threads)
    if loop.deterministic:
        torch.use_deterministic_algorithms(True)
        if info.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
    out_dir = Path(loop.out_dir)
    ckpt_dir = out_dir / CHECKPOINTS
    ckpt_path = ckpt_dir / STATE_NAME
    dtype = torch.float64 if loop.precision == "float64" else torch.float32
    # Same initial weights on every rank (DDP also broadcasts rank 0's).
    _seed_everything(loop.seed)
    job = make_job(info, dtype)
    model = job.model
    fields = log_fields(tuple(job.log_fields))
    runner: torch.nn.Module = job.objective
    if info.distributed:
        runner = torch.nn.parallel.DistributedDataParallel(
            job.objective,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=job.find_unused_parameters,
        )
    optimizer = build_optimizer(model, loop.optim)
    scheduler = build_scheduler(optimizer, loop.optim, loop.max_steps)
    step = 0
    resume_from = find_training_state(ckpt_dir) if resume else None
    if resume_from is not None:
        state = load_training_state(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        job.sampler.check_state(state["sampler"])
        if len(state["rng"]) != info.world_size:
            raise ValueError(
                f"{resume_from}: saved by {len(state['rng'])} ranks, resumed with "
                f"{info.world_size}; RNG streams cannot be continued exactly"
            )
        restore_rng(state["rng"][info.rank])
        step = int(state["step"])
    else:
        # Ranks draw different dropout masks.
        torch.manual_seed(clip_seed("dropout", loop.seed, info.rank))

    # "auto": bf16 autocast on CUDA, float32 on the CPU. "bf16" on the CPU autocasts the Linears
    # (the C++ attention kernels stay float32); for the width-64 default model it was slower
    # (383 vs 312 ms a step on an AMX Xeon, bench/bench_train_step.py: the casts cost more
    # than the small matmuls save).
    use_bf16 = dtype == torch.float32 and (
        loop.amp == "bf16" or (loop.amp == "auto" and info.device.type == "cuda")
    )
    if loop.amp == "bf16" and dtype != torch.float32:
        raise ValueError(f"amp 'bf16' needs precision 'float32', got {loop.precision!r}")
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    log_file = None
    writer = None
    bar = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json.dumps(loop.config, indent=1))
        log_path = out_dir / "metrics.csv"
        new = not (resume_from is not None and log_path.is_file())
        if not new:
            _truncate_log(log_path, step, fields)
        log_file = log_path.open("w" if new else "a", newline="")
        writer = csv.DictWriter(log_file, fieldnames=fields)
        if new:
            writer.writeheader()
        if loop.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=loop.max_steps, initial=step, desc="train", dynamic_ncols=True)

    t0 = time.perf_counter()
    last_loss = float("nan")
    done_here = 0
    grad_clip = loop.optim.grad_clip
    params = [p for p in model.parameters() if p.requires_grad]
    while step < loop.max_steps:
        if stop_after is not None and done_here >= stop_after:
            break
        batch = job.batch(step, info.device, dtype)
        with autocast:
            losses = runner(batch)
        losses.total.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if grad_clip > 0
            else torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])
            )
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        last_loss = float(losses.loss)
        if not np.isfinite(last_loss):
            raise FloatingPointError(f"step {step}: loss is {last_loss}")
        if writer is not None and log_file is not None:  # the main process
            row = {
                "step": step,
                "epoch": job.sampler.position(step - 1)[0],
                "lr": optimizer.param_groups[0]["lr"],
                "loss": last_loss,
                **job.log_values(losses),
                "grad_norm": float(grad_norm),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            writer.writerow(row)
            if step % loop.log_every == 0 or step == loop.max_steps:
                log_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
        if step % loop.checkpoint_every == 0 or step == loop.max_steps:
            _save(ckpt_dir, model, optimizer, scheduler, job, step, loop, info)
        if job.has_evaluation and (
            (loop.eval_every > 0 and step % loop.eval_every == 0) or step == loop.max_steps
        ):
            _evaluate(job, model, step, out_dir, info)
    if bar is not None:
        bar.close()
    if log_file is not None:
        log_file.close()
    weights_path = None
    if info.is_main and step >= loop.max_steps:
        weights_path = out_dir / "model.safetensors"
        job.save_weights(model, weights_path, step)
        job.tokenizer.save(out_dir / "tokenizer.json")
    if info.distributed:
        dist.barrier()
    return TrainResult(step, last_loss, ckpt_path, weights_path, time.perf_counter() - t0)


def _evaluate(
    job: TrainingJob, model: torch.nn.Module, step: int, out_dir: Path, info: DistInfo
) -> None:
    """The job's evaluation on rank 0; appends a JSON line to ``<out_dir>/eval.jsonl``."""
    if info.is_main:
        try:
            res = dict(job.evaluate(model, step))
        finally:
            model.train()
        if "step" in res:
            raise ValueError(f"{type(job).__name__}.evaluate returned a 'step' entry: {res}")
        with (out_dir / "eval.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **res}) + "\n")
    if info.distributed:
        dist.barrier()


def _f(x) -> float:
    return float("nan") if x is None else float(x)


def _truncate_log(path: Path, step: int, fields: tuple[str, ...] = LOG_FIELDS) -> None:
    """Drop log rows after ``step`` (written by the interrupted run past its last checkpoint);
    the log is rewritten atomically, so a kill now keeps the old one."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    for r in rows:
        if int(r["step"]) <= step:
            w.writerow(r)
    atomic_write_text(path, text.getvalue())


def _save(
    directory: Path,
    model,
    optimizer,
    scheduler,
    job: TrainingJob,
    step: int,
    loop: LoopSettings,
    info: DistInfo,
) -> None:
    rng = _gather_rng(info)
    if info.is_main:
        save_training_state(
            directory,
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": job.sampler.state_dict(),
                "rng": rng,
                "config": loop.config,
                "model_config": model.config.to_dict(),
            },
        )
    if info.distributed:
        dist.barrier()
