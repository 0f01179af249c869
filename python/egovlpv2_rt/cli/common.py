"""What every command of the CLI shares: one-line errors (and the package a missing optional
dependency comes with), the argument parser class, model options and the runtime they load,
JSON output, and the main-loop wrapper of both entry points."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import torch

from ..errors import EgoVLPv2Error, one_line
from ..export.metadata import file_sha256
from ..runtime import Runtime, load
from ..runtime.ray_engine import RayOptions
from ..runtime.store import model_fingerprint
from ..video.clip_list import parse_clip_arg

__all__ = [
    "ArgParser",
    "add_model_options",
    "at_least",
    "bench_case",
    "clip_spec",
    "dumps_json",
    "error_exit",
    "json_safe",
    "missing_dependency",
    "non_negative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "print_json",
    "run_command",
    "runtime_fingerprint",
    "runtime_from_args",
    "show_progress",
    "text_arg",
]


# Optional Python packages -> the extra of egovlpv2-rt that installs them.
_EXTRAS = {
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "faiss": "search",
    "pyarrow": "search",
    "yaml": "train",
    "av": "video",
    "nvidia": "dali",
    "torchcodec": "torchcodec",
}


# ------------------------------------------------------------------------------ errors


def missing_dependency(exc: ModuleNotFoundError, command: str) -> str:
    """One line naming the command, the missing package and how to install it."""
    name = (exc.name or str(exc)).split(".")[0]
    if name == "tensorrt":
        how = "install TensorRT's Python package from NVIDIA's index"
    elif name in _EXTRAS:
        how = f"pip install 'egovlpv2-rt[{_EXTRAS[name]}]'"
    else:
        how = f"pip install {name}"
    return f"{command} needs the Python package {name!r}, which is not installed ({how})"


def error_exit(prog: str, exc: BaseException, message: str | None = None) -> int:
    """Print ``prog: error: <message>`` (default: ``exc`` as one line) on stderr, the traceback
    too with EGOVLPV2_DEBUG; return exit status 1."""
    if os.environ.get("EGOVLPV2_DEBUG"):
        traceback.print_exception(exc)
    print(f"{prog}: error: {message or one_line(exc)}", file=sys.stderr)
    return 1


def run_command(prog: str, command: str, func: Callable[[], int | None]) -> int:
    """Run one command: its exit status, 130 on Ctrl-C, 0 on a closed pipe, and every failure
    (a missing optional package included) as one line on stderr with status 1."""
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("", "egovlpv2_rt"):
            return error_exit(prog, exc)  # a broken install, not an optional package
        return error_exit(prog, exc, missing_dependency(exc, command))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line, no traceback
        return error_exit(prog, exc)


class ArgParser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------------------ option types
# ``type=`` functions: a bad value is refused while the command line is parsed, with one line
# naming the option (argparse adds "argument --frames: ") and exit status 2.


def _int(text: str) -> int:
    # int() would also take " 3", "3_0" and "٣"; a count on the command line is ASCII digits.
    if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(text)


def at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    """An int option that must be >= ``minimum`` (``what`` says why, in the message)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            reason = f" ({what})" if what else ""
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}{reason}, got {text!r}"
            )
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def positive_int(text: str) -> int:
    """A count: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a GPU share)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a chance)."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def actor_range(text: str) -> tuple[int, int]:
    """``--actors``: ``N`` (fixed) or ``MIN..MAX`` (autoscaling), 1 <= MIN <= MAX."""
    lo, sep, hi = text.partition("..")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN..MAX, got {text!r}") from None
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= MAX, got {text!r}")
    return pair


def text_arg(text: str) -> str:
    """Text (a query, a question): not blank, and valid UTF-8. Arguments that are not UTF-8
    reach Python as lone surrogates (``surrogateescape``); they are refused here rather than
    deep in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(exc.object[exc.start]) - 0xDC00
        shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else "a lone surrogate"
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8 text ({shown} at position {exc.start}); give the text in UTF-8"
        ) from None
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a text")
    return text


