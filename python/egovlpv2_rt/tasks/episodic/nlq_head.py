"""EgoNLQ span head: configuration, training, top-k span inference, evaluation, save/load.

Training follows the original's ``EgoNLQ/main.py`` with ``predictor='EgoVLP'``: loss
``CE(start) + CE(end) + 5 * highlight BCE``; AdamW (``eps 1e-6`` as Hugging Face's ``AdamW``
that the original uses) at lr 1e-3, weight decay 0.01 except on biases and LayerNorms; the
learning rate decays linearly to 0 over the run with no warm-up; gradients clipped to norm 1.0;
batch 32; 50 epochs.

What differs, on purpose:

- **Seeded and deterministic.** The original leaves its seeding commented out; here the seed
  fixes the initial weights, the dropout masks and the batch order, so the same seed and data
  give bitwise-identical weights on the CPU (and on CUDA with ``deterministic=True``).
- **No model selection on the reported split.** The original evaluates on val twice per epoch
  and reports the best R@1 IoU 0.3 it saw, on the same val. Here the returned model is the one
  after the last step (``epochs`` or ``max_steps``); ``val_samples`` are only evaluated for the
  log, unless ``select_best_on_val`` is set, in which case the caller must pass a *dev* split
  that is not the one it reports on.
- ``torchrun``: when ``torch.distributed`` is initialised, each global batch (same shuffled
  order on every rank) is split over the ranks (``batch[rank::world]``) and the gradients are
  averaged by DDP; a trailing batch smaller than the world size is skipped by every rank.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ...errors import InputError
from ...eval.grounding import nlq_recall
from ...files import atomic_output, atomic_write_text
from .nlq_data import NLQSample, collate_nlq
from .spans import index_to_time
from .vslnet import VSLNet, highlight_loss, span_loss

__all__ = [
    "CONFIG_NAME",
    "LOG_NAME",
    "WEIGHTS_NAME",
    "NLQHeadConfig",
    "build_nlq_model",
    "decode_topk",
    "evaluate_nlq_head",
    "load_nlq_head",
    "predict_spans",
    "random_spans",
    "read_nlq_head_config",
    "save_nlq_head",
    "train_nlq_head",
]

WEIGHTS_NAME = "nlq_head.safetensors"
CONFIG_NAME = "nlq_head.json"
LOG_NAME = "nlq_train_log.json"
_META_CONFIG = "egovlpv2.nlq_head_config"


@dataclass
class NLQHeadConfig:
    """Settings of the VSLNet head and its training (defaults = the original's).

    ``video_dim``/``text_dim`` ``None`` = taken from the training features. ``max_steps``
    (when set) replaces ``epochs`` as the run length. ``eval_every`` > 0 evaluates
    ``val_samples`` every that many steps (for the log; ``0`` = only at the end).
    ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"``. ``num_threads`` > 0 sets torch's CPU
    threads for the run (restored after); the head's ops are small, and on a shared CPU one
    thread per process is often the fastest. Bitwise reproducibility holds at a fixed count.
    """

    variant: str = "full"
    dim: int = 128
    num_heads: int = 8
    max_pos_len: int = 256
    drop_rate: float = 0.2
    video_dim: int | None = None
    text_dim: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    clip_norm: float = 1.0
    batch_size: int = 32
    epochs: int = 50
    max_steps: int | None = None
    highlight_lambda: float = 5.0
    seed: int = 0
    eval_every: int = 0
    select_best_on_val: bool = False
    device: str = "cpu"
    deterministic: bool = True
    num_threads: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> InputError:
            return InputError(f"NLQHeadConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.variant not in ("full", "small"):
            raise bad("variant", "'full' or 'small'")
        for name in ("dim", "num_heads", "max_pos_len", "batch_size", "epochs"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if self.dim % self.num_heads:
            raise bad("dim", f"a multiple of num_heads={self.num_heads}")
        for name in ("video_dim", "text_dim", "max_steps"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                raise bad(name, "None or an integer >= 1")
        for name in ("seed", "eval_every", "num_threads"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if not is_num(self.drop_rate) or not 0.0 <= self.drop_rate < 1.0:
            raise bad("drop_rate", "in [0, 1)")
        for name in ("lr", "adam_eps", "clip_norm"):
            if not is_num(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a finite number > 0")
        for name in ("weight_decay", "highlight_lambda"):
            if not is_num(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a finite number >= 0")
        for name in ("select_best_on_val", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.device not in ("cpu", "cuda", "auto"):
            raise bad("device", "'cpu', 'cuda' or 'auto'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "NLQ head config") -> NLQHeadConfig:
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected an object of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{where}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**d)

    def run_steps(self, num_samples: int) -> int:
        """Optimizer steps of a run on ``num_samples`` training queries."""
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * math.ceil(num_samples / self.batch_size)


def build_nlq_model(config: NLQHeadConfig) -> VSLNet:
    """A freshly initialised :class:`VSLNet` (``video_dim``/``text_dim`` must be set)."""
    if config.video_dim is None or config.text_dim is None:
        raise InputError("NLQHeadConfig: video_dim and text_dim must be set to build the model")
    return VSLNet(
        video_dim=config.video_dim,
        text_dim=config.text_dim,
        dim=config.dim,
        num_heads=config.num_heads,
        max_pos_len=config.max_pos_len,
        drop_rate=config.drop_rate,
        variant="full" if config.variant == "full" else "small",
    )


# -- inference ------------------------------------------------------------------------------------


def decode_topk(start_logits: Tensor, end_logits: Tensor, lengths: Tensor, k: int) -> np.ndarray:
    """The ``k`` most probable (start, end) cells with start <= end < length, best first.

    The score of a pair is ``softmax(start)[s] * softmax(end)[e]`` over the valid cells (the
    original's upper-triangular outer product), ranked here by ``log p_s + log p_e`` in float64
    so that no valid pair underflows to a tie with the masked ones; ties go to the smaller
    (start, end) in row-major order. A sample with fewer than ``k`` valid pairs repeats its last.

    Args:
        start_logits, end_logits: ``[B, T]``.
        lengths: ``[B]`` valid cells per sample, 1..T.
        k: pairs per sample, >= 1.

    Returns:
        ``[B, k, 2]`` int64 (start, end) cell indices.
    """
    if k < 1:
        raise InputError(f"decode_topk: k must be >= 1, got {k}")
    b, t = start_logits.shape
    lens = lengths.detach().cpu().to(torch.int64)
    if int(lens.min()) < 1 or int(lens.max()) > t:
        raise InputError(f"decode_topk: lengths must be in [1, {t}], got {lens.tolist()}")
    valid = torch.arange(t)[None, :] < lens[:, None]  # [B, T]
    neg = torch.tensor(-math.inf, dtype=torch.float64)
    ls = torch.log_softmax(torch.where(valid, start_logits.detach().cpu().double(), neg), dim=1)
    le = torch.log_softmax(torch.where(valid, end_logits.detach().cpu().double(), neg), dim=1)
    score = ls[:, :, None] + le[:, None, :]  # [B, T, T]
    upper = torch.ones(t, t, dtype=torch.bool).triu()
    pair_ok = upper[None] & valid[:, :, None] & valid[:, None, :]
    flat_score = torch.where(pair_ok, score, neg).reshape(b, -1).numpy()
    order = np.argsort(-flat_score, axis=1, kind="stable")[:, :k]
    n_ok = (lens * (lens + 1) // 2).numpy()
    out = np.empty((b, k, 2), dtype=np.int64)
    for i in range(b):
        flat = order[i, : min(k, int(n_ok[i]))]
        flat = np.concatenate([flat, np.repeat(flat[-1:], k - len(flat))])
        out[i, :, 0], out[i, :, 1] = flat // t, flat % t
    return out


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_sample_lengths(samples: list[NLQSample]) -> None:
    for s in samples:
        if s.video.shape[0] != s.v_len:
            raise InputError(
                f"{s.source or s.sample_id}: video has {s.video.shape[0]} positions but "
                f"v_len is {s.v_len}"
            )


@torch.no_grad()
def predict_spans(
    model: VSLNet, samples: list[NLQSample], k: int = 5, batch_size: int = 64
) -> np.ndarray:
    """Top-``k`` spans per query in seconds, ``[Q, k, 2]`` float64, best first.

    Cell indices become seconds with :func:`~.spans.index_to_time` on each sample's
    ``v_len``-cell grid over its ``duration``."""
    _check_sample_lengths(samples)
    out = np.zeros((len(samples), k, 2), dtype=np.float64)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    try:
        for b0 in range(0, len(samples), batch_size):
            chunk = samples[b0 : b0 + batch_size]
            batch = collate_nlq(chunk).to(device)
            _, start, end = model(batch.video, batch.v_mask, batch.text, batch.q_mask)
            lengths = batch.v_mask.sum(1).round().to(torch.int64)
            idx = decode_topk(start, end, lengths, k)
            for i, s in enumerate(chunk):
                for j in range(k):
                    st, et = index_to_time(
                        int(idx[i, j, 0]), int(idx[i, j, 1]), s.v_len, s.duration
                    )
                    out[b0 + i, j] = (st, et)
    finally:
        model.train(was_training)
    return out


def random_spans(samples: list[NLQSample], k: int, seed: int) -> np.ndarray:
    """A random-span baseline: per query ``k`` spans whose two ends are drawn uniformly in
    ``[0, duration]`` and sorted, ``[Q, k, 2]`` float64 seconds."""
    if k < 1:
        raise InputError(f"random_spans: k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    dur = np.array([s.duration for s in samples], dtype=np.float64)
    u = rng.uniform(0.0, 1.0, size=(len(samples), k, 2)) * dur[:, None, None]
    return np.sort(u, axis=2)


def evaluate_nlq_head(
    model: VSLNet,
    samples: list[NLQSample],
    ks: tuple[int, ...] = (1, 3, 5),
    ious: tuple[float, ...] = (0.3, 0.5),
) -> dict[str, float]:
    """:func:`~egovlpv2_rt.eval.grounding.nlq_recall` of the model's top-``max(ks)`` spans
    against each sample's ``(s_time, e_time)``."""
    pred = predict_spans(model, samples, k=max(ks))
    gt = np.array([[s.s_time, s.e_time] for s in samples], dtype=np.float64).reshape(-1, 2)
    return nlq_recall(pred, gt, ks=ks, ious=ious)


# -- training -------------------------------------------------------------------------------------


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on weights; none on biases and LayerNorm parameters (the original's name rule
    ``bias`` / ``layer_norm`` / ``LayerNorm``, here by module type)."""
    no_decay: set[int] = set()
    for m in model.modules():
        for n, p in m.named_parameters(recurse=False):
            if isinstance(m, nn.LayerNorm) or n == "bias":
                no_decay.add(id(p))
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("NLQHeadConfig.device is 'cuda' but CUDA is not available")
    return torch.device(name)


def _resolved_config(samples: list[NLQSample], config: NLQHeadConfig) -> NLQHeadConfig:
    if not samples:
        raise InputError("train_nlq_head: no training samples")
    dv, dt = samples[0].video.shape[1], samples[0].text.shape[1]
    for name, have in (("video_dim", dv), ("text_dim", dt)):
        want = getattr(config, name)
        if want is not None and want != have:
            raise InputError(
                f"NLQHeadConfig.{name} is {want} but the training features have size {have}"
            )
    for s in samples:
        if s.video.shape[1] != dv or s.text.shape[1] != dt:
            raise InputError(f"{s.source or s.sample_id}: feature sizes differ from the first")
        if s.video.shape[0] > config.max_pos_len or s.text.shape[0] > config.max_pos_len:
            raise InputError(
                f"{s.source or s.sample_id}: {s.video.shape[0]} video / {s.text.shape[0]} "
                f"text positions exceed max_pos_len {config.max_pos_len}"
            )
    _check_sample_lengths(samples)
    return NLQHeadConfig(**{**config.to_dict(), "video_dim": dv, "text_dim": dt})


def train_nlq_head(
    train_samples: list[NLQSample],
    config: NLQHeadConfig,
    *,
    val_samples: list[NLQSample] | None = None,
    out_dir: str | Path | None = None,
) -> tuple[VSLNet, dict[str, Any]]:
    """Train the VSLNet head on ``train_samples``.

    Returns ``(model, log)``: the model after the last step (or the best on
    ``val_samples`` when ``select_best_on_val``; see the module doc), in eval mode; ``log`` has
    the resolved config, step count, world size, losses, val metrics and timings. With
    ``out_dir``, rank 0 writes ``nlq_head.safetensors``, ``nlq_head.json`` and
    ``nlq_train_log.json`` there, each atomically. The caller's RNG state is left untouched.
    """
    cfg = _resolved_config(train_samples, config)
    if cfg.select_best_on_val and not val_samples:
        raise InputError("NLQHeadConfig.select_best_on_val needs val_samples (a dev split)")
    device = _resolve_device(cfg.device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n = len(train_samples)
    if n < world:
        raise InputError(f"train_nlq_head: {n} training samples for {world} ranks")
    total = cfg.run_steps(n)
    fork_devices = [device] if device.type == "cuda" else []
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=fork_devices):
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        try:
            model, log = _train(train_samples, val_samples, cfg, device, rank, world, total)
        finally:
            torch.use_deterministic_algorithms(previous_det)
            torch.set_num_threads(previous_threads)
    if out_dir is not None and rank == 0:
        save_nlq_head(model, cfg, out_dir)
        atomic_write_text(Path(out_dir) / LOG_NAME, json.dumps(log, indent=1) + "\n")
    return model, log


def _train(
    train_samples: list[NLQSample],
    val_samples: list[NLQSample] | None,
    cfg: NLQHeadConfig,
    device: torch.device,
    rank: int,
    world: int,
    total: int,
) -> tuple[VSLNet, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    model = build_nlq_model(cfg).to(device)
    # Dropout masks: a stream per rank, fixed by the seed.
    torch.manual_seed(cfg.seed * 1_000_003 + 1 + rank)
    runner: nn.Module = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.adam_eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(0.0, (total - s) / total)
    )
    log: dict[str, Any] = {
        "config": cfg.to_dict(),
        "steps": total,
        "world_size": world,
        "train_samples": len(train_samples),
        "samples_seen_by_rank": 0,
        "train_loss": [],
        "val": [],
    }
    log_every = max(1, total // 50)
    best: tuple[float, int, dict[str, Tensor]] | None = None
    step, epoch, n = 0, 0, len(train_samples)
    model.train()
    t0 = time.perf_counter()
    while step < total:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        for b0 in range(0, n, cfg.batch_size):
            idx = order[b0 : b0 + cfg.batch_size].tolist()
            if world > 1:
                if len(idx) < world:
                    continue
                idx = idx[rank::world]
            batch = collate_nlq([train_samples[i] for i in idx]).to(device)
            log["samples_seen_by_rank"] += len(idx)
            h, start, end = runner(batch.video, batch.v_mask, batch.text, batch.q_mask)
            loc = span_loss(start, end, batch.s_ind, batch.e_ind)
            hl = highlight_loss(h, batch.highlight, batch.v_mask)
            loss = loc + cfg.highlight_lambda * hl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % log_every == 0 or step == total:
                log["train_loss"].append(
                    {
                        "step": step,
                        "loss": float(loss.detach()),
                        "span_loss": float(loc.detach()),
                        "highlight_loss": float(hl.detach()),
                        "lr": float(scheduler.get_last_lr()[0]),
                    }
                )
            if val_samples and (step == total or (cfg.eval_every and step % cfg.eval_every == 0)):
                metrics = evaluate_nlq_head(model, val_samples)
                model.train()
                log["val"].append({"step": step, **metrics})
                score = metrics["R@1_IoU0.3"]
                if cfg.select_best_on_val and (best is None or score > best[0]):
                    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    best = (score, step, state)
            if step >= total:
                break
        epoch += 1
    seconds = time.perf_counter() - t0
    log["seconds"] = seconds
    log["seconds_per_step"] = seconds / max(1, total)
    log["epochs_started"] = epoch
    log["selected_step"] = total
    if best is not None:
        model.load_state_dict(best[2])
        log["selected_step"] = best[1]
    model.eval()
    return model, copy.deepcopy(log)


# -- files ----------------------------------------------------------------------------------------


def save_nlq_head(model: VSLNet, config: NLQHeadConfig, out_dir: str | Path) -> Path:
    """Write ``nlq_head.safetensors`` (weights, the config in its metadata) and
    ``nlq_head.json`` (the config, for people) into ``out_dir``, atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.to_dict(), indent=1, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = out / WEIGHTS_NAME
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_CONFIG: text})
    atomic_write_text(out / CONFIG_NAME, text + "\n")
    return path


