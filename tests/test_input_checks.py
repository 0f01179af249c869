"""Bad numbers never pass silently: NaN/Inf or non-float pixels are refused at the runtime's and
the model's boundary (naming the clip or the batch row) unless the caller opts out; weights
files with NaN/Inf tensors or integer tensors where the model holds floats are refused naming
the tensor and the file; attention masks hold only 0/1; every ``--json`` output is strict JSON
(non-finite numbers are ``null``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_assets import synthetic_clips, tiny_config, tiny_episodic_dir, tiny_model_dir
from safetensors.torch import load_file, save_file

from egovlpv2_rt import cli
from egovlpv2_rt.checkpoint import CONFIG_METADATA_KEY, load_checkpoint, load_model
from egovlpv2_rt.cli import common
from egovlpv2_rt.cli import export as export_cli
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.modeling.validation import WeightsError, check_weights, nonfinite_rows
from egovlpv2_rt.runtime import decoding, load
from egovlpv2_rt.runtime.store import EmbeddingSet, save_embeddings
from egovlpv2_rt.video import ClipSpec

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_clips(tmp_path_factory)


@pytest.fixture(scope="module")
def specs(synth) -> list[ClipSpec]:
    root, records = synth
    return [
        ClipSpec(str(root / "videos" / f"{r.video_uid}.mp4"), r.clip_start, r.clip_end)
        for r in records[:3]
    ]


@pytest.fixture(scope="module")
def rt(model_dir):
    return load(model_dir, device="cpu")


def _spec_label(i: int, spec: ClipSpec) -> str:
    return f"clip {i} ({spec.path}@{spec.start_sec:g}:{spec.end_sec:g})"


@pytest.fixture
def nan_in_second_clip(monkeypatch, specs):
    """The decoder returns pixels with one NaN for ``specs[1]`` (a damaged decode or
    transform); the other clips decode normally."""
    real = decoding.read_clip

    def patched(path, *args, **kwargs):
        x = real(path, *args, **kwargs)
        if path == specs[1].path and args[:2] == (specs[1].start_sec, specs[1].end_sec):
            x = x.clone()
            x[1, 2, 3, 4] = float("nan")
        return x

    monkeypatch.setattr(decoding, "read_clip", patched)


# ------------------------------------------------------------------------------ pixels


def test_one_nan_pixel_in_a_decoded_clip_is_refused_naming_it(rt, specs, nan_in_second_clip):
    label = re.escape(_spec_label(1, specs[1]))
    with pytest.raises(InputError, match=label + r": pixels contain NaN or Inf"):
        rt.encode_video(specs)
    # In batches of 2 the clip is still named by its place in the caller's list (clip 2 is
    # the first of the second batch).
    with pytest.raises(InputError, match=r"^" + re.escape(_spec_label(2, specs[1]))):
        rt.encode_video([specs[0], specs[2], specs[1]], batch_size=2)
    with pytest.raises(InputError, match=label):
        rt.score(specs, ["#C C moves the red square"] * 3)
    with pytest.raises(InputError, match=label):
        rt.mcq("#C C moves the red square", specs, mode="dual")
    # The clips without a NaN still embed.
    assert rt.encode_video([specs[0], specs[2]]).shape == (2, rt.embedding_dim)


def test_nan_and_inf_tensor_inputs_are_refused(rt):
    good = torch.zeros(rt.num_frames, 3, 32, 32)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"^clip 2: pixels contain NaN or Inf"):
        rt.encode_video([good, good, bad])
    batch = torch.stack([good, bad, bad])
    with pytest.raises(InputError, match=r"^clip 1; clip 2: pixels contain NaN or Inf"):
        rt.encode_video(batch)


def test_pixel_dtype_is_checked_on_the_model_input(rt, specs, monkeypatch):
    uint8 = torch.zeros(rt.num_frames, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"clip 0: expected normalised float pixels, got"):
        rt.encode_video([uint8])
    # A decoder/transform that forgot to convert its uint8 frames is caught after it.
    monkeypatch.setattr(decoding, "read_clip", lambda *a, **k: uint8)
    with pytest.raises(InputError, match=r"dtype torch.uint8; the model takes floating point"):
        rt.encode_video(specs[:1])


def test_opt_out_lets_nan_through_as_documented(model_dir, rt, specs, nan_in_second_clip):
    loose = load(model_dir, device="cpu", check_finite_pixels=False)
    assert (rt.check_finite_pixels, loose.check_finite_pixels) == (True, False)
    emb = loose.encode_video(specs)
    assert np.isnan(emb[1]).all()
    assert np.isfinite(emb[[0, 2]]).all()
    np.testing.assert_allclose(emb[[0, 2]], rt.encode_video([specs[0], specs[2]]), atol=1e-6)


def test_onnxruntime_backend_refuses_nan_pixels_before_any_graph_runs(
    model_dir, specs, tmp_path, nan_in_second_clip
):
    pytest.importorskip("onnxruntime")
    rt_ort = load(model_dir, backend="onnxruntime", device="cpu", onnx_dir=tmp_path / "onnx")
    with pytest.raises(InputError, match=re.escape(_spec_label(1, specs[1]))):
        rt_ort.encode_video(specs)
    # Refused on the CPU tensor, before the graph is exported or a session is created.
    assert not (tmp_path / "onnx" / "video_encoder.onnx").exists()
    assert rt_ort.check_finite_pixels is True


def test_model_names_the_batch_rows_with_nan():
    model = EgoVLPv2(tiny_config()).eval()
    v = model.config.video
    video = torch.zeros(3, v.num_frames, 3, v.img_size, v.img_size)
    video[2, 0, 1, 2, 3] = float("nan")
    with torch.no_grad(), pytest.raises(InputError, match=r"video: .* \(batch rows \[2\]\)"):
        model.encode_video(video)


def test_nonfinite_rows_is_exact():
    x = torch.zeros(4, 10)
    x[1, 3], x[3, 0] = float("nan"), float("-inf")
    x[2] = 3e38  # the row's sum overflows, yet every value is finite
    assert nonfinite_rows(x) == [1, 3]
    assert nonfinite_rows(x.half().nan_to_num(posinf=6e4)[[0, 2]]) == []  # fp16 sums in fp32
    assert nonfinite_rows(torch.zeros(0, 3)) == []


# ------------------------------------------------------------------------------ weights


def _weights_file(model_dir: Path, folder: Path, key: str, value) -> Path:
    """A copy of the tiny model folder whose ``key`` tensor is replaced by ``value(t)``."""
    folder.mkdir()
    shutil.copy(model_dir / "tokenizer.json", folder / "tokenizer.json")
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors[key] = value(tensors[key])
    meta = {"format": "pt", CONFIG_METADATA_KEY: tiny_config().to_json()}
    path = folder / "model.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def _single_inf(t):
    t = t.clone()
    t.view(-1)[7] = float("inf")
    return t


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "vid_proj.2.weight",
            lambda t: torch.full_like(t, float("nan")),
            r"'vid_proj.2.weight' holds 1024 NaN and 0 Inf of 1024 values",
        ),
        (
            "text_model.encoder.layer.0.attention.self.query.weight",
            _single_inf,
            r"'text_model.encoder.layer.0.attention.self.query.weight' holds 0 NaN and 1 Inf",
        ),
        (
            "txt_proj.2.weight",
            lambda t: t.to(torch.int32),
            r"'txt_proj.2.weight' has dtype torch.int32 where the model holds torch.float32",
        ),
        (
            "text_model.embeddings.position_ids",
            lambda t: t.float(),
            r"'text_model.embeddings.position_ids' has dtype torch.float32 where the model "
            r"holds the integer buffer torch.int64",
        ),
    ],
    ids=["all-nan", "single-inf", "int32", "float-position-ids"],
)
def test_bad_weights_are_refused_naming_tensor_and_file(model_dir, tmp_path, key, value, message):
    path = _weights_file(model_dir, tmp_path / "bad", key, value)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + r": bad weights .*" + message):
        load_model(path)
    # The runtime's loader (and the CLI on top of it) refuses it the same way.
    with pytest.raises(WeightsError, match=re.escape(str(path)) + r": .*" + message):
        load(tmp_path / "bad", device="cpu")


def test_released_pth_with_int32_weights_is_refused(model_dir, tmp_path):
    sd = load_file(str(model_dir / "model.safetensors"))
    sd["vid_proj.0.weight"] = sd["vid_proj.0.weight"].to(torch.int32)
    path = tmp_path / "released.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + r".*'vid_proj.0.weight'"):
        load_model(path, tiny_config())


def test_legitimate_weights_still_load(model_dir):
    sd = load_file(str(model_dir / "model.safetensors"))
    # Integer buffers in any integer width, and huge but finite floats, are fine.
    sd["text_model.embeddings.position_ids"] = sd["text_model.embeddings.position_ids"].int()
    sd["video_model.pos_embed"] = torch.full_like(sd["video_model.pos_embed"], 3e38)
    model = EgoVLPv2(tiny_config())
    report = load_checkpoint(model, sd)
    assert len(report.loaded) == len(model.state_dict())
    assert model.video_model.pos_embed.max().item() == pytest.approx(3e38, rel=1e-6)


def test_check_weights_lists_every_bad_tensor():
    ref = {f"w{i}": torch.float32 for i in range(7)}
    tensors = {k: torch.full((2,), float("nan")) for k in ref}
    with pytest.raises(WeightsError, match=r"^f.bin: .*'w0' .*'w4' holds 2 NaN .*; and 2 more"):
        check_weights(tensors, ref, "f.bin")
    check_weights({"extra": torch.full((2,), float("nan"))}, ref, "f.bin")  # not loaded: ignored


# ------------------------------------------------------------------------------ masks


def _text(model, length=6):
    t = model.config.text
    ids = torch.full((2, length), 5, dtype=torch.int64)
    ids[:, 0], ids[:, -1] = t.bos_token_id, t.eos_token_id
    return ids, torch.ones(2, length, dtype=torch.int64)


def test_mask_with_a_2_is_refused_naming_argument_and_value():
    model = EgoVLPv2(tiny_config()).eval()
    ids, mask = _text(model)
    bad = mask.clone()
    bad[1, 4] = 2
    with torch.no_grad():
        with pytest.raises(InputError, match=r"^attention_mask: .* found 2 at \[1, 4\]"):
            model.encode_text(ids, bad)
        v = model.config.video
        video = torch.zeros(2, v.num_frames, 3, v.img_size, v.img_size)
        with pytest.raises(InputError, match=r"^attention_mask: .* found 2 at \[1, 4\]"):
            model.vtm_logits(video, ids, bad)
        half = mask.float()
        half[0, 2] = 0.5
        with pytest.raises(InputError, match=r"found 0.5 at \[0, 2\]"):
            model.encode_text(ids, half)
        nan = mask.float()
        nan[0, 1] = float("nan")
        with pytest.raises(InputError, match=r"found nan at \[0, 1\]"):
            model.encode_text(ids, nan)
        # 0/1 in every accepted dtype gives the same embedding.
        mask[0, 3:] = 0
        ref = model.encode_text(ids, mask)
        for m in (mask.bool(), mask.float(), mask.to(torch.int32)):
            torch.testing.assert_close(model.encode_text(ids, m), ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------ JSON output


def _refuse_constant(name: str):
    raise AssertionError(f"not strict JSON: bare {name}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_refuse_constant)


def test_print_json_writes_null_for_nan_and_inf(capsys):
    common.print_json(
        {
            "score": float("nan"),
            "scores": [np.float32("inf"), 0.5, np.float64("-inf")],
            "arr": np.array([1.0, np.nan], dtype=np.float32),
            "t": torch.tensor(float("nan")),
            "n": np.int64(3),
            "ok": True,
        }
    )
    out = capsys.readouterr().out
    assert strict_loads(out) == {
        "score": None,
        "scores": [None, 0.5, None],
        "arr": [1.0, None],
        "t": None,
        "n": 3,
        "ok": True,
    }


def _json_commands(parser) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return {
        name
        for name, p in sub.choices.items()
        if any("--json" in a.option_strings for a in p._actions)
    }


def _run_json(argv: list[str], capsys):
    rc = cli.main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return strict_loads(out)


def _summarize_args(tmp_path, weights: str) -> list[str]:
    """A 2-shot video and an untrained QFVS head for the model ``weights``."""
    pytest.importorskip("ruptures")
    from egovlpv2_rt.data.synthetic import write_video
    from egovlpv2_rt.tasks.qfvs_head import QFVSHead
    from egovlpv2_rt.tasks.qfvs_summarize import save_qfvs_head

    video = tmp_path / "shots.mp4"
    write_video(video, np.zeros((10, 32, 32, 3), np.uint8), 1, "libx264")
    head = tmp_path / "qfvs_head.safetensors"
    save_qfvs_head(head, QFVSHead(load_model(weights).config.embed_dim))
    return [
        "summarize",
        "--video",
        str(video),
        "--query",
        "a,b",
        "--checkpoint",
        weights,
        "--head",
        str(head),
    ]


def test_every_json_output_parses_strictly(model_dir, synth, tmp_path, tmp_path_factory, capsys):
    root, records = synth
    model = ["--checkpoint", str(model_dir), "--device", "cpu"]
    clips = [
        f"{root / 'videos' / r.video_uid}.mp4@{r.clip_start:g}:{r.clip_end:g}" for r in records
    ]
    clip_list = tmp_path / "clips.txt"
    clip_list.write_text("\n".join(clips[:3]) + "\n")
    emb = tmp_path / "emb.safetensors"
    ran: dict[str, object] = {}
    ran["embed"] = _run_json(
        ["embed", "--videos", str(clip_list), "--out", str(emb), *model, "--no-progress"], capsys
    )
    ran["search"] = _run_json(
        ["search", "--embeddings", str(emb), "--query", "C picks up the bar", *model], capsys
    )
    ran["index"] = _run_json(
        ["index", "--embeddings", str(emb), "--out", str(tmp_path / "i.faiss")], capsys
    )
    ran["mcq"] = _run_json(
        ["mcq", "--query", "C moves the cup", "--candidates", *clips[:2], *model], capsys
    )
    ran["bench"] = _run_json(["bench", *model, "--cases", "text_b1", "--repeats", "1"], capsys)
    ran["info"] = _run_json(["info"], capsys)
    ran["demo"] = _run_json(
        ["demo", *model, "--out", str(tmp_path / "demo"), "--top-k", "2"], capsys
    )
    ran["eval"] = _run_json(
        [
            "eval",
            "--data",
            str(root),
            "--checkpoint",
            str(model_dir / "model.safetensors"),
            "--mode",
            "dual",
        ],
        capsys,
    )
    em = tiny_episodic_dir(tmp_path_factory)
    feats, meta = tmp_path / "mq", str(em["moments_val"])
    videos, weights = str(em["videos"]), str(model_dir / "model.safetensors")
    features = ["features", "--task", "mq", "--metadata", meta, "--videos", videos]
    ran["features"] = _run_json(
        [*features, "--out", str(feats), "--fps", "video", "--checkpoint", weights], capsys
    )
    head = ["--features", str(feats), "--metadata", meta]
    train = ["train-head", "--task", "mq", *head, "--out", str(tmp_path / "h"), "--epochs", "1"]
    assert cli.main(train) == 0
    capsys.readouterr()
    evaluate = ["eval-head", "--task", "mq", "--checkpoint", str(tmp_path / "h"), *head]
    ran["eval-head"] = _run_json([*evaluate, "--baseline-draws", "1"], capsys)
    release = tmp_path / "release"
    release.mkdir()
    qa = {"interval": "c", "question": "q?", "answer": "yes", "reasoning_type": "a$verify"}
    for split in ("train", "val", "test"):
        (release / f"{split}_qas.json").write_text(json.dumps([qa]))
    prepare = ["prepare", "--task", "egotaskqa", "--release", str(release)]
    ran["prepare"] = _run_json([*prepare, "--out", str(tmp_path / "qa")], capsys)
    ran["summarize"] = _run_json(_summarize_args(tmp_path, weights), capsys)
    ran["flops"] = _run_json(["flops", "--preset", "tiny"], capsys)
    ran["explain"] = _run_json(
        ["explain", "--clip", clips[0], "--text", "C picks up the bar", *model], capsys
    )
    ablate = ["ablate", "--work", str(tmp_path / "ablate"), "--steps", "2", "--train-clips", "32"]
    ablate += ["--eval-seeds", "11", "--eval-questions", "4", "--eval-clips", "32"]
    ablate += ["--rows", "egonce"]
    ran["ablate"] = _run_json(ablate, capsys)
    assert set(ran) == _json_commands(cli.build_parser())  # every command with --json ran
    assert ran["features"]["complete"] and ran["eval-head"]["clips"] >= 1
    assert ran["embed"]["clips"] == 3 and len(ran["search"]["results"]) == 3
    assert ran["index"]["clips"] == 3 and len(ran["mcq"]["candidates"]) == 2
    assert set(ran["eval"]["accuracy"]["dual"]) >= {"inter", "intra"}

    pytest.importorskip("onnxscript")
    rc = export_cli.main(
        [
            "--mode",
            "dual",
            "--checkpoint",
            str(model_dir),
            "--out",
            str(tmp_path / "export"),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert [g["name"] for g in strict_loads(out)["graphs"]] == ["video_encoder", "text_encoder"]
    assert "--json" in export_cli.build_parser().format_help()


def test_nan_score_becomes_null_in_search_json(rt, model_dir, tmp_path, capsys):
    rows = np.ones((3, rt.embedding_dim), np.float32)
    rows[1] = np.nan  # a damaged store row: its cosine score is NaN
    store = tmp_path / "nan.safetensors"
    clips = [{"path": f"c{i}.mp4", "start": None, "end": None} for i in range(3)]
    save_embeddings(
        store, EmbeddingSet(["a", "b", "c"], rows, clips, common.runtime_fingerprint(rt))
    )
    res = _run_json(
        [
            "search",
            "--embeddings",
            str(store),
            "--query",
            "C picks up the bar",
            "--checkpoint",
            str(model_dir),
            "--device",
            "cpu",
        ],
        capsys,
    )
    scores = {r["id"]: r["score"] for r in res["results"]}
    q = rt.encode_text(["C picks up the bar"])[0].astype(np.float64)
    cosine = q.sum() / (np.linalg.norm(q) * np.sqrt(q.size))  # the query against a ones row
    assert scores["b"] is None
    assert scores["a"] == pytest.approx(cosine, rel=1e-4)
    assert scores["c"] == pytest.approx(cosine, rel=1e-4)


def test_eval_accuracy_without_questions_of_a_type_is_null(model_dir, synth, tmp_path, capsys):
    root, _ = synth
    questions = json.loads((root / "egomcq.json").read_text())
    inter_only = {k: q for k, q in questions.items() if q["types"] == 1}
    assert 0 < len(inter_only) < len(questions)
    data = tmp_path / "inter_only"
    data.mkdir()
    (data / "egomcq.json").write_text(json.dumps(inter_only))
    (data / "videos").symlink_to(root / "videos", target_is_directory=True)
    res = _run_json(
        [
            "eval",
            "--data",
            str(data),
            "--checkpoint",
            str(model_dir / "model.safetensors"),
            "--mode",
            "dual",
        ],
        capsys,
    )
    acc = res["accuracy"]["dual"]
    assert acc["intra"] is None and acc["intra_count"] == 0  # NaN accuracy -> null
    assert acc["inter_count"] == len(inter_only) and 0.0 <= acc["inter"] <= 100.0
