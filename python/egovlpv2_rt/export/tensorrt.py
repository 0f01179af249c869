"""TensorRT engines from the exported ONNX graphs (TensorRT Python API >= 10).

The network is *strongly typed*: TensorRT takes every tensor's type from the graph, so the
precision is chosen when the ONNX graph is written (``cast_precision``; TensorRT 11 removed the
FP16/BF16 builder flags). Each engine gets one optimisation profile per ``(batch, text length)``
range given on the command line, a persistent timing cache, and a JSON sidecar describing the
engine's inputs, profiles and origin.

Everything except :func:`build_engine` and :class:`TensorRTEngine` runs without TensorRT.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EgoVLPv2Error
from ..files import atomic_write_bytes
from .graphs import GRAPHS
from .metadata import Sidecar, file_sha256, read_sidecar, write_sidecar

__all__ = [
    "INSTALL_HINT",
    "MIN_TENSORRT",
    "EngineProfile",
    "TensorRTEngine",
    "TensorRTUnavailableError",
    "build_engine",
    "engine_sidecar",
    "import_tensorrt",
    "parse_range",
    "profile_shapes",
]

MIN_TENSORRT = (10, 0)
INSTALL_HINT = (
    'pip install "tensorrt>=10" (NVIDIA\'s wheels: tensorrt-cu13 or tensorrt-cu12, matching '
    "the CUDA major version of your torch; needs an NVIDIA GPU and driver)"
)


class TensorRTUnavailableError(EgoVLPv2Error, ImportError):
    """The ``tensorrt`` Python package (>= 10) is not installed or cannot be loaded."""


def import_tensorrt() -> Any:
    """Import ``tensorrt`` (>= 10) or raise :class:`TensorRTUnavailableError` naming the
    package and the install command."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT is not available: the Python package 'tensorrt' cannot be imported "
            f"({exc}). Install it with: {INSTALL_HINT}"
        ) from exc
    version = tuple(int(x) for x in str(trt.__version__).split(".")[:2] if x.isdigit())
    if version < MIN_TENSORRT:
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} is too old: need >= "
            f"{'.'.join(map(str, MIN_TENSORRT))} (strongly typed networks, named tensor I/O). "
            f"Install it with: {INSTALL_HINT}"
        )
    return trt


@dataclass(frozen=True)
class EngineProfile:
    """One optimisation profile: (min, opt, max) batch size and text length."""

    batch: tuple[int, int, int] = (1, 8, 32)
    text_length: tuple[int, int, int] = (4, 16, 32)

    def __post_init__(self) -> None:
        for name in ("batch", "text_length"):
            lo, opt, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(opt, int) and isinstance(hi, int)):
                raise TypeError(f"{name}: expected three ints, got {getattr(self, name)!r}")
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"{name}: need 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """``"MIN:OPT:MAX"`` (or a single ``"N"`` for a fixed size) -> (min, opt, max)."""
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{what}: expected MIN:OPT:MAX (three positive ints) or N, got {text!r}")
    lo, opt, hi = (int(p) for p in parts)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"{what}: need 1 <= MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


def profile_shapes(
    graph: str,
    profile: EngineProfile,
    *,
    num_frames: int,
    img_size: int,
    in_chans: int = 3,
    max_text_length: int | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The (min, opt, max) shape of every input of ``graph`` under ``profile``.

    video: ``[B, F, C, S, S]``; input_ids / attention_mask: ``[B, L]``. A text range beyond
    ``max_text_length`` (the model's position table) raises ``ValueError``.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {sorted(GRAPHS)}, got {graph!r}")
    if max_text_length is not None and profile.text_length[2] > max_text_length:
        raise ValueError(
            f"text length max {profile.text_length[2]} exceeds the model's "
            f"limit {max_text_length} (text.max_text_length)"
        )
    shapes = {}
    for name in GRAPHS[graph].inputs:
        dims: list[tuple[int, ...]]
        if name == "video":
            dims = [(b, num_frames, in_chans, img_size, img_size) for b in profile.batch]
        else:
            dims = [
                (b, length) for b, length in zip(profile.batch, profile.text_length, strict=True)
            ]
        shapes[name] = (dims[0], dims[1], dims[2])
    return shapes


def engine_sidecar(
    onnx_sidecar: Sidecar,
    engine_file: str,
    profiles: Sequence[EngineProfile],
    *,
    tensorrt_version: str,
    device: str,
    build_seconds: float,
) -> Sidecar:
    """The engine's sidecar: the ONNX sidecar's config and preprocessing, the engine file, its
    profiles (with the resolved shapes) and the TensorRT version and GPU it was built for
    (an engine only runs on that GPU model and TensorRT version)."""
    prep = onnx_sidecar.preprocessing
    cfg = onnx_sidecar.config
    shapes = [
        {
            k: [list(s) for s in v]
            for k, v in profile_shapes(
                onnx_sidecar.graph,
                p,
                num_frames=int(prep["num_frames"]),
                img_size=int(cfg["video"]["img_size"]),
                in_chans=int(cfg["video"].get("in_chans", 3)),
            ).items()
        }
        for p in profiles
    ]
    extra = dict(onnx_sidecar.extra)
    extra.update(
        {
            "profiles": [asdict(p) for p in profiles],
            "profile_shapes": shapes,
            "tensorrt_version": tensorrt_version,
            "device": device,
            "strongly_typed": True,
            "source_onnx": onnx_sidecar.file,
            "source_onnx_sha256": onnx_sidecar.sha256,
            "build_seconds": round(build_seconds, 2),
        }
    )
    return Sidecar(
        graph=onnx_sidecar.graph,
        file=engine_file,
        format="tensorrt",
        precision=onnx_sidecar.precision,
        config=cfg,
        preprocessing=prep,
        inputs=onnx_sidecar.inputs,
        outputs=onnx_sidecar.outputs,
        source_checkpoint=onnx_sidecar.source_checkpoint,
        source_sha256=onnx_sidecar.source_sha256,
        package_version=onnx_sidecar.package_version,
        torch_version=onnx_sidecar.torch_version,
        extra=extra,
    )


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({type(exc).__name__})"
    return "unknown"


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    profiles: Sequence[EngineProfile] = (EngineProfile(),),
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
    builder_optimization_level: int = 3,
) -> Path:
    """Build a TensorRT engine from an exported ONNX graph (with its ``.json`` sidecar).

    Writes ``engine_path`` (default: ``<graph>.engine`` beside the ONNX file) and its sidecar
    ``<graph>.engine.json``; loads and updates ``timing_cache`` when given. Raises
    :class:`TensorRTUnavailableError` without TensorRT and ``RuntimeError`` when parsing or
    building fails (with the parser's / builder's messages).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {onnx_path}")
    source = read_sidecar(onnx_path.with_suffix(".json"))
    if not profiles:
        raise ValueError("profiles: need at least one optimisation profile")
    max_len = int(source.preprocessing.get("max_text_length", 0)) or None
    cfg = source.config
    all_shapes = [
        profile_shapes(
            source.graph,
            p,
            num_frames=int(source.preprocessing["num_frames"]),
            img_size=int(cfg["video"]["img_size"]),
            in_chans=int(cfg["video"].get("in_chans", 3)),
            max_text_length=max_len,
        )
        for p in profiles
    ]
    trt = import_tensorrt()
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = int(builder_optimization_level)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    for shapes in all_shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)"
        )
    atomic_write_bytes(engine_path, bytes(serialized))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = engine_sidecar(
        source,
        engine_path.name,
        profiles,
        tensorrt_version=str(trt.__version__),
        device=_device_name(),
        build_seconds=time.perf_counter() - t0,
    )
    sidecar.sha256 = file_sha256(engine_path)
    write_sidecar(engine_path.with_suffix(".engine.json"), sidecar)
    return engine_path


