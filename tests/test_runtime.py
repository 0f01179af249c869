"""``egovlpv2_rt.runtime``: torch and onnxruntime backends agree, inputs in every form give the
model's numbers, text batching/caching/bucketing do not change results, scoring and MCQ
modes compose as specified, and bad inputs raise clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_assets import synthetic_clips, tiny_export_dir, tiny_model_dir

from egovlpv2_rt import model_files, runtime
from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.runtime import DefaultModelMissingError, engines, load
from egovlpv2_rt.video import ClipSpec, EvalTransform, VideoError, read_clip

TOL = 1e-4


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tiny_export_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_clips(tmp_path_factory)


@pytest.fixture(scope="module")
def specs(synth) -> list[ClipSpec]:
    root, records = synth
    return [
        ClipSpec(str(root / "videos" / f"{r.video_uid}.mp4"), r.clip_start, r.clip_end)
        for r in records[:6]
    ]


@pytest.fixture(scope="module")
def rt_torch(model_dir):
    return load(model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def rt_ort(export_dir):
    return load(export_dir, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def model(model_dir) -> EgoVLPv2:
    return load_model(model_dir / "model.safetensors", attention_impl="reference")


CAPTIONS = [
    "#C C moves the red square to the left",
    "#C C picks up the bar",
    "C rotates the green triangle",
    "#C C puts down the white circle on the table",
    "#C C moves the blue bar to the right",
]


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------ backends


def test_torch_and_onnxruntime_agree(rt_torch, rt_ort, specs):
    assert rt_ort.backend == "onnxruntime" and rt_torch.backend == "torch"
    assert _rel(rt_ort.encode_video(specs), rt_torch.encode_video(specs)) <= TOL
    assert _rel(rt_ort.encode_text(CAPTIONS), rt_torch.encode_text(CAPTIONS)) <= TOL
    pairs = specs[: len(CAPTIONS)]
    assert _rel(rt_ort.score(pairs, CAPTIONS), rt_torch.score(pairs, CAPTIONS)) <= TOL


def test_onnxruntime_exports_on_first_use(model_dir, tmp_path, rt_torch):
    """A checkpoint (not an export folder) with backend='onnxruntime' exports the graph it
    needs into onnx_dir on first use."""
    rt = load(model_dir, backend="onnxruntime", device="cpu", onnx_dir=tmp_path / "cache")
    emb = rt.encode_text(CAPTIONS[:3])
    assert (tmp_path / "cache" / "text_encoder.onnx").is_file()
    assert not (tmp_path / "cache" / "video_encoder.onnx").exists()
    assert _rel(emb, rt_torch.encode_text(CAPTIONS[:3])) <= TOL


def test_runtime_equals_the_model(rt_torch, model, specs):
    """Paths are decoded with the export's preprocessing and give the model's embeddings."""
    p = rt_torch.preprocessing
    assert (p.num_frames, p.size) == (4, 32)
    tf = EvalTransform(resize=32, crop=32, size=32)
    pixels = torch.stack(
        [read_clip(s.path, s.start_sec, s.end_sec, num_frames=4, transform=tf) for s in specs]
    )
    with torch.no_grad():
        ref_v = model.encode_video(pixels).numpy()
        tok = rt_torch.tokenizer(CAPTIONS, max_length=p.max_text_length)
        ref_t = model.encode_text(tok["input_ids"], tok["attention_mask"]).numpy()
    assert _rel(rt_torch.encode_video(specs), ref_v) <= 1e-5
    assert _rel(rt_torch.encode_video(pixels), ref_v) <= 1e-5  # tensors in, same numbers
    assert _rel(rt_torch.encode_text(CAPTIONS), ref_t) <= 1e-5


def test_clip_forms(rt_torch, specs):
    s = specs[1]
    ref = rt_torch.encode_video([s])
    for form in (
        (s.path, s.start_sec, s.end_sec),
        {"path": s.path, "start": s.start_sec, "end": s.end_sec},
    ):
        np.testing.assert_allclose(rt_torch.encode_video([form]), ref, rtol=0, atol=0)
    single = rt_torch.encode_video((s.path, s.start_sec, s.end_sec))  # one clip, not a list
    assert single.shape == (1, rt_torch.embedding_dim)
    whole = rt_torch.encode_video(s.path)
    assert whole.shape == ref.shape


def test_outputs_and_normalization(rt_torch, specs):
    emb = rt_torch.encode_video(specs[:2], output="torch", normalize=True)
    assert isinstance(emb, torch.Tensor) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    t = rt_torch.encode_text(CAPTIONS[:2])
    assert isinstance(t, np.ndarray) and t.dtype == np.float32 and t.shape == (2, 32)
    with pytest.raises(ValueError, match="output must be"):
        rt_torch.encode_text(CAPTIONS[:1], output="list")


# ------------------------------------------------------------------------------ text


def test_length_sorted_batches_equal_single_captions(rt_torch):
    rt_torch.clear_cache()
    batched = rt_torch.encode_text(CAPTIONS, batch_size=2, cache=False)
    single = np.stack([rt_torch.encode_text([c], cache=False)[0] for c in CAPTIONS])
    assert _rel(batched, single) <= 1e-5


def test_text_cache(rt_torch):
    rt_torch.clear_cache()
    hits, misses = rt_torch.stats.text_cache_hits, rt_torch.stats.text_cache_misses
    first = rt_torch.encode_text(CAPTIONS[:3])
    again = rt_torch.encode_text([CAPTIONS[2], CAPTIONS[0], CAPTIONS[2]])
    assert rt_torch.stats.text_cache_misses - misses == 3
    assert rt_torch.stats.text_cache_hits - hits == 3
    np.testing.assert_array_equal(again, first[[2, 0, 2]])


def test_shape_buckets_do_not_change_results(rt_torch, specs):
    """The CUDA-graph path pads batches to powers of two and texts to multiples of 8; run
    that padding on the CPU (eager) and compare with the exact shapes."""
    engine = rt_torch._engine
    ids, mask = rt_torch.tokenize(CAPTIONS[:3])
    pixels = rt_torch.read_clips(specs[:3])
    exact = (engine.text(ids, mask), engine.video(pixels), engine.vtm(pixels, ids, mask))
    engine.bucketing = True
    try:
        assert engine._pad_batch(3) == 4 and engine._pad_len(ids.shape[1]) % 8 == 0
        padded = (engine.text(ids, mask), engine.video(pixels), engine.vtm(pixels, ids, mask))
    finally:
        engine.bucketing = False
    for a, b in zip(padded, exact, strict=True):
        assert a.shape == b.shape
        assert _rel(a, b) <= 1e-5


def test_bucket_sizes():
    batch, length = engines.batch_bucket, engines.length_bucket
    assert [batch(n, 32) for n in (1, 2, 3, 5, 9, 32)] == [1, 2, 4, 8, 16, 32]
    assert batch(20, 24) == 24
    assert [length(n, 512) for n in (1, 8, 9, 64, 65, 300)] == [8, 8, 16, 64, 128, 512]
    assert length(30, 18) == 18


# ------------------------------------------------------------------------------ fusion, mcq


def test_score_all_pairs_with_top_k(rt_torch, specs):
    texts = CAPTIONS[:2]
    full = rt_torch.score(specs, texts, all_pairs=True)
    assert full.shape == (2, len(specs)) and np.isfinite(full).all()
    pairwise = rt_torch.score([specs[3], specs[1]], [texts[0], texts[1]])
    np.testing.assert_allclose(pairwise, [full[0, 3], full[1, 1]], rtol=1e-5)
    top = rt_torch.score(specs, texts, all_pairs=True, top_k=2)
    sims = (
        rt_torch.encode_text(texts, normalize=True) @ rt_torch.encode_video(specs, normalize=True).T
    )
    for row in range(2):
        scored = np.flatnonzero(np.isfinite(top[row]))
        assert sorted(scored) == sorted(np.argsort(-sims[row])[:2])
        np.testing.assert_allclose(top[row, scored], full[row, scored], rtol=1e-5)
        assert (top[row][~np.isfinite(top[row])] == -np.inf).all()


def test_mcq_modes(rt_torch, specs):
    q = CAPTIONS[0]
    ens = rt_torch.mcq(q, specs[:5])
    dual = rt_torch.mcq(q, specs[:5], mode="dual")
    fusion = rt_torch.mcq(q, specs[:5], mode="fusion")
    cos = (
        rt_torch.encode_video(specs[:5], normalize=True)
        @ rt_torch.encode_text([q], normalize=True)[0]
    )
    np.testing.assert_allclose(dual.scores, cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fusion.scores, rt_torch.score(specs[:5], [q] * 5), rtol=1e-5)
    np.testing.assert_allclose(ens.scores, dual.scores + fusion.scores, rtol=1e-5, atol=1e-6)
    for a in (ens, dual, fusion):
        assert a.answer == int(np.argmax(a.scores)) == a.ranking()[0]
    with pytest.raises(ValueError, match="mode must be"):
        rt_torch.mcq(q, specs[:5], mode="best")
    with pytest.raises(ValueError, match="at least 2 candidates"):
        rt_torch.mcq(q, specs[:1])


# ------------------------------------------------------------------------------ warmup, bench


def test_warmup_and_benchmark(rt_torch):
    times = rt_torch.warmup(batch_sizes=[1, 2], text_lengths=[8])
    assert set(times) == {
        "video_b1",
        "video_b2",
        "text_b1_l8",
        "text_b2_l8",
        "vtm_b1_l8",
        "vtm_b2_l8",
    }
    assert all(t > 0 for t in times.values())
    rows = runtime.benchmark(
        rt_torch, cases=("text_b1", "video_b2", "score_b2"), repeats=2, warmup=1
    )
    assert [r["case"] for r in rows] == ["text_b1", "video_b2", "score_b2"]
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] for r in rows)
    with pytest.raises(ValueError, match="benchmark case"):
        runtime.benchmark(rt_torch, cases=("audio_b1",))


# ------------------------------------------------------------------------------ errors


def test_frame_count_mismatch(rt_torch, rt_ort, model_dir, export_dir):
    pixels = torch.zeros(8, 3, 32, 32)
    with pytest.raises(ValueError, match=r"8 frames.*takes 4 frames.*frame count mismatch"):
        rt_torch.encode_video([pixels])
    with pytest.raises(ValueError, match="frame count mismatch"):
        rt_ort.encode_video(torch.zeros(2, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"num_frames=5 is outside \[1, 4\]"):
        load(model_dir, num_frames=5, device="cpu")
    with pytest.raises(ValueError, match="takes 4 frames per clip"):
        load(export_dir, backend="onnxruntime", num_frames=2, device="cpu")
    with pytest.raises(ValueError, match=r"expected pixels of shape \[F, C, S, S\]"):
        rt_torch.encode_video([torch.zeros(4, 3, 16, 16)])


def test_bad_inputs(rt_torch, tmp_path):
    with pytest.raises(ValueError, match=r"texts\[1\]: empty text"):
        rt_torch.encode_text(["ok", "  "])
    with pytest.raises(ValueError, match="non-empty"):
        rt_torch.encode_text([])
    with pytest.raises(TypeError, match=r"texts\[0\]: expected str"):
        rt_torch.encode_text([3])
    with pytest.raises(VideoError, match=re.escape("missing.mp4")):
        rt_torch.encode_video(str(tmp_path / "missing.mp4"))
    with pytest.raises(TypeError, match="clip 0: expected a path"):
        rt_torch.encode_video([3.5])
    with pytest.raises(ValueError, match="pairwise scoring needs equal counts"):
        rt_torch.score([torch.zeros(4, 3, 32, 32)], ["a", "b"])


def test_load_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        load(model_dir, backend="tflite")
    with pytest.raises(ValueError, match="'fp16' is not supported on the CPU"):
        load(model_dir, device="cpu", precision="fp16")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable EgoVLPv2 checkpoint"):
        load(junk, device="cpu")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown file type"):
        load(tmp_path / "model.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load(model_dir, device="cuda")


def test_wrong_tokenizer_is_rejected(model_dir, tmp_path):
    from egovlpv2_rt.train.bpe import train_bpe_tokenizer

    words = [f"word{i} thing{i} other{i}" for i in range(400)]
    big = train_bpe_tokenizer(words, 600, tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="wrong tokenizer"):
        load(model_dir, tokenizer=big, device="cpu")


def test_default_model_location(monkeypatch, tmp_path, model_dir):
    monkeypatch.setattr(model_files, "default_model_dir", lambda: tmp_path / "default_model")
    with pytest.raises(
        DefaultModelMissingError, match=re.escape("python -m egovlpv2_rt.train.default_model")
    ):
        runtime.default_model_path()
    with pytest.raises(DefaultModelMissingError):
        load(device="cpu")
    monkeypatch.setattr(model_files, "default_model_dir", lambda: model_dir)
    assert runtime.default_model_path() == model_dir / "model.safetensors"
    rt = load(device="cpu")
    assert rt.files.checkpoint == model_dir / "model.safetensors"


def test_package_default_model_dir():
    d = runtime.default_model_dir()
    assert d.name == "default_model" and d.parent.name == "egovlpv2_rt"


# ------------------------------------------------------------------------------ GPU

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("bf16", 3e-2)])
def test_cuda_graphs_match_eager_and_cpu(model_dir, specs, rt_torch, precision, tol):
    """Torch on CUDA, eager and through CUDA graphs (bucket padding, captured once per
    shape), gives the CPU float32 numbers (fp32: 1e-4; bf16: its own rounding)."""
    eager = load(model_dir, device="cuda", precision=precision, cuda_graphs=False)
    graphs = load(model_dir, device="cuda", precision=precision, cuda_graphs=True)
    assert graphs.cuda_graphs and not eager.cuda_graphs
    times = graphs.warmup(batch_sizes=[1, 2, 4, 8], text_lengths=[8, 16])
    assert len(times) == 4 * (1 + 2 * 2)
    pairs = specs[: len(CAPTIONS)]
    ref = (
        rt_torch.encode_video(specs),
        rt_torch.encode_text(CAPTIONS),
        rt_torch.score(pairs, CAPTIONS),
    )
    for rt in (eager, graphs):
        got = (
            rt.encode_video(specs),
            rt.encode_text(CAPTIONS, cache=False),
            rt.score(pairs, CAPTIONS),
        )
        for a, b in zip(got, ref, strict=True):
            assert _rel(a, b) <= tol
    # Replays are repeatable and do not alias each other's outputs.
    a = graphs.encode_video(specs[:3])
    b = graphs.encode_video(specs[3:6])
    np.testing.assert_array_equal(graphs.encode_video(specs[:3]), a)
    assert not np.array_equal(a, b)
    n_graphs = sum(len(g.graphs) for g in graphs._engine._graphs.values())
    assert n_graphs >= 4 * 3  # video, text x2 lengths, vtm x2 lengths per batch bucket


def test_export_folder_precision(export_dir):
    rt = load(export_dir, backend="onnxruntime", device="cpu")
    assert rt.precision == "fp32"  # the folder's, whatever the device default
    with pytest.raises(ValueError, match=r"the export in .* is 'fp32'"):
        load(export_dir, backend="onnxruntime", device="cpu", precision="bf16")


def test_default_model_loads_and_runs_without_the_extension(tmp_path):
    """A tree whose extension is not built (simulated: ``egovlpv2_rt._C`` cannot be imported)
    loads the shipped default model, warns once that attention runs the reference path, and
    computes the embeddings of the built package (fused ops) to float32 accuracy."""
    import json
    import os
    import subprocess
    import sys

    import egovlpv2_rt

    clip = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 4, 3, 64, 64, generator=clip)
    torch.save(pixels, tmp_path / "pixels.pt")
    code = f"""
import json, sys, warnings
import torch
sys.modules["egovlpv2_rt._C"] = None
import egovlpv2_rt
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    rt = egovlpv2_rt.load(device="cpu")
    t = rt.encode_text(["#C C opens the fridge", "#C C cuts the onion"])
    v = rt.encode_video(torch.load({str(tmp_path / "pixels.pt")!r}))
print(json.dumps({{"build": egovlpv2_rt.build_info()["build"], "impl": rt.attention_impl,
                  "warnings": [str(w.message) for w in caught
                               if issubclass(w.category, RuntimeWarning)],
                  "text": t.tolist(), "video": v.tolist()}}))
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(egovlpv2_rt.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["build"] == "not built" and out["impl"] == "reference"
    assert len(out["warnings"]) == 1 and "reference PyTorch attention" in out["warnings"][0]
    assert "egovlpv2_rt._C" in out["warnings"][0]
    rt = load(device="cpu")
    assert rt.attention_impl == "fused"
    assert (
        _rel(
            np.array(out["text"]), rt.encode_text(["#C C opens the fridge", "#C C cuts the onion"])
        )
        <= 1e-5
    )
    assert _rel(np.array(out["video"]), rt.encode_video(pixels)) <= 1e-5
