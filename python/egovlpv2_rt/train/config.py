"""Typed experiment configuration for pre-training, read from JSON or YAML.

A config file is a mapping with the sections below; every key is checked, and an unknown key
raises :class:`ConfigError` naming the file and the dotted key (``optim.lr_mult_heads``), so a
typo never silently falls back to a default.

.. code-block:: yaml

    model: {preset: tiny, overrides: {projection_dim: 32}}   # or a full ModelConfig dict
    data: {root: /data/synth, num_frames: 4, image_size: 32}
    optim: {lr: 1.0e-4, warmup_steps: 100}
    loss: {preset: original}
    max_steps: 1000
    global_batch_size: 32
    out_dir: runs/exp1
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..config import LEGACY_EXECUTION_KEYS, ModelConfig, preset
from ..errors import InputError
from ..video.reader import Backend
from ..video.sampling import Sampling
from .losses import LossWeights

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossSection",
    "ModelSection",
    "OptimConfig",
    "TrainConfig",
    "build_config",
    "load_train_config",
    "read_config_mapping",
]


T = TypeVar("T")


class ConfigError(InputError):
    """A config file is malformed; the message names the file and the key."""


@dataclass
class ModelSection:
    """The model: a named preset with top-level overrides, or a full ``ModelConfig`` mapping.

    ``overrides`` may hold nested sections (``{"video": {"img_size": 64}}``), merged into the
    preset's values. ``init_checkpoint`` (a model file, ``.safetensors`` or a weights-only
    torch file, or ``default``: the shipped model; as in the fine-tuning configs) starts the
    run from its weights instead of a random start (continued pre-training); its architecture
    must be the one described here and its vocabulary the tokenizer's: a mismatch is an error
    naming the file and the keys.
    """

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    init_checkpoint: str = ""

    def build(self) -> ModelConfig:
        for key in LEGACY_EXECUTION_KEYS:
            if key in self.overrides or key in (self.config or {}):
                raise ValueError(
                    f"{key} is how the model runs, not what it is: set it at the "
                    f"top level of the experiment (`{key}: ...`), not under model"
                )
        if self.config is not None:
            return ModelConfig.from_dict(self.config)
        base = preset(self.preset).to_dict()
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return ModelConfig.from_dict(base)


@dataclass
class DataConfig:
    """Training data: an EgoClip-format folder.

    Attributes:
        root: folder holding ``metadata`` and ``video_dir``.
        metadata: EgoClip TSV, relative to ``root``.
        video_dir: video folder relative to ``root``; a clip of ``video_uid`` reads
            ``<video_dir>/<video_uid>.mp4``.
        num_frames: frames per clip.
        sampling: ``"uniform"`` (segment midpoints) or ``"rand"`` (one random frame per segment).
        image_size: square model input size; frames are resized to it.
        backend: video backend name for ``egovlpv2_rt.video.read_clip``.
        train_augment: random resized crop + flip on training clips.
        cache_clips: keep decoded clips in memory (only deterministic reads are cached).
        neg_seconds: scene-aware pairing as the original's ``neg_param``: each sample comes with
            a second clip from the same ``neg_seconds`` segment of the same video (0: off).
        max_text_length: captions are padded / truncated to this many tokens.
        tokenizer: ``tokenizer.json`` (or a folder with it / vocab.json + merges.txt).
    """

    root: str = ""
    metadata: str = "egoclip.csv"
    video_dir: str = "videos"
    num_frames: int = 4
    sampling: Sampling = "rand"
    image_size: int = 224
    backend: Backend = "pyav"
    train_augment: bool = False
    cache_clips: bool = False
    neg_seconds: float = 0.0
    max_text_length: int = 16
    tokenizer: str = ""


@dataclass
class OptimConfig:
    """AdamW with the original's parameter groups and a warm-up + cosine schedule.

    ``lr_mult_head`` multiplies the learning rate of ``mlm_score``, ``itm_score``, ``txt_proj``,
    ``vid_proj`` (and the EgoTaskQA answer head, ``qa_head``); ``lr_mult_cross_modal`` that of
    every ``cross_modal``/``i2t``/``t2i`` parameter (x4 both in EgoVLPv2's pre-training).
    """

    lr: float = 3e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    lr_mult_head: float = 4.0
    lr_mult_cross_modal: float = 4.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0


@dataclass
class LossSection:
    """Loss weights: ``preset: original`` (EgoNCE + MLM + 2 VTM), ``paper`` with ``gamma`` and
    ``delta`` (``(1-g-d) EgoNCE + g MLM + d VTM``), or ``custom`` with the three weights.

    Objective switches (the paper's ablation rows): ``contrastive`` ``egonce`` (verb and noun
    positives as ``use_verb`` / ``use_noun``), ``infonce`` (both off: the diagonal only) or
    ``off`` (weight 0; the similarities still steer the VTM draw); ``masked_lm`` False drops MLM;
    ``vtm_negatives`` ``hard`` (drawn by similarity, the original), ``random`` (uniform over the
    non-positives) or ``off`` (no VTM). They act on the weights of ``preset``.

    ``time_reversal`` (not in the original; off by default): each caption's own clip played
    backwards is one more EgoNCE negative of that caption, and half of the VTM negatives are such
    reversed clips (:func:`~egovlpv2_rt.train.losses.with_time_reversal`). Costs one more video
    tower pass per step; teaches the temporal direction that contrastive video-language models
    otherwise ignore ("picks up" vs "puts down", left vs right).
    ``time_reversal_share`` (0.5): the share of the VTM negatives that are reversed clips.

    ``object_negatives`` (not in the original; 0 by default): the share of the VTM negatives
    (other than time-reversal ones) redrawn among the clips and captions that share a verb tag
    and no noun tag with the slot's own (:func:`~egovlpv2_rt.train.losses.with_object_negatives`),
    so that VTM has to check which object is acted on; needs the verb and noun positives.

    ``mlm_start_step`` / ``vtm_start_step``: the first step at which MLM / VTM join (0: from the
    start). ``mlm_stop_step``: the first step without MLM (0: MLM never stops); must be after
    ``mlm_start_step``. Trained from scratch, VTM sits at chance (cross-entropy 0.69) until the dual
    encoder's features separate the captions, while costing a third of each step; EgoVLPv2
    itself starts from pretrained towers and needs no such stage.
    """

    preset: str = "original"
    gamma: float = 0.25
    delta: float = 0.5
    egonce: float = 1.0
    mlm: float = 1.0
    vtm: float = 2.0
    temperature: float = 0.05
    use_verb: bool = True
    use_noun: bool = True
    mlm_start_step: int = 0
    vtm_start_step: int = 0
    mlm_stop_step: int = 0
    contrastive: str = "egonce"
    masked_lm: bool = True
    vtm_negatives: str = "hard"
    time_reversal: bool = False
    object_negatives: float = 0.0
    time_reversal_share: float = 0.5

    def weights(self) -> LossWeights:
        """The weights of ``preset`` with the switched-off objectives at 0."""
        if self.preset == "original":
            w = LossWeights.original()
        elif self.preset == "paper":
            w = LossWeights.paper(self.gamma, self.delta)
        elif self.preset == "custom":
            w = LossWeights(self.egonce, self.mlm, self.vtm)
        else:
            raise ValueError(
                f"loss.preset must be 'original', 'paper' or 'custom', got {self.preset!r}"
            )
        return LossWeights(
            0.0 if self.contrastive == "off" else w.egonce,
            w.mlm if self.masked_lm else 0.0,
            0.0 if self.vtm_negatives == "off" else w.vtm,
        )

    @property
    def verb_positives(self) -> bool:
        """EgoNCE's verb positives are on (``contrastive: egonce`` and ``use_verb``)."""
        return self.contrastive == "egonce" and self.use_verb

    @property
    def noun_positives(self) -> bool:
        """EgoNCE's noun positives are on (``contrastive: egonce`` and ``use_noun``)."""
        return self.contrastive == "egonce" and self.use_noun


@dataclass
class EvalConfig:
    """EgoMCQ evaluation at the end of training (and every ``every_steps`` if > 0)."""

    egomcq: str = ""
    video_dir: str = ""
    every_steps: int = 0
    batch_size: int = 16


@dataclass
class TrainConfig:
    """One pre-training experiment.

    ``init_scale`` multiplies the initial weight matrices of every Linear and Embedding layer
    of a model trained from scratch (not biases, LayerNorms, gates, or the time attention's
    identity ``proj``). The original's std 0.02 suits width 768; a narrow model keeps the same
    signal propagation with ``sqrt(768 / width)``. ``gate_init`` is the starting value of the
    cross-attention gates ``alpha_i2t`` / ``alpha_t2i`` (0 in the original, whose towers are
    pre-trained); from scratch, a zero gate and a random cross-attention form a saddle that VTM
    takes hundreds of steps to leave. Both shape a random start, so with
    ``model.init_checkpoint`` they must keep their defaults. ``attention_impl`` (``auto`` |
    ``fused`` | ``reference``) and ``gradient_checkpointing`` say how the model runs; they are
    not saved with it.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossSection = field(default_factory=LossSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = "runs/egovlpv2"
    seed: int = 0
    global_batch_size: int = 16
    max_steps: int = 100
    checkpoint_every: int = 50
    log_every: int = 10
    amp: str = "auto"
    deterministic: bool = False
    attention_impl: str = "auto"
    gradient_checkpointing: bool = False
    progress: bool = True
    num_threads: int = 0
    precision: str = "float32"
    init_scale: float = 1.0
    gate_init: float = 0.0

    def validate(self, where: str = "config") -> None:
        """Range checks that the dataclass types alone do not express."""

        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                value: Any = self
                for part in key.split("."):
                    value = getattr(value, part)
                raise ConfigError(f"{where}: {key}: {msg}, got {value!r}")

        need(self.global_batch_size >= 2, "global_batch_size", "must be >= 2 (contrastive loss)")
        need(self.max_steps >= 1, "max_steps", "must be >= 1")
        need(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.num_threads >= 0, "num_threads", "must be >= 0 (0: the default)")
        need(self.amp in ("auto", "bf16", "off"), "amp", "must be 'auto', 'bf16' or 'off'")
        need(
            self.attention_impl in ("auto", "fused", "reference"),
            "attention_impl",
            "must be 'auto', 'fused' or 'reference'",
        )
        need(
            self.precision in ("float32", "float64"),
            "precision",
            "must be 'float32' or 'float64' (parameters and activations)",
        )
        need(
            self.data.sampling in ("uniform", "rand"),
            "data.sampling",
            "must be 'uniform' or 'rand'",
        )
        need(self.data.num_frames >= 1, "data.num_frames", "must be >= 1")
        need(self.data.image_size >= 1, "data.image_size", "must be >= 1")
        need(
            self.data.max_text_length >= 2,
            "data.max_text_length",
            "must be >= 2 (room for <s> and </s>)",
        )
        need(self.data.neg_seconds >= 0, "data.neg_seconds", "must be >= 0")
        need(self.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
        need(self.eval.every_steps >= 0, "eval.every_steps", "must be >= 0 (0: at the end only)")
        need(self.optim.lr > 0, "optim.lr", "must be > 0")
        need(self.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        need(all(0 <= b < 1 for b in self.optim.betas), "optim.betas", "must both be in [0, 1)")
        need(self.optim.eps > 0, "optim.eps", "must be > 0")
        need(self.optim.lr_mult_head > 0, "optim.lr_mult_head", "must be > 0")
        need(self.optim.lr_mult_cross_modal > 0, "optim.lr_mult_cross_modal", "must be > 0")
        need(self.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        need(0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        need(self.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0: off)")
        need(self.loss.temperature > 0, "loss.temperature", "must be > 0")
        need(
            self.loss.contrastive in ("egonce", "infonce", "off"),
            "loss.contrastive",
            f"must be 'egonce', 'infonce' or 'off', got {self.loss.contrastive!r}",
        )
        need(
            self.loss.vtm_negatives in ("hard", "random", "off"),
            "loss.vtm_negatives",
            f"must be 'hard', 'random' or 'off', got {self.loss.vtm_negatives!r}",
        )
        need(
            0.0 <= self.loss.object_negatives <= 1.0,
            "loss.object_negatives",
            "must be in [0, 1]",
        )
        need(
            0.0 <= self.loss.time_reversal_share <= 1.0,
            "loss.time_reversal_share",
            "must be in [0, 1]",
        )
        need(
            self.loss.time_reversal or self.loss.time_reversal_share == 0.5,
            "loss.time_reversal_share",
            "sets the share of time-reversal negatives, so it needs loss.time_reversal: true",
        )
        if self.loss.object_negatives > 0:
            need(
                self.loss.verb_positives and self.loss.noun_positives,
                "loss.object_negatives",
                "needs the verb and noun tags (contrastive 'egonce' with use_verb and use_noun)",
            )
            need(
                self.loss.vtm_negatives != "off",
                "loss.object_negatives",
                "needs VTM (loss.vtm_negatives is 'off')",
            )
        need(self.loss.mlm_start_step >= 0, "loss.mlm_start_step", "must be >= 0")
        need(self.loss.vtm_start_step >= 0, "loss.vtm_start_step", "must be >= 0")
        need(
            self.loss.mlm_stop_step == 0 or self.loss.mlm_stop_step > self.loss.mlm_start_step,
            "loss.mlm_stop_step",
            f"must be 0 (never) or > loss.mlm_start_step ({self.loss.mlm_start_step})",
        )
        need(self.init_scale > 0, "init_scale", "must be > 0")
        if self.model.init_checkpoint:
            need(self.init_scale == 1.0, "init_scale", "must be 1 with model.init_checkpoint")
            need(self.gate_init == 0.0, "gate_init", "must be 0 with model.init_checkpoint")
        try:
            self.loss.weights()
        except ValueError as e:
            raise ConfigError(f"{where}: loss: {e}") from None
        if self.data.neg_seconds > 0:
            need(
                self.global_batch_size % 2 == 0,
                "global_batch_size",
                "must be even with data.neg_seconds > 0 (pairs)",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key, where)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise ConfigError(
                f"{where}: {key}: expected a list of "
                f"{len(typing.get_args(tp))} numbers, got {value!r}"
            )
        return tuple(
            _coerce(v, a, key, where) for v, a in zip(value, typing.get_args(tp), strict=True)
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(float(value))
        ):
            raise ConfigError(f"{where}: {key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices or not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected one of {list(choices)}, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: {prefix or 'top level'}: expected a mapping, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key {dotted!r}; known keys at this level: {sorted(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], dotted, where)
    return cls(**kwargs)


def train_config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a plain mapping."""
    cfg = _build(TrainConfig, data, "", where)
    cfg.validate(where)
    try:
        cfg.model.build()
    except (ValueError, TypeError) as e:  # InputError from ModelConfig, naming the key
        raise ConfigError(f"{where}: model: {e}") from None
    return cfg


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) experiment file.

    Relative paths in ``data.root``, ``data.tokenizer``, ``eval.*`` and ``out_dir`` stay as
    written (relative to the working directory).

    Raises:
        ConfigError: unreadable file, unknown key (named with its dotted path) or a bad value.
    """
    return train_config_from_dict(read_config_mapping(path), str(path))


def build_config(cls: type[T], data: Any, where: str) -> T:
    """The dataclass ``cls`` from a plain mapping, every key and value checked as for
    :class:`TrainConfig` (:class:`ConfigError` naming ``where``, the dotted key, the expected
    type and the value)."""
    out: T = _build(cls, data, "", where)
    return out


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of a JSON or YAML config file (an empty file is ``{}``).

    Raises:
        ConfigError: a missing, unreadable or unparsable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    if yaml_file:
        import yaml  # the `train` extra; a missing package is reported as such, not as bad YAML
    try:
        # safe_load: YAML tags (!!python/object/apply:...) never construct objects or run code.
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parser error becomes a named ConfigError
        raise ConfigError(f"{path}: cannot parse ({e})") from None
    return data if data is not None else {}
