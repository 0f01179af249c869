"""ONNX export: parity with PyTorch in onnxruntime, standard domains only, TensorRT-fusable
attention subgraphs, metadata/sidecars, precision casts, TensorRT profile/sidecar logic and the
``egovlpv2-export`` CLI.

One tiny model (2 layers, 1 fused pair, random gates and time attention so every path
matters) is exported once per test session through the CLI (``--mode all``: video_encoder,
text_encoder, vtm); the runtime tests reuse the same folder.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from _tiny_assets import tiny_export_dir, tiny_model_dir

from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.export import passes
from egovlpv2_rt.export.graphs import GRAPHS, build_graph, example_inputs
from egovlpv2_rt.export.onnx_export import expected_attention_count
from egovlpv2_rt.modeling import EgoVLPv2

TOL = 1e-4


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tiny_export_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(model_dir) -> EgoVLPv2:
    return load_model(model_dir / "model.safetensors", attention_impl="reference")


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------ parity


PARITY_CASES = [("video_encoder", b, 0) for b in (1, 3)] + [
    (name, b, length) for name in ("text_encoder", "vtm") for b in (1, 3) for length in (5, 17)
]


@pytest.mark.parametrize("name, batch, length", PARITY_CASES)
def test_onnx_matches_pytorch(export_dir, model, name, batch, length):
    """One exported file serves two batch sizes and two text lengths within 1e-4 relative
    of the PyTorch model (reference attention path, float32)."""
    length = length or 5  # the video encoder has no text input
    sess = _session(export_dir / f"{name}.onnx")
    ex = example_inputs(
        model,
        name,
        num_frames=4,
        batch=max(2, batch),
        text_length=length,
        seed=batch * 100 + length,
    )
    ex = tuple(t[:batch] for t in ex)
    with torch.no_grad():
        ref = build_graph(model, name)(*ex).numpy()
    got = sess.run(None, {k: v.numpy() for k, v in zip(GRAPHS[name].inputs, ex, strict=True)})[0]
    assert got.shape == ref.shape
    assert _rel(got, ref) <= TOL


def test_padding_row_is_exercised(model):
    """The 3-row text examples pad their last row, so the mask path is compared above."""
    ids, mask = example_inputs(model, "text_encoder", num_frames=4, batch=3, text_length=17)
    assert mask[:2].all() and mask[2].sum() == 8 and (ids[2, 8:] == 1).all()


# ------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("name", ["video_encoder", "text_encoder", "vtm"])
def test_only_standard_onnx_domains(export_dir, name):
    proto = onnx.load(str(export_dir / f"{name}.onnx"))
    assert passes.nonstandard_nodes(proto) == []
    assert {o.domain for o in proto.opset_import} <= passes.STANDARD_DOMAINS
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18


def test_nonstandard_node_is_detected(export_dir):
    proto = onnx.load(str(export_dir / "text_encoder.onnx"))
    bad = copy.deepcopy(proto)
    bad.graph.node.append(
        helper.make_node("MyAttention", ["x"], ["y"], domain="com.example", name="custom")
    )
    assert passes.nonstandard_nodes(bad) == ["com.example::MyAttention (custom)"]
    bad.functions.append(helper.make_function("local", "Fn", ["a"], ["b"], [], []))
    assert "function local::Fn" in passes.nonstandard_nodes(bad)


@pytest.mark.parametrize("name", ["video_encoder", "text_encoder", "vtm"])
def test_attention_subgraphs_are_tensorrt_fusable(export_dir, model, name):
    """Every Softmax sits in MatMul(q*s, K^T) [-> Add mask] -> Softmax -> MatMul with 4-D
    [B, heads, S, d] operands; there are as many as the architecture has attentions."""
    proto = onnx.load(str(export_dir / f"{name}.onnx"))
    matches = passes.attention_patterns(proto)
    assert len(matches) == expected_attention_count(model, name)
    assert [m.problems for m in matches if m.problems] == []
    scale = 16**-0.5  # head dim 64 / 4 heads in both towers
    for m in matches:
        assert m.ranks == {"q": 4, "k_t": 4, "v": 4}
        assert m.scale == pytest.approx(scale, rel=1e-6)
    masked = sum(m.mask_add is not None for m in matches)
    # Text self-attention and i2t read the text mask; video attention and t2i do not.
    cfg = model.config
    want = {
        "video_encoder": 0,
        "text_encoder": cfg.text.num_hidden_layers,
        "vtm": cfg.text.num_hidden_layers + cfg.fusion.num_fuse_block,
    }[name]
    assert masked == want


def _tiny_attention_graph(post_scale: str | None) -> onnx.ModelProto:
    """q, k, v [1, 2, 3, 4] -> softmax(q k^T * s + mask) v with the scale after the MatMul
    (Div or Mul) as the RoBERTa code writes it, or before it on q (None)."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "c"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    if post_scale is None:
        nodes += [
            helper.make_node("Mul", ["q", "half"], ["qs"]),
            helper.make_node("MatMul", ["qs", "kt"], ["scaled"]),
        ]
    else:
        const = "c" if post_scale == "Div" else "half"
        nodes += [
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node(post_scale, ["scores", const], ["scaled"]),
        ]
    nodes += [
        helper.make_node("Add", ["scaled", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["out"]),
    ]
    t = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 3, 4]) for n in "qkv"]
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 1, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 3, 4])
    graph = helper.make_graph(nodes, "attn", [*t, mask], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("post_scale", ["Div", "Mul"])
def test_prescale_rewrite_moves_the_scale_onto_q(post_scale):
    proto = _tiny_attention_graph(post_scale)
    (before,) = passes.attention_patterns(proto)
    assert not before.fusable and "not pre-scaled" in before.problems[0]
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for n in "qkv"}
    feeds["mask"] = np.array([[[[0.0, 0.0, -1e9]]]], np.float32)
    ref = _session_from_proto(proto).run(None, feeds)[0]
    assert passes.prescale_attention(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    (after,) = passes.check_attention_patterns(proto, expected=1)
    assert after.scale == pytest.approx(0.5)
    assert after.mask_add is not None
    got = _session_from_proto(proto).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_pattern_check_rejects_a_softmax_outside_attention():
    proto = _tiny_attention_graph(None)
    # Read the probabilities twice: TensorRT cannot fuse that.
    proto.graph.node.append(helper.make_node("Identity", ["p"], ["p2"]))
    proto.graph.output.append(helper.make_tensor_value_info("p2", TensorProto.FLOAT, None))
    with pytest.raises(ValueError, match="not read by exactly one MatMul"):
        passes.check_attention_patterns(proto)


def _session_from_proto(proto: onnx.ModelProto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------ metadata


def test_metadata_and_sidecar(export_dir, model):
    from egovlpv2_rt.export.metadata import Preprocessing, read_sidecar

    for name in ("video_encoder", "text_encoder", "vtm"):
        proto = onnx.load(str(export_dir / f"{name}.onnx"))
        onnx.checker.check_model(proto, full_check=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["egovlpv2.graph"] == name
        assert meta["egovlpv2.precision"] == "fp32"
        side = read_sidecar(export_dir / f"{name}.json")
        assert side.model_config() == model.config
        assert json.loads(meta["egovlpv2.config"]) == side.config
        prep = side.preprocessing_spec()
        assert prep == Preprocessing.for_config(model.config)
        assert (prep.num_frames, prep.size, prep.max_text_length) == (4, 32, 38)
        from egovlpv2_rt.export.metadata import file_sha256

        assert side.sha256 == file_sha256(export_dir / f"{name}.onnx")
        assert side.source_sha256 == file_sha256(export_dir.parent / "model" / "model.safetensors")
        # Dynamic dims carry their names; frames and image size are fixed.
        dims = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in proto.graph.input
        }
        if "video" in dims:
            assert dims["video"] == ["batch", 4, 3, 32, 32]
        if "input_ids" in dims:
            assert dims["input_ids"] == ["batch", "text_length"]
            assert dims["attention_mask"] == ["batch", "text_length"]
    manifest = json.loads((export_dir / "export.json").read_text())
    assert sorted(manifest["graphs"]) == ["text_encoder", "video_encoder", "vtm"]
    assert (export_dir / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------ precision


def test_fp16_cast_runs_and_stays_close(export_dir, model):
    proto = onnx.load(str(export_dir / "text_encoder.onnx"))
    passes.cast_precision(proto, "fp16")
    onnx.checker.check_model(proto, full_check=True)
    passes.check_attention_patterns(proto, expected=model.config.text.num_hidden_layers)
    kinds = {t.data_type for t in proto.graph.initializer}
    assert TensorProto.FLOAT16 in kinds
    # LayerNorm weights stay float32 (read only by float32 LayerNorms).
    ln = {n.input[1] for n in proto.graph.node if n.op_type == "LayerNormalization"}
    assert all(t.data_type == TensorProto.FLOAT for t in proto.graph.initializer if t.name in ln)
    for t in proto.graph.initializer:  # the additive mask constant was clamped, not inf
        if t.data_type == TensorProto.FLOAT16:
            assert np.isfinite(numpy_helper.to_array(t)).all()
    ids, mask = example_inputs(model, "text_encoder", num_frames=4, batch=3, text_length=12)
    with torch.no_grad():
        ref = model.encode_text(ids, mask).numpy()
    got = _session_from_proto(proto).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )[0]
    assert got.dtype == np.float32
    assert _rel(got, ref) <= 5e-3


def test_bf16_cast_structure(export_dir, model):
    proto = onnx.load(str(export_dir / "video_encoder.onnx"))
    passes.cast_precision(proto, "bf16")
    onnx.checker.check_model(proto, full_check=True)
    passes.check_attention_patterns(proto, expected=4 * model.config.video.depth)
    # LayerNorm and (below opset 22, where Conv has no bfloat16) the patch-embedding Conv
    # keep float32 weights.
    ln = {
        i
        for n in proto.graph.node
        if n.op_type in ("LayerNormalization", "Conv")
        for i in n.input[1:]
    }
    weights = [
        t
        for t in proto.graph.initializer
        if t.dims and np.prod(t.dims) > 1 and t.data_type != TensorProto.INT64
    ]
    assert weights
    for t in weights:
        assert t.data_type == (TensorProto.FLOAT if t.name in ln else TensorProto.BFLOAT16)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    first = next(n for n in proto.graph.node if "video" in n.input)
    assert first.op_type == "Cast" and first.attribute[0].i == TensorProto.BFLOAT16


def test_bf16_rounding_matches_torch():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 100
    x[:3] = torch.tensor([1.00390625, -2.0078125, 3.0])  # exact ties round to even
    t = passes._bf16_tensor(x.numpy(), "x")
    ours = np.frombuffer(t.raw_data, np.uint16)
    ref = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)


def test_export_rejects_bad_arguments(model):
    from egovlpv2_rt.export.onnx_export import export_graph, graphs_for_mode

    with pytest.raises(ValueError, match="frames: 5 is outside"):
        export_graph(model, "video_encoder", "unused", num_frames=5)
    with pytest.raises(ValueError, match="precision"):
        export_graph(model, "video_encoder", "unused", precision="int8")
    with pytest.raises(ValueError, match="opset must be >= 18"):
        export_graph(model, "video_encoder", "unused", opset=17)
    with pytest.raises(ValueError, match="--with-mlm needs"):
        graphs_for_mode("dual", with_mlm=True)
    assert graphs_for_mode("fusion", with_mlm=True) == ("vtm", "mlm")


# ------------------------------------------------------------------------------ TensorRT


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def test_tensorrt_missing_gives_install_command(no_tensorrt, export_dir):
    from egovlpv2_rt.export.tensorrt import (
        TensorRTUnavailableError,
        build_engine,
        import_tensorrt,
    )

    with pytest.raises(TensorRTUnavailableError, match=r"'tensorrt'.*pip install"):
        import_tensorrt()
    with pytest.raises(TensorRTUnavailableError, match="pip install"):
        build_engine(export_dir / "text_encoder.onnx")


def test_engine_profiles_and_sidecar(export_dir):
    from egovlpv2_rt.export.metadata import read_sidecar
    from egovlpv2_rt.export.tensorrt import (
        EngineProfile,
        engine_sidecar,
        parse_range,
        profile_shapes,
    )

    assert parse_range("1:8:32", "--batch") == (1, 8, 32)
    assert parse_range("16", "--batch") == (16, 16, 16)
    for bad in ("8:1:32", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(ValueError, match="--batch"):
            parse_range(bad, "--batch")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        EngineProfile(batch=(4, 2, 8))
    prof = EngineProfile(batch=(1, 8, 32), text_length=(4, 16, 32))
    shapes = profile_shapes("vtm", prof, num_frames=4, img_size=32, max_text_length=38)
    assert shapes == {
        "video": ((1, 4, 3, 32, 32), (8, 4, 3, 32, 32), (32, 4, 3, 32, 32)),
        "input_ids": ((1, 4), (8, 16), (32, 32)),
        "attention_mask": ((1, 4), (8, 16), (32, 32)),
    }
    assert list(profile_shapes("video_encoder", prof, num_frames=4, img_size=32)) == ["video"]
    with pytest.raises(ValueError, match="exceeds the model's limit 20"):
        profile_shapes("text_encoder", prof, num_frames=4, img_size=32, max_text_length=20)
    onnx_side = read_sidecar(export_dir / "vtm.json")
    side = engine_sidecar(
        onnx_side,
        "vtm.engine",
        [prof, EngineProfile((33, 48, 64), (4, 8, 16))],
        tensorrt_version="10.9.0",
        device="H100",
        build_seconds=1.0,
    )
    assert side.format == "tensorrt" and side.file == "vtm.engine"
    assert side.precision == "fp32" and side.config == onnx_side.config
    assert side.extra["profile_shapes"][1]["video"][2] == [64, 4, 3, 32, 32]
    assert side.extra["profiles"][0] == {"batch": (1, 8, 32), "text_length": (4, 16, 32)}
    assert side.extra["strongly_typed"] is True


def test_profiles_from_cli_flags():
    from egovlpv2_rt.cli.export import profiles_from_args

    (one,) = profiles_from_args(None, None, 38)
    assert (one.batch, one.text_length) == ((1, 8, 32), (4, 16, 32))
    two = profiles_from_args(["1:4:8", "9:16:32"], ["4:8:16"], 38)
    assert [p.batch for p in two] == [(1, 4, 8), (9, 16, 32)]
    assert [p.text_length for p in two] == [(4, 8, 16), (4, 8, 16)]
    (short,) = profiles_from_args(None, None, 12)
    assert short.text_length == (4, 12, 12)
    with pytest.raises(ValueError, match="equally often"):
        profiles_from_args(["1", "2"], ["3", "4", "5"], 38)
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        profiles_from_args(None, ["4:8:64"], 38)


# ------------------------------------------------------------------------------ CLI


def _run_export_cli(args, capsys) -> tuple[int, str, str]:
    from egovlpv2_rt.cli.export import main

    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_tensorrt_without_tensorrt_is_one_line(no_tensorrt, model_dir, tmp_path, capsys):
    rc, _, err = _run_export_cli(
        [
            "--mode",
            "dual",
            "--format",
            "tensorrt",
            "--checkpoint",
            str(model_dir),
            "--out",
            str(tmp_path / "e"),
        ],
        capsys,
    )
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("egovlpv2-export: error: TensorRT is not")
    assert "pip install" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()  # failed before exporting anything


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "9"], "--frames 9 is outside [1, 4]"),
        (["--mode", "dual", "--with-mlm"], "--with-mlm needs"),
        (["--checkpoint", "/nonexistent/model.safetensors"], "checkpoint not found"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, model_dir, tmp_path, capsys):
    full = ["--out", str(tmp_path / "e"), *args]
    if "--checkpoint" not in args:
        full += ["--checkpoint", str(model_dir)]
    rc, _, err = _run_export_cli(full, capsys)
    assert rc == 1
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_wrong_checkpoint_file(tmp_path, capsys):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    rc, _, err = _run_export_cli(["--checkpoint", str(junk), "--out", str(tmp_path / "e")], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert "not a readable EgoVLPv2 checkpoint" in err


def test_cli_usage_error_exit_code(capsys):
    from egovlpv2_rt.cli.export import main

    with pytest.raises(SystemExit) as exc:
        main(["--mode", "dual"])  # --out missing
    assert exc.value.code == 2


class _FakeTensorRT:
    """The slice of the TensorRT 10 builder API that build_engine uses, recording calls (the
    real package cannot be installed here; this checks the call sequence and the files)."""

    __version__ = "10.9.0"

    def __init__(self):
        self.calls = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                fake.calls.append(("logger", level))

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timed"

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("shape", name, lo, opt, hi))

        class Config:
            builder_optimization_level = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def create_timing_cache(self, data):
                self.cache = Cache(data)
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("timing_cache", cache.data, ignore_mismatch))

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile",))

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", config.builder_optimization_level))
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", Path(path).name))
                return Path(path).is_file()

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
        self.MemoryPoolType = MemoryPoolType


