"""Checkpoints: released EgoVLPv2 ``.pth`` files, self-describing safetensors files, and the
initialisation of the towers from a local HF ``roberta-base`` directory and a timm
``vit_base_patch16_224`` state dict.

The model's state-dict keys are the original ``FrozenInTime`` keys, so a released checkpoint
needs only the original's own fixes: unwrap ``'state_dict'``, strip the DistributedDataParallel
``module.`` prefix, and fit ``video_model.temporal_embed`` to the configured frame count
(truncate when the checkpoint has more frames, bilinear interpolation with
``align_corners=True`` when it has fewer; ``FrozenInTime._inflate_positional_embeds``).

Everything is loaded with ``torch.load(weights_only=True)``: no code from a checkpoint runs.
Every tensor that is loaded into a model is checked once against the model's own tensor of that
name (:func:`~egovlpv2_rt.modeling.validation.check_weights`): floating point where the model's
is, and finite; otherwise :class:`WeightsError` names the tensor and the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ModelConfig, preset
from .errors import InputError, UnsafeFileError
from .files import atomic_output
from .modeling.model import EgoVLPv2, init_time_attention_zeros
from .modeling.validation import WeightsError, check_weights
from .modeling.video import SpaceTimeBlock

__all__ = [
    "CONFIG_METADATA_KEY",
    "CheckpointMismatchError",
    "LoadReport",
    "ProjectorMismatchError",
    "WeightsError",
    "detect_projection",
    "infer_config",
    "init_text_from_hf_roberta",
    "init_video_from_timm",
    "load_checkpoint",
    "load_model",
    "prepare_state_dict",
    "read_checkpoint",
    "resize_temporal_embed",
    "save_safetensors",
]

CONFIG_METADATA_KEY = "egovlpv2_config"
TEMPORAL_KEY = "video_model.temporal_embed"
POSITION_IDS_KEY = "text_model.embeddings.position_ids"

PathLike = str | os.PathLike


class CheckpointMismatchError(InputError):
    """A state dict does not fit a model. ``missing``: keys the model needs and the checkpoint
    lacks; ``unexpected``: checkpoint keys the model does not have; ``mismatched``:
    ``(key, checkpoint shape, model shape)``."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"{source} does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if mismatched:
            lines.append(
                f"  shape mismatches ({len(mismatched)}): "
                + ", ".join(
                    f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in mismatched
                )
            )
        super().__init__("\n".join(lines))


# How each projector kind shows in a state dict (see config.PROJECTIONS).
_PROJECTOR_KEYS = {"minimal": "txt_proj.0/2/4, vid_proj.0/2/4", "small": "txt_proj.1, vid_proj.0"}
_PROJECTOR_PRESETS = {"minimal": "base", "small": "base-smallproj"}


class ProjectorMismatchError(CheckpointMismatchError):
    """The checkpoint's retrieval projector (``txt_proj``/``vid_proj``) is of another kind than
    the model's config says. One line: the file, both kinds and the keys that tell them."""

    def __init__(self, source: str, checkpoint_kind: str, config_kind: str) -> None:
        self.source = source
        self.checkpoint_kind = checkpoint_kind
        self.config_kind = config_kind
        self.missing, self.unexpected, self.mismatched = [], [], []
        InputError.__init__(
            self,
            f"{source}: checkpoint has the {checkpoint_kind!r} projector "
            f"({_PROJECTOR_KEYS[checkpoint_kind]}), config says {config_kind!r}; build the "
            f"model with projection={checkpoint_kind!r} (preset "
            f"{_PROJECTOR_PRESETS[checkpoint_kind]!r} for the full-size model)",
        )


def detect_projection(keys: Iterable[str]) -> str | None:
    """The projector kind a state dict's keys (``module.`` already stripped) carry:
    ``"minimal"`` (``txt_proj.0.weight``, ``txt_proj.2.*``, ``txt_proj.4.*``, same for
    ``vid_proj``), ``"small"`` (``txt_proj.1.*``, ``vid_proj.0.bias``), or None when it has no
    projector keys or keys of both kinds (the key comparison then names them)."""
    names = set(keys)
    minimal = any(
        f"{tower}.{i}.weight" in names for tower in ("txt_proj", "vid_proj") for i in (2, 4)
    ) or ("txt_proj.0.weight" in names)
    # The minimal projector's first Linear has no bias, so vid_proj.0.bias is small-only.
    small = "txt_proj.1.weight" in names or "vid_proj.0.bias" in names
    if minimal == small:
        return None
    return "minimal" if minimal else "small"


