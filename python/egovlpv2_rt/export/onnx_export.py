"""Export EgoVLPv2 graphs to ONNX.

One call per graph (:func:`export_graph`) or per mode (:func:`export_model`):

1. a float32 CPU copy of the model on the ``fused`` attention path, so both custom ops appear
   in the traced program;
2. ``torch.onnx.export(dynamo=True)`` with the custom ops translated to standard ONNX
   (:mod:`.translation`), dynamic batch and text length, the frame count fixed;
3. graph passes (:mod:`.passes`): pre-scaled attention queries, dead-code elimination, named
   dynamic dims, then the precision cast;
4. checks: only standard ONNX domains, every Softmax in TensorRT's fusable attention form (and
   as many as the architecture has), ``onnx.checker`` with full shape inference;
5. metadata in ``metadata_props`` and a JSON sidecar ``<graph>.json``; ``export.json``
   lists the graphs of a folder and ``tokenizer.json`` is copied beside them, so an export
   folder is self-contained for the runtime.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from .._version import __version__
from ..files import atomic_write_text, atomic_write_with, exclusive_output
from ..modeling.model import EgoVLPv2
from . import passes
from .graphs import DUAL_GRAPHS, FUSION_GRAPHS, GRAPHS, build_graph, dynamic_shapes, example_inputs
from .metadata import (
    MANIFEST,
    Preprocessing,
    Sidecar,
    file_sha256,
    metadata_props,
    read_manifest,
    write_sidecar,
)
from .translation import ONNX_OPSET, custom_translation_table

__all__ = [
    "MANIFEST",
    "ExportedGraph",
    "expected_attention_count",
    "export_graph",
    "export_model",
    "graphs_for_mode",
    "read_manifest",
    "verify_onnx",
]

# Protobuf's hard limit is 2 GiB; bigger graphs keep their weights in a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
_TMP_DIR = ".tmpdir"  # staging folders of _save_onnx: .<name>.onnx.<random>.tmpdir
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExportedGraph:
    """One written graph: its name, ONNX file, sidecar, and the attention subgraphs found."""

    name: str
    path: Path
    sidecar: Path
    precision: str
    attention_subgraphs: int
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"], d["sidecar"] = str(self.path), str(self.sidecar)
        return d


def graphs_for_mode(mode: str, with_mlm: bool = False) -> tuple[str, ...]:
    """Graph names of ``--mode dual`` (video and text encoders), ``fusion`` (vtm, plus mlm
    with ``with_mlm``) or ``all``."""
    if mode == "dual":
        names: tuple[str, ...] = DUAL_GRAPHS
    elif mode == "fusion":
        names = FUSION_GRAPHS
    elif mode == "all":
        names = DUAL_GRAPHS + FUSION_GRAPHS
    else:
        raise ValueError(f"mode must be 'dual', 'fusion' or 'all', got {mode!r}")
    if with_mlm:
        if mode == "dual":
            raise ValueError("--with-mlm needs --mode fusion or all (MLM is a fusion head)")
        names = (*names, "mlm")
    return names


def expected_attention_count(model: EgoVLPv2, name: str) -> int:
    """Softmax subgraphs graph ``name`` must contain: per video block 4 (time and space, each
    CLS + grouped patches), per text layer 1, and per fused pair one i2t and one t2i (the MLM
    graph skips the last video block, which cannot reach its output)."""
    cfg = model.config
    depth, text_layers = cfg.video.depth, cfg.text.num_hidden_layers
    fused = cfg.fusion.num_fuse_block
    if name == "video_encoder":
        return 4 * depth
    if name == "text_encoder":
        return text_layers
    if name == "vtm":
        return 4 * depth + text_layers + 2 * fused
    if name == "mlm":
        if fused == 0:
            return 4 * depth + text_layers
        return 4 * (depth - 1) + text_layers + 2 * fused - 1
    raise ValueError(f"unknown graph {name!r}")


def _export_copy(model: EgoVLPv2) -> EgoVLPv2:
    """A float32 CPU eval copy on the fused attention path (the custom ops are what the
    translation table rewrites; the reference path would export as generic einsums)."""
    from .. import _extension

    _extension.load()  # raises ExtensionNotBuiltError with the build command
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    m.set_attention_impl("fused")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and known-harmless warnings."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _io_spec(model: EgoVLPv2, name: str, num_frames: int) -> tuple[dict, dict]:
    cfg = model.config
    s = cfg.video.img_size
    inputs: dict[str, dict] = {}
    spec = GRAPHS[name]
    for n in spec.inputs:
        if n == "video":
            inputs[n] = {
                "shape": ["batch", num_frames, cfg.video.in_chans, s, s],
                "dtype": "float32",
            }
        else:
            inputs[n] = {"shape": ["batch", "text_length"], "dtype": "int64"}
    out_shape: list = {
        "video_encoder": ["batch", cfg.projection_dim],
        "text_encoder": ["batch", cfg.projection_dim],
        "vtm": ["batch", 2],
        "mlm": ["batch", "text_length", cfg.fusion.vocab_size],
    }[name]
    outputs = {spec.outputs[0]: {"shape": out_shape, "dtype": "float32"}}
    return inputs, outputs


def export_graph(
    model: EgoVLPv2,
    name: str,
    out_dir: str | os.PathLike,
    *,
    num_frames: int | None = None,
    precision: str = "fp32",
    opset: int = ONNX_OPSET,
    preprocessing: Preprocessing | None = None,
    source_checkpoint: str | os.PathLike | None = None,
    example_batch: int = 2,
    example_text_length: int | None = None,
) -> ExportedGraph:
    """Export graph ``name`` (``video_encoder``, ``text_encoder``, ``vtm``, ``mlm``) of
    ``model`` to ``<out_dir>/<name>.onnx`` with its sidecar ``<name>.json``.

    ``num_frames`` (default: the model's ``video.num_frames``) is fixed in the graph; batch and
    text length are dynamic (text length up to ``text.max_text_length``). ``precision``:
    ``fp32``, ``fp16`` or ``bf16`` (weights and compute; inputs and outputs stay float32).
    Raises ``ValueError`` for bad arguments or a graph that fails a check.
    """
    if name not in GRAPHS:
        raise ValueError(f"graph must be one of {sorted(GRAPHS)}, got {name!r}")
    if precision not in passes.PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(passes.PRECISIONS)}, got {precision!r}")
    if opset < 18:
        raise ValueError(f"opset must be >= 18, got {opset}")
    if not isinstance(model, EgoVLPv2):
        raise TypeError(f"model: expected an EgoVLPv2, got {type(model).__name__}")
    cfg = model.config
    frames = num_frames or cfg.video.num_frames
    if not 1 <= frames <= cfg.video.num_frames:
        raise ValueError(
            f"frames: {frames} is outside [1, {cfg.video.num_frames}], the "
            f"model's maximum clip length (video.num_frames)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    m = _export_copy(model)
    graph = build_graph(m, name)
    max_len = cfg.text.max_text_length
    text_len = example_text_length or min(8, max_len)
    text_len = max(2, min(text_len, max_len))
    example = example_inputs(
        m, name, num_frames=frames, batch=max(2, example_batch), text_length=text_len
    )
    spec = GRAPHS[name]
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            example,
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=dynamic_shapes(name, max_batch=1 << 16, max_text_length=max_len),
            custom_translation_table=custom_translation_table(),
            optimize=True,
        )
    if program is None:  # only the TorchScript exporter (dynamo=False) returns None
        raise RuntimeError(f"torch.onnx.export returned no ONNX program for {name}")
    proto = program.model_proto

    passes.prescale_attention(proto)
    passes.eliminate_dead_nodes(proto)
    dims = {
        "video": {0: "batch"},
        "input_ids": {0: "batch", 1: "text_length"},
        "attention_mask": {0: "batch", 1: "text_length"},
        spec.outputs[0]: {0: "batch"},
    }
    if name == "mlm":
        dims[spec.outputs[0]][1] = "text_length"
    passes.rename_dims(proto, dims)
    foreign = passes.nonstandard_nodes(proto)
    if foreign:
        raise ValueError(
            f"exported graph {name!r} has nodes outside the standard ONNX "
            f"domains: {', '.join(foreign[:5])}"
        )
    passes.check_attention_patterns(proto, expected=expected_attention_count(m, name))
    passes.cast_precision(proto, precision)
    if precision != "fp32":
        passes.check_attention_patterns(proto, expected=expected_attention_count(m, name))

    prep = preprocessing or Preprocessing.for_config(cfg, num_frames=frames)
    if prep.num_frames != frames:
        raise ValueError(f"preprocessing.num_frames ({prep.num_frames}) != frames ({frames})")
    inputs, outputs = _io_spec(m, name, frames)
    source = os.fspath(source_checkpoint) if source_checkpoint else ""
    sidecar = Sidecar(
        graph=name,
        file=f"{name}.onnx",
        format="onnx",
        precision=precision,
        config=cfg.to_dict(),
        preprocessing=prep.to_dict(),
        inputs=inputs,
        outputs=outputs,
        source_checkpoint=Path(source).name if source else "",
        source_sha256=file_sha256(source) if source and Path(source).is_file() else "",
        package_version=__version__,
        torch_version=torch.__version__,
        extra={
            "opset": opset,
            "attention_subgraphs": expected_attention_count(m, name),
            "onnx_version": onnx.__version__,
        },
    )
    del proto.metadata_props[:]
    for key, value in metadata_props(sidecar).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    proto.producer_name = "egovlpv2-export"
    proto.producer_version = __version__

    path = out / f"{name}.onnx"
    _save_onnx(proto, path)
    sidecar.sha256 = file_sha256(path)
    side_path = write_sidecar(out / f"{name}.json", sidecar)
    return ExportedGraph(
        name,
        path,
        side_path,
        precision,
        expected_attention_count(m, name),
        time.perf_counter() - t0,
    )


def _save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Check and write ``proto`` to ``path`` (weights over 2 GB in ``<path>.data``).

    The files are written into a private temporary folder beside ``path`` and renamed into
    place, the data file before the graph that names it, so a failure leaves the old pair and
    no partial file (the temporary folder is removed)."""
    data_file = path.with_name(path.name + ".data")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_TMP_DIR, dir=path.parent))
    try:
        staged, staged_data = tmp_dir / path.name, tmp_dir / data_file.name
        if proto.ByteSize() > _EXTERNAL_DATA_BYTES:
            onnx.save_model(
                proto,
                staged,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_file.name,
            )
            onnx.checker.check_model(str(staged), full_check=True)
        else:
            onnx.checker.check_model(proto, full_check=True)
            onnx.save_model(proto, staged)
        external = staged_data.exists()
        for f in (staged_data, staged) if external else (staged,):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if external:
            os.replace(staged_data, data_file)
        os.replace(staged, path)
        if not external and data_file.exists():
            data_file.unlink()  # the old graph's weights; the new graph holds its own
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Temporary folders of an export killed while it wrote (call under the export lock)."""
    for d in out.glob(f".*{_TMP_DIR}"):
        shutil.rmtree(d, ignore_errors=True)


def export_model(
    model: EgoVLPv2,
    out_dir: str | os.PathLike,
    *,
    graphs: Sequence[str] = DUAL_GRAPHS,
    num_frames: int | None = None,
    precision: str = "fp32",
    opset: int = ONNX_OPSET,
    tokenizer_file: str | os.PathLike | None = None,
    source_checkpoint: str | os.PathLike | None = None,
    max_text_length: int | None = None,
    progress=None,
) -> list[ExportedGraph]:
    """Export several graphs into ``out_dir`` and write its ``export.json`` manifest (graphs,
    config, preprocessing); copy ``tokenizer_file`` there as ``tokenizer.json``.

    ``progress``: optional callable ``(graph_name) -> None`` called before each graph.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_output(out / MANIFEST, what="export folder"):
        _remove_stale_staging(out)
        return _export_locked(
            model,
            out,
            graphs=graphs,
            num_frames=num_frames,
            precision=precision,
            opset=opset,
            tokenizer_file=tokenizer_file,
            source_checkpoint=source_checkpoint,
            max_text_length=max_text_length,
            progress=progress,
        )