class TensorRTEngine:
    """Runs one engine on CUDA torch tensors (named I/O, TensorRT >= 10).

    ``engine(video=..., input_ids=..., attention_mask=...)`` -> the output tensor (float32,
    on the engine's device). The optimisation profile whose ranges hold the input shapes is
    selected per call.
    """

    def __init__(self, engine_path: str | os.PathLike, device: Any = "cuda") -> None:
        import torch

        self.trt = trt = import_tensorrt()
        path = Path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        self.sidecar = read_sidecar(path.with_suffix(".engine.json"))
        self.device = torch.device(device)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"{path}: TensorRT could not deserialize the engine (built with "
                f"TensorRT {self.sidecar.extra.get('tensorrt_version')} for "
                f"{self.sidecar.extra.get('device')}; this is "
                f"{trt.__version__})"
            )
        self.context = self.engine.create_execution_context()
        self._profile = -1
        self.inputs = [
            n
            for n in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self.outputs = [
            n
            for n in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        self.profiles = [
            tuple(int(x) for x in p["batch"]) for p in self.sidecar.extra.get("profiles", [])
        ]
        self.text_profiles = [
            tuple(int(x) for x in p["text_length"]) for p in self.sidecar.extra.get("profiles", [])
        ]

    def _torch_dtype(self, name: str):
        import torch

        trt = self.trt
        return {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64,
            trt.int32: torch.int32,
        }[self.engine.get_tensor_dtype(name)]

    def _pick_profile(self, batch: int, length: int | None) -> int:
        for k, (lo, _, hi) in enumerate(self.profiles):
            ok = lo <= batch <= hi
            if ok and length is not None and self.text_profiles:
                tlo, _, thi = self.text_profiles[k]
                ok = tlo <= length <= thi
            if ok:
                return k
        raise ValueError(
            f"no optimisation profile of this engine holds batch {batch}"
            + (f" and text length {length}" if length is not None else "")
            + f"; profiles: batch {self.profiles}, text {self.text_profiles}"
        )

    def __call__(self, **inputs: Any) -> Any:
        import torch

        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ValueError(f"missing engine inputs {missing}")
        first = inputs[self.inputs[0]]
        length = inputs["input_ids"].shape[1] if "input_ids" in inputs else None
        profile = self._pick_profile(int(first.shape[0]), length)
        stream = torch.cuda.current_stream(self.device)
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, stream.cuda_stream)
            self._profile = profile
        keep = []
        for name in self.inputs:
            t = inputs[name].to(self.device, self._torch_dtype(name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outs[0].float()


def describe(engine_json: str | os.PathLike) -> str:
    """One-line description of an engine from its sidecar (for ``egovlpv2 info``)."""
    s = read_sidecar(engine_json)
    return json.dumps(
        {
            "graph": s.graph,
            "precision": s.precision,
            "profiles": s.extra.get("profiles"),
            "tensorrt": s.extra.get("tensorrt_version"),
            "device": s.extra.get("device"),
        }
    )
