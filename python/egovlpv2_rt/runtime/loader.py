"""``load()``: a checkpoint, a model folder or an export folder -> a :class:`Runtime` on one
backend (torch, onnxruntime, TensorRT), with its device, precision and batch sizes chosen."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import ModelConfig
from ..errors import InputError
from ..export.metadata import read_manifest
from ..model_files import load_model_files, load_tokenizer, resolve_checkpoint
from ..ops import fused_available
from ..preprocessing import Preprocessing
from ..tokenizer import RobertaTokenizer
from ..video.reader import Backend
from .api import PRECISIONS, Runtime
from .engines import Engine, OrtEngine, TensorRTEngines, TorchEngine

if TYPE_CHECKING:
    from ..modeling.model import EgoVLPv2

__all__ = ["BACKENDS", "PRECISIONS", "load"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PathLike = str | os.PathLike


def _resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: CUDA is not available here (torch "
            f"{torch.__version__}); use device='cpu'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def _check_counts(**counts: Any) -> None:
    """Each count is None (the default) or a positive int: 0 is refused here, where it is
    given, instead of being read as "the default" or failing later."""
    for name, value in counts.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive int (or None), got {value!r}")


def _cache_root() -> Path:
    env = os.environ.get("EGOVLPV2_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "egovlpv2_rt"


def _checkpoint_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    # Content hash of the first and last MiB guards against a file replaced in place.
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def load(
    checkpoint: PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    precision: str | None = None,
    backend: str = "torch",
    tokenizer: PathLike | None = None,
    config: ModelConfig | None = None,
    num_frames: int | None = None,
    max_text_length: int | None = None,
    video_batch_size: int | None = None,
    text_batch_size: int | None = None,
    cuda_graphs: bool | None = None,
    onnx_dir: PathLike | None = None,
    video_backend: Backend = "pyav",
    decode_workers: int | None = None,
    cache_size: int = 4096,
    attention_impl: str | None = None,
    check_finite_pixels: bool = True,
) -> Runtime:
    """Load a model for inference.

    Args:
        checkpoint: None (the shipped default model), a model folder (``model.safetensors`` +
            ``tokenizer.json``), an export folder (``export.json``, from ``egovlpv2-export``),
            or a weights file (``.safetensors`` with its config in the metadata; ``.pth`` with
            ``config=``) with the tokenizer files beside it.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA when available.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; default fp32 on CPU, fp16 on CUDA.
            For onnxruntime/tensorrt, the precision of the export folder.
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        tokenizer: tokenizer.json or a folder with it (default: beside the checkpoint).
        config: ModelConfig for checkpoints that do not store one (released ``.pth``).
        num_frames: frames per clip (default: the model's ``video.num_frames``; fixed by the
            export for onnxruntime/tensorrt).
        max_text_length: caption tokens kept (default: the model's limit).
        video_batch_size, text_batch_size: batch sizes (defaults 8/64 on CPU, 32/256 on CUDA).
        cuda_graphs: capture CUDA graphs per shape bucket (torch backend on CUDA; default on).
        onnx_dir: where the onnxruntime backend keeps exported graphs when the checkpoint is
            not an export folder (default: a cache folder keyed by the checkpoint file).
        video_backend: ``egovlpv2_rt.video`` decoder (``"pyav"``, ``"torchcodec"``, ...).
        decode_workers: threads decoding clips in parallel (default min(4, CPUs)).
        cache_size: text embeddings kept in the LRU cache (0 disables it).
        attention_impl: torch backend: ``"fused"`` (custom ops) or ``"reference"`` (plain
            PyTorch); default fused where the ops are built for the device and precision.
        check_finite_pixels: refuse a clip whose pixels hold a NaN or an Inf after
            preprocessing (:class:`~egovlpv2_rt.errors.InputError` naming the clip), on every
            backend. On by default; ``False`` is for callers that guarantee their inputs and
            want to skip one pass over each batch: NaN pixels then give NaN embeddings and
            scores. The switch is the caller's and is never saved with a model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_counts(
        num_frames=num_frames,
        max_text_length=max_text_length,
        video_batch_size=video_batch_size,
        text_batch_size=text_batch_size,
        decode_workers=decode_workers,
    )
    if max_text_length == 1:
        raise InputError("max_text_length must be >= 2 (room for <s> and </s>), got 1")
    if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 0:
        raise InputError(f"cache_size must be an int >= 0 (0: no cache), got {cache_size!r}")
    dev = _resolve_device(device)
    requested = precision
    precision = precision or ("fp16" if dev.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if backend == "torch" and dev.type == "cpu" and precision == "fp16":
        raise ValueError("precision 'fp16' is not supported on the CPU; use 'fp32' or 'bf16'")
    files = resolve_checkpoint(checkpoint)
    tok_path = Path(tokenizer) if tokenizer is not None else files.tokenizer
    cuda = dev.type == "cuda"
    vbs = video_batch_size or (32 if cuda else 8)
    tbs = text_batch_size or (256 if cuda else 64)
    workers = decode_workers or min(4, os.cpu_count() or 1)
    if vbs < 1 or tbs < 1:
        raise ValueError("batch sizes must be >= 1")

    def runtime(engine: Engine, cfg: ModelConfig, prep: Preprocessing, precision: str) -> Runtime:
        return Runtime(
            engine,
            config=cfg,
            preprocessing=prep,
            tokenizer=_tokenizer_for(tok_path, prep, cfg),
            device=dev,
            precision=precision,
            video_batch_size=vbs,
            text_batch_size=tbs,
            video_backend=video_backend,
            decode_workers=workers,
            cache_size=cache_size,
            files=files,
            check_finite_pixels=check_finite_pixels,
        )

    if files.export_dir is not None and backend != "torch":
        manifest = read_manifest(files.export_dir)
        cfg = ModelConfig.from_dict(manifest["config"], where=str(files.export_dir / "export.json"))
        prep = _export_preprocessing(manifest, files.export_dir, num_frames, max_text_length)
        exported = manifest.get("precision", "fp32")
        if requested is not None and requested != exported:
            raise ValueError(
                f"precision {requested!r} requested, but the export in {files.export_dir} is "
                f"{exported!r} (export it again with --precision {requested})"
            )
        engine: Engine
        if backend == "onnxruntime":
            has_fusion = "vtm" in manifest["graphs"]
            engine = OrtEngine(files.export_dir, dev, None, has_fusion=has_fusion)
        else:
            engine = TensorRTEngines(files.export_dir, dev)
        return runtime(engine, cfg, prep, exported)

    if backend == "tensorrt":
        raise ValueError(
            "backend 'tensorrt' needs an export folder with engines (build them with "
            "`egovlpv2-export --format tensorrt --out DIR`, then load(DIR, backend='tensorrt'))"
        )
    if files.checkpoint is None:
        raise FileNotFoundError(
            f"{files.export_dir}: an export folder without model.safetensors serves "
            "backend='onnxruntime' or 'tensorrt' only"
        )
    if attention_impl not in (None, "fused", "reference"):
        raise ValueError(f"attention_impl must be 'fused' or 'reference', got {attention_impl!r}")
    if attention_impl == "fused" and not fused_available(dev, PRECISIONS[precision]):
        raise ValueError(
            f"attention_impl='fused': the custom ops are not built for {dev.type} "
            f"{precision} here (see egovlpv2_rt.build_info())"
        )
    # "auto" takes the fused ops where they run for the device and precision, and warns once
    # when the extension is not built at all.
    model = load_model_files(
        files,
        config=config,
        device="cpu",
        dtype=torch.float32,
        attention_impl=attention_impl or "auto",
    )
    prep = _model_preprocessing(model.config, num_frames, max_text_length)
    if backend == "onnxruntime":
        engine = _onnxruntime_engine(
            model, files.checkpoint, tok_path, prep, dev, precision, onnx_dir
        )
    else:
        engine = _torch_engine(model, dev, precision, cuda_graphs, max(vbs, tbs), prep)
    return runtime(engine, model.config, prep, precision)


def _export_preprocessing(
    manifest: dict[str, Any], export_dir: Path, num_frames: int | None, max_text_length: int | None
) -> Preprocessing:
    """An export folder's preprocessing; its frame count is fixed, its text length a maximum."""
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    if num_frames is not None and num_frames != prep.num_frames:
        raise ValueError(
            f"num_frames={num_frames}, but the export in {export_dir} takes {prep.num_frames} "
            "frames per clip (frame count mismatch)"
        )
    if max_text_length is not None:
        prep = dataclasses.replace(prep, max_text_length=min(max_text_length, prep.max_text_length))
    return prep


def _model_preprocessing(
    cfg: ModelConfig, num_frames: int | None, max_text_length: int | None
) -> Preprocessing:
    """The preprocessing of a model: up to its frame count and text length."""
    frames = num_frames or cfg.video.num_frames
    if not 1 <= frames <= cfg.video.num_frames:
        raise ValueError(
            f"num_frames={frames} is outside [1, {cfg.video.num_frames}] (the model's maximum "
            "clip length; frame count mismatch)"
        )
    limit = cfg.text.max_text_length
    return Preprocessing.for_config(
        cfg, num_frames=frames, max_text_length=min(max_text_length or limit, limit)
    )


def _tokenizer_for(path: Path | None, prep: Preprocessing, cfg: ModelConfig) -> RobertaTokenizer:
    """The tokenizer at ``path``, checked against the model's vocabulary."""
    tok = load_tokenizer(path, prep.max_text_length)
    if tok.vocab_size > cfg.text.vocab_size:
        raise ValueError(
            f"tokenizer {path} has {tok.vocab_size} tokens but the model's vocabulary is "
            f"{cfg.text.vocab_size}: wrong tokenizer for this checkpoint"
        )
    return tok


def _onnxruntime_engine(
    model: EgoVLPv2,
    checkpoint: Path,
    tok_path: Path | None,
    prep: Preprocessing,
    dev: torch.device,
    precision: str,
    onnx_dir: PathLike | None,
) -> OrtEngine:
    """onnxruntime over graphs exported from ``model`` on first use (cached by checkpoint)."""
    if precision == "bf16" and dev.type == "cpu":
        raise ValueError(
            "onnxruntime on the CPU does not run bfloat16 graphs; use precision 'fp32' or 'fp16'"
        )
    frames = prep.num_frames
    out = (
        Path(onnx_dir)
        if onnx_dir is not None
        else _cache_root() / "onnx" / f"{_checkpoint_key(checkpoint)}-f{frames}-{precision}"
    )
    tokenizer_file = tok_path if tok_path is not None and tok_path.is_file() else None

    def exporter(name: str) -> None:
        # onnx and onnxscript (the `export` extra) are needed only here.
        from ..export.onnx_export import export_model

        export_model(
            model,
            out,
            graphs=(name,),
            num_frames=frames,
            precision=precision,
            tokenizer_file=tokenizer_file,
            source_checkpoint=checkpoint,
            max_text_length=prep.max_text_length,
        )

    return OrtEngine(out, dev, exporter, has_fusion=hasattr(model, "itm_score"))


def _torch_engine(
    model: EgoVLPv2,
    dev: torch.device,
    precision: str,
    cuda_graphs: bool | None,
    max_batch: int,
    prep: Preprocessing,
) -> TorchEngine:
    """The PyTorch model on ``dev`` in ``precision`` (CUDA graphs by default on CUDA)."""
    use_graphs = (dev.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
    if use_graphs and dev.type != "cuda":
        raise ValueError("cuda_graphs=True needs a CUDA device")
    # The Runtime checks pixels itself, on the CPU before the copy to the device, naming the
    # clip; the model's own check would repeat it (and sync the device, on CUDA) and would
    # override a caller's check_finite_pixels=False.
    model.check_finite_pixels = False
    dtype = PRECISIONS[precision]
    model = model.to(device=dev, dtype=dtype).eval()
    cfg = model.config
    return TorchEngine(
        model,
        dev,
        dtype,
        cuda_graphs=use_graphs,
        max_batch=max_batch,
        max_text_length=prep.max_text_length,
        pad_token_id=cfg.text.pad_token_id,
        bos_token_id=cfg.text.bos_token_id,
    )