def clip_spec(text: str) -> str:
    """A clip: ``PATH`` or ``PATH@START:END``; the range is checked here (the string is kept)."""
    try:
        parse_clip_arg(text)
    except EgoVLPv2Error as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def bench_case(text: str) -> str:
    """A benchmark case: ``text_bN``, ``video_bN`` or ``score_bN`` with N >= 1."""
    if not re.fullmatch(r"(text|video|score)_b[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(
            f"expected text_bN, video_bN or score_bN (N >= 1), got {text!r}"
        )
    return text


# ------------------------------------------------------------------------------ model options


def add_model_options(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """--checkpoint, --tokenizer, [--backend], --device, --precision, --frames, --batch-size."""
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model file or folder, or an export folder (default: the shipped default model)",
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer.json (default: beside the checkpoint)"
    )
    if backend:
        p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default="torch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None)
    p.add_argument(
        "--frames", type=positive_int, default=None, help="frames per clip (default: the model's)"
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="clips per forward pass")


def runtime_from_args(args: argparse.Namespace, **overrides: Any) -> Runtime:
    """The :class:`Runtime` that the model options of ``args`` describe."""
    return load(getattr(args, "checkpoint", None), **runtime_load_kwargs(args, **overrides))


def runtime_load_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`egovlpv2_rt.runtime.load` that the model options of
    ``args`` give (the checkpoint apart)."""
    kwargs: dict[str, Any] = {
        "device": getattr(args, "device", None),
        "precision": getattr(args, "precision", None),
        "backend": getattr(args, "backend", "torch"),
        "tokenizer": getattr(args, "tokenizer", None),
        "num_frames": getattr(args, "frames", None),
        "video_batch_size": getattr(args, "batch_size", None),
    }
    if getattr(args, "video_backend", None):
        kwargs["video_backend"] = args.video_backend
    kwargs.update(overrides)
    return kwargs


def runtime_fingerprint(rt: Runtime) -> dict[str, Any]:
    """What identifies the embeddings ``rt`` computes (config, weights hash, frames, precision)."""
    sha = ""
    if rt.files is not None and rt.files.checkpoint is not None:
        sha = file_sha256(rt.files.checkpoint)
    elif rt.files is not None and rt.files.export_dir is not None:
        side = rt.files.export_dir / "video_encoder.json"
        if side.is_file():
            sha = json.loads(side.read_text()).get("source_sha256", "")
    return model_fingerprint(
        rt.config.to_dict(), sha, num_frames=rt.num_frames, precision=rt.precision
    )


# ------------------------------------------------------------------------------ output


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, Inf; Python, numpy or a 0-d tensor) replaced
    by None, numpy scalars and arrays as Python numbers and lists, tuples as lists; recursive
    over dicts, lists and tuples. Other objects are returned unchanged."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return json_safe(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any) -> str:
    """Strict JSON text of ``obj`` (indented): non-finite numbers become ``null`` (the JSON
    schemas of the commands say so), so the output never holds the bare ``NaN``/``Infinity``
    that strict parsers refuse; ``allow_nan=False`` guards that nothing slips through."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False)


def print_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON (:func:`dumps_json`): NaN/Inf become ``null``."""
    print(dumps_json(obj))


def show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "json", False) and not getattr(args, "no_progress", False)


# ------------------------------------------------------------------------------ ray


def add_ray_options(p: argparse.ArgumentParser, output: str) -> None:
    """``--engine local|ray`` and the Ray cluster options of a job command."""
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (or torchrun); ray: a Ray cluster (pip install "
        f"'egovlpv2-rt[ray]'), {output}",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS if set, else start a local one)",
    )
    p.add_argument(
        "--actors",
        type=actor_range,
        default=(1, 1),
        help="model actors: N, or MIN..MAX to autoscale (--engine ray)",
    )
    p.add_argument(
        "--gpus-per-actor",
        type=non_negative_float,
        default=0.0,
        help="GPUs per model actor (--engine ray)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=positive_float,
        default=1.0,
        help="CPUs per model actor, also its torch threads (--engine ray)",
    )


def ray_options_from_args(args: argparse.Namespace, **more: Any) -> RayOptions:
    """The :class:`~egovlpv2_rt.runtime.ray_engine.RayOptions` of ``args`` and ``more``."""
    return RayOptions(
        address=args.ray_address,
        actors=tuple(args.actors),
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        **more,
    )
