"""``egovlpv2 features``: files, manifest, resume after SIGKILL, sharding, bad videos."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _tiny_assets import tiny_episodic_dir, tiny_model_dir

from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.model_files import load_tokenizer
from egovlpv2_rt.tasks.episodic.feature_job import extract_features
from egovlpv2_rt.tasks.episodic.features import (
    FeatureSettings,
    clip_windows,
    nlq_clip_features_one_pass,
)
from egovlpv2_rt.tasks.episodic.metadata import read_moments, read_nlq


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return tiny_episodic_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


def _run(data, model_dir, task, out, **kw):
    settings = FeatureSettings(task=task, fps=None, window_batch=3, **kw.pop("settings", {}))
    ckpt = model_dir / "model.safetensors"
    model = load_model(ckpt, num_frames=settings.window_frames)
    tok = load_tokenizer(model_dir / "tokenizer.json", model.config.text.max_text_length)
    meta = data["nlq_train"] if task == "nlq" else data["moments_train"]
    return extract_features(
        metadata=meta,
        videos=data["videos"],
        out=out,
        model=model,
        tokenizer=tok,
        checkpoint=ckpt,
        settings=settings,
        **kw,
    )


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pt"))}


def test_nlq_files_hold_the_original_keys_and_values(data, model_dir, tmp_path):
    manifest = _run(data, model_dir, "nlq", tmp_path)
    meta = read_nlq(data["nlq_train"])
    assert manifest["files_written"] == len(meta.queries) == len(_digests(tmp_path))
    assert manifest["complete"] and manifest["failed"] == []
    assert manifest["settings"]["frames_per_window"] == 4
    # The effective query length: 30 asked, capped at the tiny model's text limit.
    limit = load_model(model_dir / "model.safetensors").config.text.max_text_length
    assert manifest["settings"]["query_max_length"] == min(30, limit)
    assert torch.load(tmp_path / "feat_0.pt", weights_only=True)["dual_text_features"].shape[
        1
    ] == min(30, limit)
    rec = torch.load(tmp_path / "feat_0.pt", weights_only=True)
    assert set(rec) == {
        "fused_video_features", "dual_text_features", "text_token",
        "sample_id", "vid", "s_time", "e_time", "duration", "query", "s_ind", "e_ind",
        "v_len", "annotation_uid", "query_idx",
    }  # fmt: skip
    q = meta.queries[0]
    clip = next(c for c in meta.clips if c.clip_uid == q.clip_uid)
    assert rec["vid"] == q.clip_uid and rec["query"] == q.query.strip().lower()
    # The original's loader reads these as 0-d tensors (feature["s_ind"].item()).
    assert rec["s_ind"].dtype == torch.int64 and rec["s_ind"].dim() == 0
    assert rec["duration"].item() == pytest.approx(clip.duration)
    assert (rec["s_time"].item(), rec["e_time"].item()) == pytest.approx((q.start_sec, q.end_sec))
    # The fused features equal the original's one pass per query over the clip's windows.
    model = load_model(model_dir / "model.safetensors", num_frames=4)
    tok = load_tokenizer(model_dir / "tokenizer.json", model.config.text.max_text_length)
    settings = FeatureSettings(task="nlq", fps=None, window_batch=3)
    video = data["videos"] / f"{clip.video_uid}.mp4"
    win = clip_windows(video, clip.video_start_sec, clip.video_end_sec, settings)
    ref = nlq_clip_features_one_pass(model, tok, video, win, [q.query], settings)
    n, d = rec["fused_video_features"].shape
    assert n == len(win) and d == model.config.embed_dim
    assert rec["v_len"].item() == n and 0 <= rec["s_ind"].item() <= rec["e_ind"].item() < n
    torch.testing.assert_close(rec["fused_video_features"], ref.fused[0], rtol=1e-5, atol=1e-5)
    assert rec["dual_text_features"].shape == (1, *ref.text.shape[1:])
    torch.testing.assert_close(rec["dual_text_features"][0], ref.text[0])
    assert rec["text_token"]["attention_mask"].dtype == torch.int64
    assert rec["text_token"]["attention_mask"].shape == (1, ref.text.shape[1])


def test_mq_files_are_one_tensor_per_clip(data, model_dir, tmp_path):
    manifest = _run(data, model_dir, "mq", tmp_path)
    dim = load_model(model_dir / "model.safetensors").config.projection_dim
    meta = read_moments(data["moments_train"])
    assert manifest["files_written"] == len(meta.clips)
    for clip in meta.clips:
        feat = torch.load(tmp_path / f"{clip.clip_uid}.pt", weights_only=True)
        video = data["videos"] / f"{clip.video_uid}.mp4"
        win = clip_windows(
            video, clip.video_start_sec, clip.video_end_sec, FeatureSettings("mq", fps=None)
        )
        assert win.shape[1] == 16
        assert feat.dtype == torch.float32 and feat.shape == (len(win), dim)


def test_shards_and_reruns_give_the_same_files(data, model_dir, tmp_path):
    whole = tmp_path / "whole"
    _run(data, model_dir, "nlq", whole)
    sharded = tmp_path / "sharded"
    _run(data, model_dir, "nlq", sharded, rank=1, world=2)
    manifest = _run(data, model_dir, "nlq", sharded, rank=0, world=2)
    assert manifest["ranks"] == 2 and manifest["computed"] == manifest["clips"]
    assert _digests(sharded) == _digests(whole)
    # Remove a file: a rerun recomputes that clip alone and writes that file, byte for byte.
    (whole / "feat_1.pt").unlink()
    again = _run(data, model_dir, "nlq", whole)
    assert again["existing"] == again["clips"] - 1 and again["files_written"] == 1
    assert _digests(whole) == _digests(sharded)


def test_a_bad_video_is_reported_and_the_rest_written(data, model_dir, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = read_moments(data["moments_train"]).clips
    for p in data["videos"].glob("*.mp4"):
        (videos / p.name).symlink_to(p)
    broken = clips[0].video_uid
    (videos / f"{broken}.mp4").unlink()
    (videos / f"{broken}.mp4").write_bytes(b"not a video")
    manifest = _run(dict(data, videos=videos), model_dir, "mq", tmp_path / "out")
    bad = [c.clip_uid for c in clips if c.video_uid == broken]
    assert sorted(f["clip_uid"] for f in manifest["failed"]) == sorted(bad)
    assert not manifest["complete"]
    assert manifest["files_written"] == len(clips) - len(bad)


def test_another_checkpoint_or_setting_is_refused(data, model_dir, tmp_path):
    _run(data, model_dir, "mq", tmp_path)
    with pytest.raises(InputError, match="another settings"):
        _run(data, model_dir, "mq", tmp_path, settings={"windows_per_second": 1.0})


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "egovlpv2_rt.cli", *args]


def test_sigkill_half_way_then_rerun_finishes_with_identical_files(data, model_dir, tmp_path):
    args = [
        "features", "--task", "nlq", "--metadata", str(data["nlq_train"]),
        "--videos", str(data["videos"]), "--fps", "video", "--window-batch", "2",
        "--checkpoint", str(model_dir / "model.safetensors"),
    ]  # fmt: skip
    env = dict(os.environ, EGOVLPV2_QUIET="1")
    done = subprocess.run(
        _cli([*args, "--out", str(tmp_path / "whole")]), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    want = _digests(tmp_path / "whole")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli([*args, "--out", str(out)]), env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("feat_*.pt")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _digests(out)
    assert 0 < len(partial) < len(want), "the run was not killed half way"
    assert not (out / "manifest.json").exists()
    assert all(want[name] == digest for name, digest in partial.items())
    again = subprocess.run(
        _cli([*args, "--out", str(out), "--json"]), env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    manifest = json.loads(again.stdout)
    # Only the missing files are written (a clip cut short is recomputed whole).
    assert manifest["files_written"] == len(want) - len(partial) and manifest["complete"]
    assert _digests(out) == want
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "tmp" in p.name]
