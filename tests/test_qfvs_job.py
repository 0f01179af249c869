"""QFVS end to end on the shipped default model: the shot-feature cache (reused only for the
same checkpoint, video and queries), ``finetune --task qfvs``, ``eval --task qfvs`` (with a head
and leave-one-video-out) and ``summarize``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("ruptures")
pytest.importorskip("scipy")

from egovlpv2_rt.cli import main
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks import qfvs_job
from egovlpv2_rt.tasks.qfvs import shot_features
from egovlpv2_rt.tasks.qfvs_data import load_qfvs
from egovlpv2_rt.tasks.qfvs_job import (
    cached_shot_features,
    load_qfvs_backbone,
    load_qfvs_config,
)
from egovlpv2_rt.tasks.qfvs_summarize import load_qfvs_head
from egovlpv2_rt.tasks.qfvs_synth import QFVSSynthConfig, synthesize_qfvs

CFG = QFVSSynthConfig(videos=3, shots=12, queries=3, oracle_cap=4, size=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthesize_qfvs(tmp_path_factory.mktemp("qfvs") / "data", 3, CFG)["root"]


@pytest.fixture(scope="module")
def backbone():
    return load_qfvs_backbone()


def test_backbone_runs_five_frame_shots(backbone):
    assert backbone.model.config.video.num_frames == 5
    assert not backbone.model.training


def test_feature_cache_reused_only_for_the_same_inputs(data, backbone, tmp_path, monkeypatch):
    video = data / "videos" / "P01.mp4"
    queries = [("red", "square"), ("blue", "circle")]
    want = shot_features(backbone.model, backbone.tokenizer, video, queries)
    first = cached_shot_features(backbone, video, queries, tmp_path)
    assert (tmp_path / "P01.safetensors").is_file()
    assert torch.equal(first.fused, want.fused) and torch.equal(first.prefix_cls, want.prefix_cls)

    calls = []

    def counting(*args, **kw):
        calls.append(args[3])
        return shot_features(*args, **kw)

    monkeypatch.setattr(qfvs_job, "shot_features", counting)
    again = cached_shot_features(backbone, video, queries, tmp_path)
    assert calls == [] and torch.equal(again.fused, want.fused)
    # Other queries: recomputed, and the cache now holds them.
    other = cached_shot_features(backbone, video, queries[:1], tmp_path)
    assert len(calls) == 1 and torch.equal(other.fused, want.fused[:1])
    # A damaged cache file is recomputed, not an error.
    (tmp_path / "P01.safetensors").write_bytes(b"not safetensors")
    fixed = cached_shot_features(backbone, video, queries, tmp_path)
    assert len(calls) == 2 and torch.equal(fixed.fused, want.fused)


def _config(data: Path, out: Path, **kw) -> Path:
    cfg = {
        "task": "qfvs",
        "data": {"root": str(data)},
        "train": {"epochs": 3, "seed": 0},
        "test_videos": ["P03"],
        "out_dir": str(out),
        **kw,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_finetune_eval_summarize(data, tmp_path, capsys):
    cfg = _config(data, tmp_path / "run")
    assert main(["finetune", "--task", "qfvs", "--config", str(cfg)]) == 0
    head_path = tmp_path / "run" / "head.safetensors"
    head = load_qfvs_head(head_path)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    videos, _ = load_qfvs(data)
    n_queries = sum(len(v.queries) for v in videos if v.name != "P03")
    assert result["train_queries"] + result["val_queries"] == n_queries
    assert len(result["val_f1"]) == 4 and 0 <= result["best_epoch"] <= 3
    assert sorted(p.name for p in (tmp_path / "run" / "features").iterdir()) == [
        "P01.safetensors",
        "P02.safetensors",
        "P03.safetensors",
    ]
    capsys.readouterr()

    # eval with the head: every video scored, the random baseline beside it.
    cache = str(tmp_path / "run" / "features")
    args = ["eval", "--task", "qfvs", "--data", str(data), "--features-cache", cache]
    assert main([*args, "--head", str(head_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "head" and sorted(out["metrics"]["per_video"]) == [
        "P01",
        "P02",
        "P03",
    ]
    rows = out["metrics"]["per_video"].values()
    assert out["metrics"]["f1"] == pytest.approx(sum(r["f1"] for r in rows) / 3)
    assert all(0 <= r["f1"] <= 100 and 0 <= r["random_f1"] <= 100 for r in rows)
    # The table's random column is the expected F1 over draws, not one draw.
    assert main([*args, "--head", str(head_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert last[0] == "mean" and last[-1] == f"{out['metrics']['random_f1_expected']:.2f}"
    assert last[-2] == f"{out['metrics']['f1']:.2f}"
    # The query-swap control: same head, same F1, each query also scored with another's prompts.
    assert main([*args, "--head", str(head_path), "--query-swap-control", "--json"]) == 0
    ctrl = json.loads(capsys.readouterr().out)["metrics"]
    assert ctrl["f1"] == out["metrics"]["f1"]
    swapped = [r["f1_query_swapped"] for r in ctrl["per_video"].values()]
    assert all(0 <= f <= 100 for f in swapped)
    assert ctrl["f1_query_swapped"] == pytest.approx(sum(swapped) / 3)
    assert main([*args, "--head", str(head_path), "--query-swap-control"]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert "swapped F1" in text[1] and text[-1].startswith("swapped F1: the same heads")
    assert text[-2].split()[-1] == f"{ctrl['f1_query_swapped']:.2f}"

    # leave-one-video-out: one head per held-out video.
    assert main([*args, "--json"]) == 0
    lovo = json.loads(capsys.readouterr().out)
    assert lovo["protocol"] == "leave-one-video-out"
    assert all("best_epoch" in r for r in lovo["metrics"]["per_video"].values())

    # summarize: the top max(1, int(S * budget)) shots in time order, 5 s each.
    video = data / "videos" / "P03.mp4"
    q = "red,square"
    s_args = ["summarize", "--video", str(video), "--query", q, "--head", str(head_path)]
    assert main([*s_args, "--budget", "0.25", "--json"]) == 0
    shots = json.loads(capsys.readouterr().out)["shots"]
    assert len(shots) == 3  # int(12 * 0.25)
    assert [s["shot"] for s in shots] == sorted(s["shot"] for s in shots)
    assert all(s["end"] - s["start"] == 5.0 and s["start"] == 5.0 * s["shot"] for s in shots)
    assert main(s_args) == 0
    assert "1 shot for 'red,square'" in capsys.readouterr().out  # budget 2%: at least one
    assert head.projector.in_features == 64


def test_cli_errors(data, tmp_path, capsys):
    video = str(data / "videos" / "P01.mp4")
    ckpt = str(load_qfvs_backbone().checkpoint)
    assert main(["summarize", "--video", video, "--query", "Red", "--head", video]) == 1
    assert "not a safetensors QFVS head" in capsys.readouterr().err
    assert main(["summarize", "--video", video, "--query", "a,b", "--checkpoint", ckpt]) == 1
    assert "--head: required with --checkpoint" in capsys.readouterr().err
    assert main(["summarize", "--video", video, "--query", "a,b", "--budget", "2"]) == 1
    assert "--budget" in capsys.readouterr().err
    assert main(["eval", "--task", "egomcq", "--data", str(data), "--head", video]) == 1
    assert "--head: only for --task qfvs" in capsys.readouterr().err
    assert main(["eval", "--task", "egomcq", "--data", str(data), "--query-swap-control"]) == 1
    assert "--query-swap-control: only for --task qfvs" in capsys.readouterr().err
    bad = _config(data, tmp_path / "bad", test_videos=["P09"])
    assert main(["finetune", "--task", "qfvs", "--config", str(bad)]) == 1
    assert "test_videos: ['P09'] not in" in capsys.readouterr().err


def test_config_errors(data, tmp_path):
    path = _config(data, tmp_path / "c", train={"epochs": 2, "lrr": 1.0})
    with pytest.raises(InputError, match=r"c\.yaml.*train\.lrr"):
        load_qfvs_config(path)
    path = _config(data, tmp_path / "d", train={"budget": 0.0})
    with pytest.raises(InputError, match=r"d\.yaml: train\.budget"):
        load_qfvs_config(path)


def test_shipped_configs_load():
    from importlib.resources import files

    d = files("egovlpv2_rt") / "configs" / "finetune"
    full = load_qfvs_config(str(d / "qfvs.yaml"))
    assert (full.train.epochs, full.train.batch_size, full.train.lr) == (20, 4, 1e-4)
    assert full.test_videos == ["P04"] and full.train.budget == 0.02
    quick = load_qfvs_config(str(d / "qfvs_synthetic.yaml"))
    assert quick.model.checkpoint == "default" and quick.data.root == "qfvs_synth"
