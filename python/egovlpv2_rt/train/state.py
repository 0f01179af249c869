"""Training state for ``--resume``: safetensors plus a JSON sidecar, read without running code.

A state holds the model, optimiser and scheduler states, the step, the sampler's identity, the
run's config and the RNG states of every rank (torch CPU/CUDA, numpy, ``random``). It is split
in two files in ``<out_dir>/checkpoints``:

- ``state-<step>.safetensors``: every tensor (model weights, AdamW moments, torch RNG bytes),
  named by its place in the state (``model/text_model...``, ``optimizer/state/3/exp_avg``);
- ``last.json``: everything else as plain JSON (numpy's RNG key as a list of ints, python's
  ``random`` state as lists), each tensor replaced by a reference to its name, plus the
  tensor file's name, step and SHA-256.

``last.json`` is the commit point: the tensor file of a step is written (atomically) first,
then ``last.json`` is replaced (atomically) to name it, then older tensor files are removed.
A crash at any moment leaves a ``last.json`` naming a complete tensor file of the same step;
the SHA-256 is checked on load, so a tensor file of another step or a damaged one is refused.
Neither format can hold code: nothing in a state file runs when it is read.

Resume files of egovlpv2-rt 0.1 (``last.pt``, one torch pickle) are read with
``torch.load(weights_only=True)`` allowing exactly the numpy types its RNG state needs; any
other object in such a file is refused with :class:`~egovlpv2_rt.errors.UnsafeFileError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import InputError, UnsafeFileError
from ..files import atomic_output, atomic_write_text

__all__ = [
    "LEGACY_STATE_NAME",
    "STATE_NAME",
    "capture_rng",
    "find_training_state",
    "load_training_state",
    "remove_unreferenced_tensor_files",
    "restore_rng",
    "save_training_state",
]

STATE_NAME = "last.json"
LEGACY_STATE_NAME = "last.pt"
FORMAT = "egovlpv2-training-state"
VERSION = 1
_TENSOR_GLOB = "state-*.safetensors"
_STEP_METADATA_KEY = "egovlpv2_training_step"
# numpy's MT19937 state: 624 32-bit words.
_MT_WORDS = 624


# -- RNG -------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch's as uint8 tensors, numpy's and python's as ints."""
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(kind),
            "key": [int(x) for x in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_rng(state: Any, source: str) -> None:
    """Raise :class:`InputError` unless ``state`` is what :func:`capture_rng` returns."""

    def bad(what: str) -> InputError:
        return InputError(f"{source}: RNG state {what}; the file is damaged or not a state")

    if not isinstance(state, Mapping) or not {"torch", "numpy", "python"} <= state.keys():
        raise bad("lacks the torch, numpy or python entry")
    if not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8:
        raise bad("'torch' is not a uint8 tensor")
    npy = state["numpy"]
    if (
        not isinstance(npy, Mapping)
        or npy.get("bit_generator") != "MT19937"
        or not isinstance(npy.get("key"), list)
        or len(npy["key"]) != _MT_WORDS
        or not all(isinstance(x, int) and 0 <= x < 2**32 for x in npy["key"])
        or not isinstance(npy.get("pos"), int)
        or not isinstance(npy.get("has_gauss"), int)
        or not isinstance(npy.get("cached_gaussian"), float)
    ):
        raise bad(f"'numpy' is not an MT19937 state of {_MT_WORDS} uint32 words")
    py = state["python"]
    if (
        not isinstance(py, Mapping)
        or not isinstance(py.get("version"), int)
        or not isinstance(py.get("internal"), list)
        or not all(isinstance(x, int) for x in py["internal"])
        or not (py.get("gauss_next") is None or isinstance(py.get("gauss_next"), float))
    ):
        raise bad("'python' is not a random.getstate() of ints")


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set this process's RNGs from :func:`capture_rng`'s result."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            np.asarray(npy["key"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- JSON <-> nested state ---------------------------------------------------------------------
# Plain JSON objects never have keys starting with "__"; such a key marks one of these tags:
# {"__tensor__": name}, {"__tuple__": [...]}, {"__dict__": [[key, value], ...]} (a mapping
# whose keys are not all strings, e.g. the optimiser's parameter ids), {"__float__": "nan"}.


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory (tied weights): give each its own copy.
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        name = path.rstrip("/")  # "model/video_model.cls_token", "rng/0/torch"
        tensors[name] = t
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}{i}/", tensors, seen) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}{i}/", tensors, seen) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}{k}/", tensors, seen) for k, v in obj.items()}
        pairs = [
            [_encode(k, f"{path}key{i}/", tensors, seen), _encode(v, f"{path}{k}/", tensors, seen)]
            for i, (k, v) in enumerate(obj.items())
        ]
        return {"__dict__": pairs}
    raise TypeError(f"training state {path}: cannot store a {type(obj).__name__}")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor], source: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tags = [k for k in obj if k.startswith("__")]
    if not tags:
        return {k: _decode(v, tensors, source) for k, v in obj.items()}
    if len(obj) != 1:
        raise InputError(f"{source}: unexpected keys {sorted(obj)} in a tagged value")
    tag, value = next(iter(obj.items()))
    if tag == "__tensor__" and isinstance(value, str):
        if value not in tensors:
            raise InputError(f"{source}: tensor {value!r} is missing from the tensor file")
        return tensors[value]
    if tag == "__tuple__" and isinstance(value, list):
        return tuple(_decode(v, tensors, source) for v in value)
    if tag == "__float__" and value in ("nan", "inf", "-inf"):
        return float(value)
    if tag == "__dict__" and isinstance(value, list):
        if not all(isinstance(kv, list) and len(kv) == 2 for kv in value):
            raise InputError(f"{source}: a '__dict__' entry is not a [key, value] pair")
        return {_decode(k, tensors, source): _decode(v, tensors, source) for k, v in value}
    raise InputError(f"{source}: unknown tagged value {tag!r}")