@dataclass
class LoadReport:
    """What a load did: keys loaded, keys left at their initial value (non-strict loads and
    tower initialisation), resized tensors ``key -> (old shape, new shape)``, ignored keys."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


# -- reading --------------------------------------------------------------------------------


class _Placeholder:
    """Inert stand-in for a non-tensor object in a training checkpoint (the original stores its
    ``parse_config.ConfigParser``, paths and numpy scalars beside the weights). It records the
    pickled arguments and state and runs none of the original class's code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


# What torch.serialization.safe_globals takes: a class, or a class and its full name.
_SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]


def _placeholder_globals(path: PathLike) -> list[_SafeGlobal]:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path))
    out: list[_SafeGlobal] = []
    for full_name in names:
        module, _, name = full_name.rpartition(".")
        stub = type(name, (_Placeholder,), {"__module__": module, "__qualname__": name})
        out.append((stub, full_name))
    return out


def _torch_load(path: PathLike) -> Any:
    """``torch.load(weights_only=True)``. Objects of classes the safe unpickler does not know
    (a training run's config object, ...) are loaded as inert placeholders, never imported.

    Raises:
        UnsafeFileError: the pickle calls functions (``__reduce__``) the safe unpickler refuses.
        InputError: not a file ``torch.save`` wrote (plain pickle, other zip, truncated, ...).
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            stubs = _placeholder_globals(path)
            if not stubs:
                raise
            with torch.serialization.safe_globals(stubs):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused, loading it would run code from the file "
            f"({_unpickler_reason(exc)}); if you trust its source, re-save its state dict "
            "with safetensors.torch.save_file where you do and load that .safetensors file"
        ) from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a non-torch file
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise InputError(
            f"{path}: not a readable EgoVLPv2 checkpoint (torch.load, weights only: "
            f"{type(exc).__name__}: {reason}); expected a .safetensors file or a "
            ".pth/.pt/.bin written by torch.save"
        ) from None


def _unpickler_reason(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (the rest of its
    message is advice to load with ``weights_only=False``, which this package never does)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in str(exc).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(boilerplate):
            return line[:200]
    return "objects the safe unpickler does not allow"


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise InputError(
            f"{path}: not a readable EgoVLPv2 checkpoint (not a safetensors file: {exc})"
        ) from None


def read_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], ModelConfig | None]:
    """Read a checkpoint file: ``.safetensors`` (config from its metadata, if any) or a torch
    pickle (``.pth``/``.pt``/``.bin``, read with ``weights_only=True``). Returns the raw
    state dict (not yet unwrapped/renamed) and the stored config or None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except SafetensorError as exc:
            raise InputError(
                f"{path}: not a readable EgoVLPv2 checkpoint (not a safetensors file: {exc})"
            ) from None
        tensors = _load_safetensors(path)
        config = None
        if CONFIG_METADATA_KEY in metadata:
            # Errors name the file and the metadata key (and the field, for a bad value).
            config = ModelConfig.from_json(
                metadata[CONFIG_METADATA_KEY], f"{path}: its {CONFIG_METADATA_KEY!r} metadata"
            )
        return tensors, config
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{path}: not a readable EgoVLPv2 checkpoint (expected a dict of tensors, "
            f"got {type(obj).__name__})"
        )
    return dict(obj), None


# -- adapting -------------------------------------------------------------------------------


def resize_temporal_embed(embed: Tensor, num_frames: int) -> Tensor:
    """Fit ``temporal_embed`` [1, F_ckpt, D] to ``num_frames`` as the original does: keep the
    first ``num_frames`` rows when the checkpoint has more; interpolate bilinearly over the frame
    axis with ``align_corners=True`` when it has fewer. Returns [1, num_frames, D]."""
    if embed.dim() != 3 or embed.shape[0] != 1:
        raise ValueError(f"{TEMPORAL_KEY}: expected shape [1, F, D], got {tuple(embed.shape)}")
    have, dim = embed.shape[1], embed.shape[2]
    if have == num_frames:
        return embed
    if have > num_frames:
        return embed[:, :num_frames].clone()
    work = embed if embed.dtype in (torch.float32, torch.float64) else embed.float()
    out = F.interpolate(
        work.unsqueeze(0), (num_frames, dim), mode="bilinear", align_corners=True
    ).squeeze(0)
    return out.to(embed.dtype)


