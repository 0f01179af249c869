"""Typed configuration of the EgoVLPv2 model.

Four dataclasses describe the architecture (``VideoConfig``, ``TextConfig``, ``FusionConfig``,
``LossConfig``) and ``ModelConfig`` groups them with the projection size. A config says what the
model *is* and is saved with its weights; how it runs (attention implementation, gradient
checkpointing, pixel checks) is the caller's choice, given to ``EgoVLPv2(...)`` and never saved.
Presets: ``base`` (the released model), ``base-smallproj`` (its 256-d "small" projector
variant, used by the EK-100 and Charades-Ego checkpoints), ``tiny`` (the golden parity
configuration) and ``tiny-smallproj``.

Every config is JSON-able (``to_dict`` / ``from_dict``); unknown keys are rejected by name so a
typo in a config file cannot silently fall back to a default. ``ModelConfig.from_golden_hparams``
reads the ``hparams`` layout of the golden ``<set>_config.json`` files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "PRESETS",
    "PROJECTIONS",
    "FusionConfig",
    "LossConfig",
    "ModelConfig",
    "TextConfig",
    "VideoConfig",
    "preset",
]

TASKS = ("EgoNCE", "ITM", "MLM")
# Retrieval projector kinds of the released checkpoints. "minimal" (EgoVLPv2.pth,
# 768-4096-4096-4096): Linear(no bias)-ReLU-Linear-ReLU-Linear in both towers. "small"
# (EgoVLPv2_smallproj*.pth and the EK-100 / Charades-Ego fine-tuned files, 768-256): text
# ReLU-Linear (the ReLU comes first, as in the original's model_epic_charades.py), video Linear.
PROJECTIONS = ("minimal", "small")
# Execution settings that configs of egovlpv2-rt 0.1 stored beside the architecture.
LEGACY_EXECUTION_KEYS = ("attention_impl", "check_finite_pixels", "gradient_checkpointing")

_T = TypeVar("_T", bound="DataclassInstance")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


def _describe(value: Any) -> str:
    """A value as the error messages show it: repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _positive_int(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{_key(owner, name)} must be a positive int, got {_describe(value)}")


def _probability(owner: str, name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 <= float(value) < 1.0:
        raise InputError(
            f"{_key(owner, name)} must be a probability in [0, 1), got {_describe(value)}"
        )


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool: ``true`` in a config file is no number)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotated type (resolved once per class: the module uses postponed
    annotations, so ``Field.type`` is a string)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# Fields that count something (sizes, layers, heads): positive ints. Probabilities: [0, 1).
_COUNTS = {
    "VideoConfig": (
        "img_size",
        "patch_size",
        "in_chans",
        "embed_dim",
        "depth",
        "num_heads",
        "num_frames",
    ),
    "TextConfig": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
    ),
    "FusionConfig": (
        "vocab_size",
        "hidden_size",
        "num_heads",
        "num_layers",
        "mlp_ratio",
        "input_image_embed_size",
        "input_text_embed_size",
    ),
    "ModelConfig": ("embed_dim", "projection_dim"),
}
_PROBABILITIES = {
    "VideoConfig": ("drop_rate", "attn_drop_rate", "drop_path_rate"),
    "TextConfig": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "FusionConfig": ("drop_rate", "mlm_prob"),
}