def _weights_path(path: str | Path) -> Path:
    p = Path(path)
    return p / WEIGHTS_NAME if p.is_dir() else p


def read_nlq_head_config(path: str | Path) -> NLQHeadConfig:
    """The config stored in a head's weights file (``path``: the file or its folder)."""
    from safetensors import SafetensorError, safe_open

    p = _weights_path(path)
    if not p.is_file():
        raise InputError(f"{p}: NLQ head weights file does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{p}: not a safetensors file ({exc})") from None
    if _META_CONFIG not in meta:
        raise InputError(f"{p}: no {_META_CONFIG!r} metadata; not an NLQ head written by us")
    try:
        d = json.loads(meta[_META_CONFIG])
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: {_META_CONFIG!r} metadata is not JSON ({exc})") from None
    return NLQHeadConfig.from_dict(d, where=f"{p}: {_META_CONFIG}")


def load_nlq_head(path: str | Path, device: str | torch.device = "cpu") -> VSLNet:
    """The head saved by :func:`save_nlq_head` (``path``: the weights file or its folder), in
    eval mode on ``device``."""
    from safetensors.torch import load_file

    p = _weights_path(path)
    cfg = read_nlq_head_config(p)
    model = build_nlq_model(cfg)
    state = load_file(str(p))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{p}: weights do not match the stored config ({exc})") from None
    return model.to(device).eval()