def test_build_engine_call_sequence(export_dir, tmp_path, monkeypatch):
    import shutil

    from egovlpv2_rt.export.metadata import read_sidecar
    from egovlpv2_rt.export.tensorrt import EngineProfile, build_engine

    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    for f in ("vtm.onnx", "vtm.json"):
        shutil.copy(export_dir / f, tmp_path / f)
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"old")
    profiles = [EngineProfile((1, 2, 4), (4, 8, 16)), EngineProfile((5, 8, 16), (4, 16, 32))]
    engine = build_engine(
        tmp_path / "vtm.onnx", profiles=profiles, timing_cache=cache, workspace_gib=1
    )
    assert engine == tmp_path / "vtm.engine" and engine.read_bytes() == b"ENGINE"
    assert cache.read_bytes() == b"old+timed"
    assert ("network", 1 << 5) in fake.calls  # strongly typed
    assert ("timing_cache", b"old", False) in fake.calls
    assert ("pool", "workspace", 1 << 30) in fake.calls
    shapes = [c for c in fake.calls if c[0] == "shape"]
    assert len(shapes) == 6 and fake.calls.count(("profile",)) == 2
    assert ("shape", "video", (5, 4, 3, 32, 32), (8, 4, 3, 32, 32), (16, 4, 3, 32, 32)) in shapes
    assert ("shape", "input_ids", (1, 4), (2, 8), (4, 16)) in shapes
    side = read_sidecar(tmp_path / "vtm.engine.json")
    assert side.format == "tensorrt" and side.extra["tensorrt_version"] == "10.9.0"
    assert side.extra["source_onnx"] == "vtm.onnx" and len(side.extra["profiles"]) == 2
    fake.__version__ = "8.6.1"
    from egovlpv2_rt.export.tensorrt import TensorRTUnavailableError

    with pytest.raises(TensorRTUnavailableError, match="too old"):
        build_engine(tmp_path / "vtm.onnx")