def _export_locked(
    model: EgoVLPv2,
    out: Path,
    *,
    graphs: Sequence[str],
    num_frames: int | None,
    precision: str,
    opset: int,
    tokenizer_file: str | os.PathLike | None,
    source_checkpoint: str | os.PathLike | None,
    max_text_length: int | None,
    progress,
) -> list[ExportedGraph]:
    frames = num_frames or model.config.video.num_frames
    prep = Preprocessing.for_config(
        model.config, num_frames=frames, max_text_length=max_text_length
    )
    done = []
    for name in graphs:
        if progress is not None:
            progress(name)
        done.append(
            export_graph(
                model,
                name,
                out,
                num_frames=frames,
                precision=precision,
                opset=opset,
                preprocessing=prep,
                source_checkpoint=source_checkpoint,
            )
        )
    if tokenizer_file is not None:
        src = Path(tokenizer_file)
        if not src.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {src}")
        if src.resolve() != (out / "tokenizer.json").resolve():
            atomic_write_with(out / "tokenizer.json", lambda tmp: shutil.copyfile(src, tmp))
    _update_manifest(out, model, prep, precision, done)
    return done


def _update_manifest(
    out: Path, model: EgoVLPv2, prep: Preprocessing, precision: str, done: list[ExportedGraph]
) -> None:
    path = out / MANIFEST
    manifest = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            manifest = json.loads(path.read_text())
    same = (
        manifest.get("config") == model.config.to_dict()
        and manifest.get("preprocessing") == prep.to_dict()
        and manifest.get("precision") == precision
    )
    graphs = dict(manifest.get("graphs", {})) if same else {}
    for g in done:
        graphs[g.name] = {"onnx": g.path.name, "sidecar": g.sidecar.name}
    manifest = {
        "format_version": 1,
        "config": model.config.to_dict(),
        "preprocessing": prep.to_dict(),
        "precision": precision,
        "package_version": __version__,
        "graphs": graphs,
        "tokenizer": "tokenizer.json" if (out / "tokenizer.json").is_file() else None,
    }
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def verify_onnx(
    model: EgoVLPv2,
    exported: ExportedGraph | str | os.PathLike,
    *,
    batches: Sequence[int] = (1, 3),
    text_lengths: Sequence[int] = (5, 12),
    seed: int = 0,
) -> dict[str, float]:
    """Run an exported graph with onnxruntime (CPU) against ``model`` in PyTorch (float32)
    on random inputs; returns ``{"b{B}_l{L}": err}`` with ``err = max|ort - torch| /
    max|torch|`` for every batch size and text length (one length for the video encoder)."""
    import onnxruntime as ort

    path = Path(exported.path if isinstance(exported, ExportedGraph) else exported)
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    name = meta.get("egovlpv2.graph")
    if name not in GRAPHS:
        raise ValueError(f"{path}: no egovlpv2 graph metadata")
    frames = json.loads(meta["egovlpv2.inputs"]).get("video", {}).get("shape", [0, 0])[1]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    graph = build_graph(ref_model, name)
    spec = GRAPHS[name]
    lengths = text_lengths if spec.takes_text else text_lengths[:1]
    max_len = model.config.text.max_text_length
    errors: dict[str, float] = {}
    for b in batches:
        for length in lengths:
            length = min(length, max_len)
            ex = example_inputs(
                ref_model,
                name,
                num_frames=frames or model.config.video.num_frames,
                batch=max(2, b),
                text_length=max(2, length),
                seed=seed + b,
            )
            ex = tuple(t[:b] for t in ex)
            with torch.no_grad():
                ref = graph(*ex).numpy()
            got = sess.run(None, {k: v.numpy() for k, v in zip(spec.inputs, ex, strict=True)})[0]
            errors[f"b{b}_l{length}"] = float(np.abs(got - ref).max() / np.abs(ref).max())
    return errors