def prepare_state_dict(
    checkpoint: Mapping[str, Any],
    num_frames: int,
    *,
    report: LoadReport | None = None,
) -> dict[str, Tensor]:
    """Unwrap ``checkpoint['state_dict']`` if present, strip ``module.`` prefixes and resize
    ``video_model.temporal_embed`` to ``num_frames``. Values must be tensors."""
    sd: Any = checkpoint
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        name = key.removeprefix("module.")
        if not isinstance(value, Tensor):
            raise TypeError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, not a "
                "tensor; is this a state dict?"
            )
        if name in out:
            raise ValueError(f"checkpoint holds {name!r} twice (with and without 'module.')")
        out[name] = value
    if TEMPORAL_KEY in out and out[TEMPORAL_KEY].dim() == 3:
        old = tuple(out[TEMPORAL_KEY].shape)
        out[TEMPORAL_KEY] = resize_temporal_embed(out[TEMPORAL_KEY], num_frames)
        if report is not None and tuple(out[TEMPORAL_KEY].shape) != old:
            report.resized[TEMPORAL_KEY] = (old, tuple(out[TEMPORAL_KEY].shape))
    return out


def _compare(
    model_sd: Mapping[str, Tensor], sd: Mapping[str, Tensor], keys: list[str] | None = None
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    wanted = list(model_sd) if keys is None else keys
    missing = [k for k in wanted if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = [
        (k, tuple(sd[k].shape), tuple(model_sd[k].shape))
        for k in wanted
        if k in sd and sd[k].shape != model_sd[k].shape
    ]
    return missing, unexpected, mismatched


def load_checkpoint(
    model: EgoVLPv2,
    checkpoint: PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
    source: str | None = None,
) -> LoadReport:
    """Load a released ``.pth``, a safetensors file or an in-memory state dict into ``model``.

    Applies ``prepare_state_dict``. A missing ``text_model.embeddings.position_ids`` (newer
    transformers do not save it) is filled with ``arange``. With ``strict`` (default) any missing
    or unexpected key raises ``CheckpointMismatchError``; shape mismatches always raise. A
    tensor that is not finite, or not floating point where the model's is, raises
    ``WeightsError`` naming it; a projector of the other kind (``"minimal"`` keys into a
    ``"small"`` model or the reverse) raises ``ProjectorMismatchError`` naming both. ``source``
    names an in-memory state dict in errors (default: the path, or ``"state dict"``).
    """
    if source is None:
        source = (
            os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
        )
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint, _ = read_checkpoint(checkpoint)
    report = LoadReport()
    sd = prepare_state_dict(checkpoint, model.config.video.num_frames, report=report)
    kind = detect_projection(sd)
    if kind is not None and kind != model.config.projection:
        raise ProjectorMismatchError(source, kind, model.config.projection)
    model_sd = model.state_dict()
    if POSITION_IDS_KEY in model_sd and POSITION_IDS_KEY not in sd:
        sd[POSITION_IDS_KEY] = model_sd[POSITION_IDS_KEY].clone()
    missing, unexpected, mismatched = _compare(model_sd, sd)
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    if POSITION_IDS_KEY in sd and not torch.equal(
        sd[POSITION_IDS_KEY].cpu(), model_sd[POSITION_IDS_KEY].cpu()
    ):
        raise ValueError(f"{source}: {POSITION_IDS_KEY} is not arange(max_position_embeddings)")
    check_weights(sd, {k: v.dtype for k, v in model_sd.items()}, source)
    model.load_state_dict({k: v for k, v in sd.items() if k in model_sd}, strict=False)
    report.loaded = [k for k in model_sd if k in sd]
    report.missing, report.unexpected = missing, unexpected
    return report


def infer_config(checkpoint: Mapping[str, Any]) -> ModelConfig | None:
    """The released configuration a state dict with no stored config has, or None.

    The released ``.pth`` files carry no egovlpv2 config. Their projector kind (from the keys,
    :func:`detect_projection`) picks the preset, ``"base"`` (``EgoVLPv2.pth``) or
    ``"base-smallproj"`` (``EgoVLPv2_smallproj*.pth``, ``EK-100_finetune.pth``,
    ``Charades-Ego_finetune.pth``); ``projection_dim``, the frame count (the length of
    ``video_model.temporal_embed``) and the heads present (``itm_score``, ``mlm_score``) are
    read from the tensors. The result is returned only when every key and shape of the state
    dict is that model's; anything else (another architecture) gives None.
    """
    sd = _unwrapped(checkpoint)
    if not all(isinstance(v, Tensor) for v in sd.values()):
        return None  # prepare_state_dict names the entry when the caller loads it
    kind = detect_projection(sd)
    if kind is None or TEMPORAL_KEY not in sd or sd[TEMPORAL_KEY].dim() != 3:
        return None
    first = sd.get("txt_proj.1.weight" if kind == "small" else "txt_proj.0.weight")
    if first is None or first.dim() != 2:
        return None
    tasks = ["EgoNCE"]
    tasks += ["ITM"] if "itm_score.fc.weight" in sd else []
    tasks += ["MLM"] if "mlm_score.decoder.weight" in sd else []
    try:
        base = preset(
            _PROJECTOR_PRESETS[kind],
            projection_dim=int(first.shape[0]),
            task_names="_".join(tasks),
        )
        config = base.replace(
            video=dataclasses.replace(base.video, num_frames=int(sd[TEMPORAL_KEY].shape[1]))
        )
        with torch.device("meta"):
            model_sd = EgoVLPv2(config, attention_impl="reference").state_dict()
    except InputError:
        return None
    if POSITION_IDS_KEY not in sd:
        model_sd.pop(POSITION_IDS_KEY, None)
    missing, unexpected, mismatched = _compare(model_sd, sd)
    return None if missing or unexpected or mismatched else config


def _unwrapped(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """``checkpoint['state_dict']`` if present, with ``module.`` prefixes stripped (values as
    they are: :func:`prepare_state_dict` checks them)."""
    sd: Any = checkpoint
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def load_model(
    path: PathLike,
    config: ModelConfig | None = None,
    *,
    attention_impl: str = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    num_frames: int | None = None,
) -> EgoVLPv2:
    """Build an ``EgoVLPv2`` and load ``path`` into it (eval mode).

    The config is ``config`` if given, else the one stored in a safetensors file's metadata
    (``save_safetensors`` writes it), else that of a released checkpoint recognised by its keys
    and shapes (:func:`infer_config`: ``base`` or ``base-smallproj`` at the file's frame
    count); any other file needs ``config`` (e.g. ``preset("base", ...)``). To run a 4-frame
    pre-trained file at 16 or 32 frames pass that config: the temporal embedding is resized.
    ``attention_impl``: ``"auto"`` (default; fused ops where they run), ``"fused"`` or
    ``"reference"``, as for ``EgoVLPv2``. ``num_frames``: run the model at this many frames
    (the config's ``video.num_frames`` replaced; the temporal embedding resized on load).
    """
    if num_frames is not None and (
        not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1
    ):
        raise InputError(f"num_frames must be a positive int, got {num_frames!r}")
    state, stored = read_checkpoint(path)
    config = config or stored or infer_config(state)
    if config is None:
        raise ValueError(
            f"{path}: the file stores no config; pass config= (e.g. "
            "egovlpv2_rt.config.preset('base')): its keys and shapes are not those of a "
            "released EgoVLPv2 model ('base' or 'base-smallproj')"
        )
    if num_frames is not None and num_frames != config.video.num_frames:
        config = config.replace(video=dataclasses.replace(config.video, num_frames=num_frames))
    model = EgoVLPv2(config, attention_impl=attention_impl)
    load_checkpoint(model, state, source=os.fspath(path))
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def save_safetensors(
    model: EgoVLPv2, path: PathLike, *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write the state dict (original key names) and the model's config JSON (metadata key
    ``egovlpv2_config``) to a self-describing safetensors file, atomically (a reader sees the
    old file or the new one, never a torn one)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", CONFIG_METADATA_KEY: model.config.to_json()}
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    with atomic_output(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=meta)


# -- tower initialisation ------------------------------------------------------------------


def _read_tensors(source: PathLike | Mapping[str, Any], what: str) -> dict[str, Tensor]:
    if isinstance(source, Mapping):
        sd: Any = source
    else:
        sd, _ = read_checkpoint(source)
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    out = {}
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{what}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key.removeprefix("module.")] = value
    return out


def _copy_into(
    model: nn.Module,
    mapped: Mapping[str, Tensor],
    source: str,
    expected: list[str],
    unexpected: list[str],
) -> list[str]:
    model_sd = model.state_dict()
    missing, _, mismatched = _compare(model_sd, mapped, expected)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    check_weights(
        {k: mapped[k] for k in expected}, {k: model_sd[k].dtype for k in expected}, source
    )
    with torch.no_grad():
        for key in expected:
            model_sd[key].copy_(mapped[key])
    return expected


_HF_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "pad_token_id",
    "layer_norm_eps",
    "hidden_act",
)


def _hf_weights(directory: Path) -> dict[str, Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickled = directory / "pytorch_model.bin"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"{index}: not a safetensors index ({type(exc).__name__}: {exc})"
            ) from None
        out: dict[str, Tensor] = {}
        for shard in shards:
            if Path(shard).name != shard:
                raise InputError(f"{index}: shard {shard!r} is not a file name in {directory}")
            out.update(_load_safetensors(directory / shard))
        return out
    if pickled.is_file():
        return _read_tensors(pickled, str(pickled))
    raise FileNotFoundError(
        f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def init_text_from_hf_roberta(model: EgoVLPv2, directory: PathLike) -> LoadReport:
    """Copy a local HF RoBERTa (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``, ``RobertaModel`` or ``RobertaFor*`` keys) into ``model.text_model``.

    The architecture fields of ``config.json`` must match ``model.config.text``. The pooler and
    any LM head are ignored; the t2i cross-attention and its gate keep their initial values (as
    in the original, which builds them on top of ``RobertaModel.from_pretrained``).
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (expected a HF RoBERTa directory)")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise InputError(f"{config_path}: expected a JSON object, got {type(hf).__name__}")
    ours = model.config.text
    diffs = [
        f"{name}: {hf.get(name)!r} in config.json, {getattr(ours, name)!r} in the model"
        for name in _HF_CONFIG_FIELDS
        if name in hf and hf[name] != getattr(ours, name)
    ]
    if diffs:
        raise ValueError(f"{config_path} does not match model.config.text: " + "; ".join(diffs))

    report = LoadReport()
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in _hf_weights(directory).items():
        name = key.removeprefix("roberta.")
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        if name.startswith(("pooler.", "lm_head.", "classifier.")) or name in (
            "embeddings.position_ids",
            "embeddings.token_type_ids",
        ):
            report.ignored.append(key)
            continue
        target = "text_model." + name
        if ".crossattention_t2i." in target or target.endswith(".alpha_t2i"):
            unexpected.append(key)
            continue
        mapped[target] = value
    model_sd = model.state_dict()
    unexpected += [k for k in mapped if k not in model_sd]
    expected = [
        k
        for k in model_sd
        if k.startswith("text_model.")
        and ".crossattention_t2i." not in k
        and not k.endswith(".alpha_t2i")
        and k != POSITION_IDS_KEY
    ]
    report.loaded = _copy_into(model, mapped, str(directory), expected, unexpected)
    report.missing = [k for k in model_sd if k.startswith("text_model.") and k not in expected]
    return report


_TIMM_IGNORED_PREFIXES = ("head.", "pre_logits.", "head_drop.")
_TIMM_BLOCK_PARTS = ("norm1.", "attn.qkv.", "attn.proj.", "norm2.", "mlp.fc1.", "mlp.fc2.")


def init_video_from_timm(model: EgoVLPv2, source: PathLike | Mapping[str, Any]) -> LoadReport:
    """Copy a timm ``vit_base_patch16_224``-style state dict (file or mapping) into
    ``model.video_model``, as the original does when it inflates ViT into the
    SpaceTimeTransformer: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, per block
    ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1/fc2`` (onto the space
    attention), and the final ``norm``. The classifier ``head``/``pre_logits`` are ignored.

    Not in ViT, so left as initialised, as in the original: ``temporal_embed``, ``norm3``, the
    i2t parameters; the time attention is re-initialised per ``video.time_init`` (``"zeros"``:
    qkv = 0, proj weight = 1, so the clip model starts as the image model).
    """
    what = "timm ViT state dict" if isinstance(source, Mapping) else os.fspath(source)
    tensors = _read_tensors(source, what)
    report = LoadReport()
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in tensors.items():
        if key.startswith(_TIMM_IGNORED_PREFIXES):
            report.ignored.append(key)
            continue
        ok = key in ("cls_token", "pos_embed") or key.startswith(("patch_embed.proj.", "norm."))
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            ok = index.isdigit() and rest.startswith(_TIMM_BLOCK_PARTS)
        if not ok:
            unexpected.append(key)
            continue
        mapped["video_model." + key] = value
    model_sd = model.state_dict()
    unexpected += [k[len("video_model.") :] for k in mapped if k not in model_sd]
    prefixes = (
        "video_model.cls_token",
        "video_model.pos_embed",
        "video_model.patch_embed.",
        "video_model.norm.",
    )
    expected = [
        k
        for k in model_sd
        if k.startswith(prefixes)
        or (
            k.startswith("video_model.blocks.") and k.split(".", 3)[3].startswith(_TIMM_BLOCK_PARTS)
        )
    ]
    report.loaded = _copy_into(model, mapped, what, expected, unexpected)
    if model.config.video.time_init == "zeros":
        for blk in cast("Iterable[SpaceTimeBlock]", model.video_model.blocks):
            init_time_attention_zeros(blk.timeattn)
    report.missing = [k for k in model_sd if k.startswith("video_model.") and k not in expected]
    return report
