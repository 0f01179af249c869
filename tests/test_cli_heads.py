"""``egovlpv2 train-head`` / ``eval-head`` on features of a tiny model: the commands run end to
end, report the head beside a seeded random baseline, and refuse misplaced options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _tiny_assets import tiny_episodic_dir, tiny_model_dir

from egovlpv2_rt.cli import main
from egovlpv2_rt.cli.heads import mq_clips
from egovlpv2_rt.eval.metrics import detection_map, nlq_recall
from egovlpv2_rt.tasks.episodic.mq_train import ground_truth_records, random_detections
from egovlpv2_rt.tasks.episodic.nlq_data import load_nlq_features
from egovlpv2_rt.tasks.episodic.nlq_head import random_spans


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> dict[str, Path]:
    data = tiny_episodic_dir(tmp_path_factory)
    ckpt = tiny_model_dir(tmp_path_factory) / "model.safetensors"
    out = tmp_path_factory.mktemp("feats")
    for task, meta in (("nlq", "nlq"), ("mq", "moments")):
        for split in ("train", "val"):
            args = ["features", "--task", task, "--metadata", str(data[f"{meta}_{split}"])]
            args += ["--videos", str(data["videos"]), "--out", str(out / f"{task}_{split}")]
            assert main([*args, "--fps", "video", "--checkpoint", str(ckpt)]) == 0
    return {"out": out, **data}


def test_nlq_head_trains_and_scores_beside_the_random_baseline(feats, tmp_path, capsys):
    head = tmp_path / "nlq_head"
    train = ["train-head", "--task", "nlq", "--features", str(feats["out"] / "nlq_train")]
    assert main([*train, "--out", str(head), "--steps", "3", "--seed", "1"]) == 0
    assert (head / "nlq_head.safetensors").is_file()
    capsys.readouterr()
    val = feats["out"] / "nlq_val"
    args = ["eval-head", "--task", "nlq", "--checkpoint", str(head), "--features", str(val)]
    assert main([*args, "--baseline-seed", "4", "--baseline-draws", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    samples = load_nlq_features(val)
    assert report["queries"] == len(samples)
    assert set(report["metrics"]) == {f"R@{k}_IoU{t}" for k in (1, 3, 5) for t in (0.3, 0.5)} | {
        "mIoU"
    }
    gt = [[s.s_time, s.e_time] for s in samples]
    draws = [nlq_recall(random_spans(samples, 5, 4 + i), gt) for i in range(3)]
    want = {k: sum(d[k] for d in draws) / 3 for k in draws[0]}
    assert report["random_baseline"] == pytest.approx(want)


def test_mq_head_trains_and_scores_beside_the_random_baseline(feats, tmp_path, capsys):
    head = tmp_path / "mq_head"
    meta_train = str(feats["moments_train"])
    args = ["train-head", "--task", "mq", "--features", str(feats["out"] / "mq_train")]
    assert main([*args, "--metadata", meta_train, "--out", str(head), "--epochs", "2"]) == 0
    capsys.readouterr()
    args = ["eval-head", "--task", "mq", "--checkpoint", str(head)]
    args += ["--features", str(feats["out"] / "mq_val"), "--metadata", str(feats["moments_val"])]
    assert main([*args, "--baseline-draws", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    clips, _ = mq_clips(feats["moments_val"])
    assert report["clips"] == len(clips)
    assert 0.0 <= report["metrics"]["average"] <= 100.0
    # The baseline is the seeded random detector with the head's labels, scored by the metric.
    from egovlpv2_rt.tasks.episodic.mq_head import load_mq_head

    labels = load_mq_head(head).labels
    rand = random_detections(clips, labels, 0, 200)
    want = detection_map(rand, ground_truth_records(clips))["average"]
    assert report["random_baseline"]["average"] == pytest.approx(want)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train-head", "--task", "mq", "--features", "F", "--out", "O"], "--metadata"),
        (
            ["train-head", "--task", "nlq", "--features", "F", "--out", "O", "--metadata", "m"],
            "only for --task mq",
        ),
        (
            ["train-head", "--task", "mq", "--features", "F", "--out", "O", "--steps", "3"],
            "only for --task nlq",
        ),
    ],
)
def test_misplaced_options_are_refused(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) != 0
    assert message in capsys.readouterr().err