# -- writing ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_file_name(step: int) -> str:
    return f"state-{step:08d}.safetensors"


def save_training_state(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (a mapping with an int ``"step"``) into ``directory``; return the path
    of its ``last.json``. Tensors may live on any device; they are written from the CPU.

    The caller holds the run's :func:`~egovlpv2_rt.files.exclusive_output` lock."""
    directory = Path(directory)
    step = int(state["step"])
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(dict(state), "", tensors, set())
    name = _tensor_file_name(step)
    tensor_path = directory / name
    with atomic_output(tensor_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", _STEP_METADATA_KEY: str(step)})
    sidecar = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "tensors": {"file": name, "sha256": _sha256(tensor_path), "count": len(tensors)},
        "state": encoded,
    }
    out = directory / STATE_NAME
    atomic_write_text(out, json.dumps(sidecar, allow_nan=False) + "\n")
    remove_unreferenced_tensor_files(directory)
    return out


def remove_unreferenced_tensor_files(directory: str | Path) -> list[Path]:
    """Remove ``state-*.safetensors`` files that ``last.json`` does not name (older steps, or
    a step whose ``last.json`` a killed run never wrote); return them. With no readable
    ``last.json`` nothing is removed. Call only while holding the run's lock."""
    directory = Path(directory)
    try:
        keep = json.loads((directory / STATE_NAME).read_text())["tensors"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    removed = []
    for path in directory.glob(_TENSOR_GLOB):
        if path.name != keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# -- reading ----------------------------------------------------------------------------------


def find_training_state(directory: str | Path) -> Path | None:
    """The state ``--resume`` continues from: ``last.json``, else a 0.1 ``last.pt``, else None."""
    directory = Path(directory)
    for name in (STATE_NAME, LEGACY_STATE_NAME):
        if (directory / name).is_file():
            return directory / name
    return None


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state` (``last.json``) or by egovlpv2-rt
    0.1 (``last.pt``). Tensors are on the CPU. Nothing in either file runs.

    Returns:
        ``{"step", "model", "optimizer", "scheduler", "sampler", "rng", "config",
        "model_config"}`` as they were saved (``rng``: one :func:`capture_rng` dict per rank).

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeFileError: a ``.pt`` file holding objects other than tensors and RNG state.
        InputError: a damaged or inconsistent state (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {path}")
    state = _load_legacy(path) if path.suffix == ".pt" else _load_json_state(path)
    for key in ("step", "model", "optimizer", "scheduler", "sampler", "rng"):
        if key not in state:
            raise InputError(f"{path}: training state lacks {key!r}")
    if not isinstance(state["rng"], list) or not state["rng"]:
        raise InputError(f"{path}: training state's 'rng' is not a list of per-rank states")
    for rank_state in state["rng"]:
        _check_rng(rank_state, str(path))
    return state


def _load_json_state(path: Path) -> dict[str, Any]:
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"{path}: not a training state (expected the JSON written by the trainer: {exc})"
        ) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise InputError(f'{path}: not a training state (no "format": {FORMAT!r})')
    if sidecar.get("version") != VERSION:
        raise InputError(
            f"{path}: training state version {sidecar.get('version')!r}; this egovlpv2-rt "
            f"reads version {VERSION}"
        )
    info = sidecar.get("tensors")
    step = sidecar.get("step")
    if not isinstance(info, dict) or not isinstance(step, int):
        raise InputError(f"{path}: training state lacks its 'tensors' entry or its 'step'")
    name = info.get("file")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise InputError(f"{path}: 'tensors.file' must name a .safetensors file beside it")
    tensor_path = path.parent / name
    if not tensor_path.is_file():
        raise InputError(f"{path}: its tensor file {tensor_path} is missing")
    if _sha256(tensor_path) != info.get("sha256"):
        raise InputError(
            f"{tensor_path}: SHA-256 differs from the one {path.name} records; the tensor file "
            "is damaged or belongs to another state"
        )
    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{tensor_path}: not a readable safetensors file ({exc})") from None
    if metadata.get(_STEP_METADATA_KEY) != str(step):
        raise InputError(
            f"{tensor_path}: holds step {metadata.get(_STEP_METADATA_KEY)!r}, "
            f"{path.name} step {step}"
        )
    state = _decode(sidecar.get("state"), tensors, str(path))
    if not isinstance(state, dict) or state.get("step") != step:
        raise InputError(f"{path}: the state's step differs from the sidecar's step {step}")
    return state


def _numpy_rng_globals() -> list[Any]:
    """Exactly what a pickled ``np.random.get_state()`` needs: ``ndarray``, ``dtype`` (and its
    uint32 class, which the unpickler builds), the array reconstructor (under numpy 2's and
    numpy 1's module names)."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [
        np.ndarray,
        np.dtype,
        np.dtypes.UInt32DType,
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
    ]


def _legacy_rng(state: Any) -> Any:
    """A 0.1 RNG state (numpy's and python's as tuples) in :func:`capture_rng`'s form."""
    if not isinstance(state, Mapping):
        return state
    out = dict(state)
    npy = state.get("numpy")
    if isinstance(npy, tuple) and len(npy) == 5 and isinstance(npy[1], np.ndarray):
        out["numpy"] = {
            "bit_generator": npy[0],
            "key": [int(x) for x in npy[1]] if npy[1].dtype == np.uint32 else None,
            "pos": npy[2],
            "has_gauss": npy[3],
            "cached_gaussian": npy[4],
        }
    py = state.get("python")
    if isinstance(py, tuple) and len(py) == 3 and isinstance(py[1], tuple):
        out["python"] = {"version": py[0], "internal": list(py[1]), "gauss_next": py[2]}
    return out


def _load_legacy(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _unsafe_globals(path)
        raise UnsafeFileError(
            f"{path}: refused, reading it would run code from the file (it holds "
            f"{found or 'objects other than tensors and numpy RNG state'}; an egovlpv2-rt 0.1 "
            "training state holds none). Start the run without --resume, or from a trusted "
            "copy of its checkpoints folder"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a non-torch file
        raise InputError(
            f"{path}: not a training state written by egovlpv2-rt 0.1 "
            f"({type(exc).__name__}: {exc}); start the run without --resume"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a training state dict, got {type(obj).__name__}")
    if isinstance(obj.get("rng"), list):
        obj["rng"] = [_legacy_rng(s) for s in obj["rng"]]
    return obj


def _unsafe_globals(path: Path) -> str:
    """The names of the classes/functions a torch file would import, for the error message."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - only for the message
        return ""
    allowed = {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.UInt32DType",
        "numpy._core.multiarray._reconstruct",
    }
    names = [n for n in names if n not in allowed and n != "numpy.core.multiarray._reconstruct"]
    return ", ".join(sorted(names)[:5])