def _key(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def _check_types(cls: type, values: dict[str, Any], owner: str) -> None:
    """Every value of ``values`` has its field's annotated type: bools are true/false (never a
    string or a number), ints are ints (not bools, not 2.0: a count written as a float is
    refused rather than guessed), floats are finite numbers, strings are strings. Sections
    (nested configs) are checked by their own class. Raises ``InputError`` naming
    ``owner.field``, the expected type and the value; counts must also be positive and
    probabilities in [0, 1)."""
    counts = _COUNTS.get(cls.__name__, ())
    probabilities = _PROBABILITIES.get(cls.__name__, ())
    for name, tp in _field_types(cls).items():
        if name not in values:
            continue
        value = values[name]
        if name in counts:
            _positive_int(owner, name, value)
            continue
        if name in probabilities:
            _probability(owner, name, value)
            continue
        if tp is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an int"
        elif tp is float:
            ok, expected = _is_number(value), "a finite number"
        elif tp is str:
            ok, expected = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise InputError(f"{_key(owner, name)} must be {expected}, got {_describe(value)}")


def _from_dict(cls: type[_T], data: Any, owner: str) -> _T:
    """Build dataclass ``cls`` from ``data``; unknown keys and values of the wrong type raise
    ``InputError`` naming ``owner.key``."""
    if not isinstance(data, dict):
        raise InputError(f"{owner}: expected a mapping, got {_describe(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise InputError(f"{owner}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    _check_types(cls, data, owner)
    return cls(**data)


@dataclass(frozen=True)
class VideoConfig:
    """SpaceTimeTransformer (divided time-then-space attention), ``video_model.*``.

    ``num_frames`` is the maximum clip length: the length of ``temporal_embed``.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_frames: int = 4
    layer_norm_eps: float = 1e-5
    # How the time attention starts before training: "zeros" (qkv = 0, proj weight = 1, the
    # original's choice, so the network starts as the image ViT) or "rand".
    time_init: str = "zeros"
    attention_style: str = "frozen-in-time"
    # The original builds the video tower with all dropouts at 0; kept configurable.
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        o = "VideoConfig"
        _check_types(VideoConfig, self.__dict__, o)
        _require(
            self.embed_dim % self.num_heads == 0,
            f"{o}.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})",
        )
        _require(
            self.img_size % self.patch_size == 0,
            f"{o}.img_size ({self.img_size}) must be divisible by patch_size ({self.patch_size})",
        )
        _require(self.mlp_ratio > 0, f"{o}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        _require(
            self.layer_norm_eps > 0, f"{o}.layer_norm_eps must be > 0, got {self.layer_norm_eps}"
        )
        _require(
            self.time_init in ("zeros", "rand"),
            f"{o}.time_init must be 'zeros' or 'rand', got {self.time_init!r}",
        )
        _require(
            self.attention_style == "frozen-in-time",
            f"{o}.attention_style: only 'frozen-in-time' exists, got {self.attention_style!r}",
        )

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    """RoBERTa text tower, ``text_model.*`` (names as ``transformers.RobertaConfig``)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    position_embedding_type: str = "absolute"

    def __post_init__(self) -> None:
        o = "TextConfig"
        _check_types(TextConfig, self.__dict__, o)
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            f"{o}.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
            f"({self.num_attention_heads})",
        )
        _require(
            self.hidden_act == "gelu",
            f"{o}.hidden_act: only 'gelu' (erf GELU, as roberta-base) is supported, "
            f"got {self.hidden_act!r}",
        )
        _require(
            self.position_embedding_type == "absolute",
            f"{o}.position_embedding_type: only 'absolute' is supported, "
            f"got {self.position_embedding_type!r}",
        )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and 0 <= value < self.vocab_size,
                f"{o}.{name} must be in [0, vocab_size={self.vocab_size}), got {value!r}",
            )
        _require(
            self.max_position_embeddings > self.pad_token_id + 1,
            f"{o}.max_position_embeddings ({self.max_position_embeddings}) must exceed "
            f"pad_token_id + 1 ({self.pad_token_id + 1}): positions start after the pad id",
        )
        _require(
            self.layer_norm_eps > 0, f"{o}.layer_norm_eps must be > 0, got {self.layer_norm_eps}"
        )

    @property
    def max_text_length(self) -> int:
        """Longest token sequence the position table can embed (RoBERTa offsets by pad+1)."""
        return self.max_position_embeddings - self.pad_token_id - 1


@dataclass(frozen=True)
class FusionConfig:
    """Fusion-in-the-backbone settings (the original's ``EgoNCE_MLM_ITM_Config.yml``).

    The top ``num_fuse_block`` video blocks and text layers carry gated cross-attention.
    ``hidden_size`` is the width of the cross-modal transforms, poolers and MLM head.
    """

    vocab_size: int = 50265
    hidden_size: int = 768
    num_heads: int = 12
    num_layers: int = 12
    mlp_ratio: int = 4
    drop_rate: float = 0.1
    num_fuse_block: int = 6
    input_image_embed_size: int = 768
    input_text_embed_size: int = 768
    mlm_prob: float = 0.15
    # LayerNorm eps of the top-level fusion ``norm`` (1e-6) and of the MLM head transform (1e-12,
    # BertPredictionHeadTransform's default), as in the original.
    norm_eps: float = 1e-6
    mlm_layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        o = "FusionConfig"
        _check_types(FusionConfig, self.__dict__, o)
        _require(
            isinstance(self.num_fuse_block, int) and 0 <= self.num_fuse_block <= self.num_layers,
            f"{o}.num_fuse_block must be in [0, num_layers={self.num_layers}], "
            f"got {self.num_fuse_block!r}",
        )
        _require(
            self.hidden_size % self.num_heads == 0,
            f"{o}.hidden_size ({self.hidden_size}) must be divisible by num_heads "
            f"({self.num_heads})",
        )
        for name in ("norm_eps", "mlm_layer_norm_eps"):
            value = getattr(self, name)
            _require(value > 0, f"{o}.{name} must be > 0, got {value}")


@dataclass(frozen=True)
class LossConfig:
    """EgoNCE settings (used by the training code; stored so a config round-trips)."""

    type: str = "EgoNCE"
    temperature: float = 0.05
    noun: bool = True
    verb: bool = True

    def __post_init__(self) -> None:
        _check_types(LossConfig, self.__dict__, "LossConfig")
        _require(
            self.temperature > 0, f"LossConfig.temperature must be > 0, got {self.temperature!r}"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Whole EgoVLPv2 model.

    ``embed_dim`` is the video width seen by the fusion head (top-level ``cls_token`` and
    ``norm``); ``projection_dim`` the size of the retrieval embeddings (``txt_proj``/``vid_proj``).
    """

    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    embed_dim: int = 768
    projection_dim: int = 4096
    projection: str = "minimal"
    task_names: str = "EgoNCE_ITM_MLM"

    def __post_init__(self) -> None:
        o = "ModelConfig"
        for name, cls in (
            ("video", VideoConfig),
            ("text", TextConfig),
            ("fusion", FusionConfig),
            ("loss", LossConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                raise InputError(
                    f"{o}.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}"
                )
        _check_types(ModelConfig, self.__dict__, o)
        _require(
            self.projection in PROJECTIONS,
            f"{o}.projection must be 'minimal' (Linear-ReLU-Linear-ReLU-Linear, EgoVLPv2.pth) "
            f"or 'small' (text ReLU-Linear, video Linear, EgoVLPv2_smallproj.pth), "
            f"got {self.projection!r}",
        )
        tasks = self.task_names.split("_")
        _require(
            bool(tasks) and all(t in TASKS for t in tasks),
            f"{o}.task_names must be '_'-joined names from {TASKS}, got {self.task_names!r}",
        )
        v, t, f = self.video, self.text, self.fusion
        _require(
            v.depth == t.num_hidden_layers == f.num_layers,
            f"{o}: video.depth ({v.depth}), text.num_hidden_layers ({t.num_hidden_layers}) and "
            f"fusion.num_layers ({f.num_layers}) must be equal: layers are fused pairwise",
        )
        _require(
            self.embed_dim == v.embed_dim,
            f"{o}.embed_dim ({self.embed_dim}) must equal video.embed_dim ({v.embed_dim}): the "
            "fusion cls_token and norm act on video tokens",
        )
        _require(
            f.input_image_embed_size == v.embed_dim,
            f"{o}: fusion.input_image_embed_size ({f.input_image_embed_size}) must equal "
            f"video.embed_dim ({v.embed_dim})",
        )
        _require(
            f.input_text_embed_size == t.hidden_size,
            f"{o}: fusion.input_text_embed_size ({f.input_text_embed_size}) must equal "
            f"text.hidden_size ({t.hidden_size})",
        )
        _require(
            f.vocab_size == t.vocab_size,
            f"{o}: fusion.vocab_size ({f.vocab_size}) must equal text.vocab_size "
            f"({t.vocab_size}): the MLM head predicts text tokens",
        )

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def num_unfused_layers(self) -> int:
        return self.fusion.num_layers - self.fusion.num_fuse_block

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names (``"EgoNCE"``, ``"ITM"``, ``"MLM"``); ITM/MLM heads exist only if named."""
        return tuple(self.task_names.split("_"))

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-able)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> ModelConfig:
        """Inverse of ``to_dict``. Missing keys take defaults; an unknown key, a value of the
        wrong type (``qkv_bias: "false"``, ``num_frames: 2.5``) or out of range
        (``num_frames: 0``) raises :class:`~egovlpv2_rt.errors.InputError` naming the dotted
        key (``video.num_frames``), what was expected and the value, prefixed with ``where``
        (the file it came from) when given.

        Configs saved by egovlpv2-rt 0.1 also hold the execution settings ``attention_impl``,
        ``check_finite_pixels`` and ``gradient_checkpointing``; they describe no part of the
        model and are dropped (pass them to ``EgoVLPv2(...)`` instead).
        """
        try:
            return cls._from_mapping(data)
        except InputError as exc:
            if where is None:
                raise
            raise InputError(f"{where}: {exc}") from None

    @classmethod
    def _from_mapping(cls, data: Any) -> ModelConfig:
        if not isinstance(data, dict):
            raise InputError(f"model config: expected a mapping, got {_describe(data)}")
        data = {k: v for k, v in data.items() if k not in LEGACY_EXECUTION_KEYS}
        subs = {
            "video": VideoConfig,
            "text": TextConfig,
            "fusion": FusionConfig,
            "loss": LossConfig,
        }
        for name, sub_cls in subs.items():
            if name in data:
                data[name] = _from_dict(sub_cls, data[name], name)
        # Top-level keys are named bare (``embed_dim``), sections by their key (``video.x``).
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            raise InputError(
                f"ModelConfig: unknown key(s) {unknown}; known keys are {sorted(names)}"
            )
        _check_types(cls, {k: v for k, v in data.items() if k not in subs}, "")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, where: str | None = None) -> ModelConfig:
        """``from_dict`` of a JSON text; text that is not JSON raises ``InputError`` too."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"{where or 'model config'}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_golden_hparams(cls, hparams: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Build from the ``hparams`` object of a golden ``<set>_config.json``.

        Layout: ``{"text": {...}, "video": {...}, "fusion": {...}, "model": {...}, "loss": {...},
        "inputs": {...}, "seed": int}``. ``inputs`` and ``seed`` describe the golden inputs, not
        the model, and are ignored, as is ``fusion.use_checkpoint`` (gradient checkpointing is an
        execution setting). ``overrides`` set top-level ``ModelConfig`` fields.
        """
        if not isinstance(hparams, dict):
            raise TypeError(f"hparams: expected a dict, got {type(hparams).__name__}")
        known = {"text", "video", "fusion", "model", "loss", "inputs", "seed"}
        unknown = sorted(set(hparams) - known)
        if unknown:
            raise ValueError(f"hparams: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for required in ("text", "video", "fusion", "model"):
            if required not in hparams:
                raise ValueError(f"hparams: missing section {required!r}")
        fusion = dict(hparams["fusion"])
        fusion.pop("use_checkpoint", None)
        data: dict[str, Any] = {
            "text": dict(hparams["text"]),
            "video": dict(hparams["video"]),
            "fusion": fusion,
        }
        if "loss" in hparams:
            data["loss"] = dict(hparams["loss"])
        model = dict(hparams["model"])
        model_known = {"embed_dim", "projection_dim", "projection", "task_names"}
        unknown = sorted(set(model) - model_known)
        if unknown:
            raise ValueError(f"hparams.model: unknown key(s) {unknown}")
        data.update(model)
        data.update(overrides)
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelConfig:
        """Copy with top-level fields changed (``dataclasses.replace`` with validation)."""
        return dataclasses.replace(self, **changes)


def _base() -> ModelConfig:
    return ModelConfig()


def _tiny() -> ModelConfig:
    return ModelConfig(
        video=VideoConfig(
            img_size=32, patch_size=16, embed_dim=64, depth=12, num_heads=4, num_frames=4
        ),
        text=TextConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=12,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=40,
        ),
        fusion=FusionConfig(
            vocab_size=1000,
            hidden_size=64,
            num_heads=4,
            num_layers=12,
            num_fuse_block=6,
            input_image_embed_size=64,
            input_text_embed_size=64,
        ),
        embed_dim=64,
        projection_dim=32,
    )


def _base_smallproj() -> ModelConfig:
    # EgoVLPv2_smallproj.pth / _epoch1.pth, EK-100_finetune.pth, Charades-Ego_finetune.pth.
    return ModelConfig(projection="small", projection_dim=256)


def _tiny_smallproj() -> ModelConfig:
    return _tiny().replace(projection="small", projection_dim=16)


PRESETS = {
    "base": _base,
    "base-smallproj": _base_smallproj,
    "tiny": _tiny,
    "tiny-smallproj": _tiny_smallproj,
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Named configuration: ``"base"`` (released EgoVLPv2: ViT-B/16 224 px, 4 frames,
    roberta-base, 6 fused layers, projection "minimal" 4096), ``"base-smallproj"`` (the same
    with the "small" 256-d projector of the EK-100 / Charades-Ego checkpoints), ``"tiny"`` (the
    golden parity model) or ``"tiny-smallproj"`` (tiny with a 16-d "small" projector).
    ``overrides`` replace top-level fields, e.g. ``preset("tiny", projection_dim=16)``."""
    if name not in PRESETS:
        raise InputError(f"preset: unknown name {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]().replace(**overrides)
