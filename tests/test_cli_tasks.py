"""``egovlpv2 synth/eval --task ek100_mir|charades_ego``: the CLI reports what the task's own
evaluation computes on the same model, at the original's frame counts."""

from __future__ import annotations

import json

import pytest

from egovlpv2_rt import cli
from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.model_files import default_model_path, load_tokenizer
from egovlpv2_rt.tasks.charades_ego import evaluate_charades_ego
from egovlpv2_rt.tasks.ek100_mir import evaluate_ek100_mir


def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    assert cli.main(["synth", "--task", "ek100_mir", "--out", str(root / "ek"), "--seed", "3"]) == 0
    assert (
        cli.main(["synth", "--task", "charades_ego", "--out", str(root / "ch"), "--seed", "3"]) == 0
    )
    return root


@pytest.mark.parametrize(
    ("task", "folder", "frames"), [("ek100_mir", "ek", 16), ("charades_ego", "ch", 32)]
)
def test_eval_task_equals_the_task_evaluation(datasets, capsys, task, folder, frames):
    capsys.readouterr()
    data = datasets / folder
    assert cli.main(["eval", "--task", task, "--data", str(data), "--json"]) == 0
    out = _strict(capsys.readouterr().out)
    assert out["task"] == task and out["frames"] == frames
    ckpt = default_model_path()
    model = load_model(ckpt, num_frames=frames)
    assert model.config.video.num_frames == frames
    length = min(30, model.config.text.max_text_length)
    tok = load_tokenizer(ckpt.parent / "tokenizer.json", length)
    if task == "ek100_mir":
        want = evaluate_ek100_mir(model, tok, data, batch_size=8, max_length=length).as_dict()
    else:
        want = evaluate_charades_ego(model, data, tok, batch_size=8, max_length=length).as_dict()
    assert out["metrics"] == pytest.approx(want, rel=1e-9)
    assert 0.0 < out["metrics"]["mAP_AVG" if task == "ek100_mir" else "mAP"] <= 100.0


def test_options_of_another_task_are_refused(datasets, capsys):
    capsys.readouterr()
    rc = cli.main(
        ["eval", "--task", "charades_ego", "--data", str(datasets / "ch"), "--mode", "dual"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "--mode: only for --task egomcq, not charades_ego" in err
    rc = cli.main(["synth", "--task", "ek100_mir", "--out", str(datasets / "x"), "--size", "64"])
    err = capsys.readouterr().err
    assert rc == 1 and "--size: only for --task egoclip, not ek100_mir" in err
    assert not (datasets / "x").exists()


def test_synth_writes_inventory_scene_captions(tmp_path, capsys):
    from egovlpv2_rt.data.egoclip import read_egoclip

    out = tmp_path / "inv"
    args = ["synth", "--out", str(out), "--clips", "40", "--questions", "6", "--size", "32"]
    assert cli.main([*args, "--scene-share", "1", "--scene-caption", "inventory"]) == 0
    recs = read_egoclip(out / "egoclip.csv")
    still = [r for r in recs if not r.tag_verb]
    assert len(recs) - len(still) == 40 and len(still) >= 5
    for r in still:  # three objects on each table, each named once by colour and shape
        words = r.clip_text.split()
        assert words[::3] == ["the"] * 3 and len(set(words[1::3])) == 3 == len(r.tag_noun)
    capsys.readouterr()
    rc = cli.main(
        ["synth", "--task", "qfvs", "--out", str(tmp_path / "q"), "--scene-caption", "inventory"]
    )
    assert (
        rc == 1 and "--scene-caption: only for --task egoclip, not qfvs" in capsys.readouterr().err
    )


def test_load_model_at_another_frame_count():
    model = load_model(default_model_path(), num_frames=16)
    assert model.config.video.num_frames == 16
    assert model.video_model.temporal_embed.shape[1] == 16
    with pytest.raises(ValueError, match="num_frames must be a positive int, got 0"):
        load_model(default_model_path(), num_frames=0)


def _finetune_config(path, task, data, out, steps):
    frames = 4  # the shipped model's own count: fast; the adapters resize like any other
    loss = "{name: max_margin, margin: 0.2}" if task == "ek100_mir" else "{name: infonce}"
    path.write_text(
        f"task: {task}\n"
        "model: {init_checkpoint: default, tokenizer: default}\n"
        f"data: {{root: {data}, num_frames: {frames}, image_size: 64, max_text_length: 16}}\n"
        "optim: {lr: 1.0e-4}\n"
        f"loss: {loss}\n"
        f"eval: {{every_steps: {steps}, batch_size: 4}}\n"
        f"max_steps: {steps}\nglobal_batch_size: 4\ncheckpoint_every: {steps}\n"
        f"seed: 5\nout_dir: {out}\nprogress: false\n"
    )
    return path


@pytest.mark.parametrize(("task", "folder"), [("ek100_mir", "ek"), ("charades_ego", "ch")])
def test_finetune_task_runs_and_reports_its_evaluation(datasets, tmp_path, capsys, task, folder):
    out = tmp_path / "run"
    cfg = _finetune_config(tmp_path / "ft.yaml", task, datasets / folder, out, steps=2)
    assert cli.main(["finetune", "--task", task, "--config", str(cfg)]) == 0
    assert "steps=2" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]
    # The run's own evaluation equals the task's evaluation of the weights it wrote.
    model = load_model(out / "model.safetensors")
    assert model.config.video.num_frames == 4
    tok = load_tokenizer(out / "tokenizer.json", 16)
    if task == "ek100_mir":
        want = evaluate_ek100_mir(model, tok, datasets / folder, batch_size=4).as_dict()
        assert rows[0]["mAP_AVG"] == pytest.approx(want["mAP_AVG"], rel=1e-9)
    else:
        want = evaluate_charades_ego(model, datasets / folder, tok, batch_size=4).as_dict()
        assert rows[0]["mAP"] == pytest.approx(want["mAP"], rel=1e-9)


def test_finetune_task_must_match_the_config(datasets, tmp_path, capsys):
    cfg = _finetune_config(tmp_path / "ft.yaml", "ek100_mir", datasets / "ek", tmp_path / "r", 2)
    assert cli.main(["finetune", "--task", "charades_ego", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "task is 'ek100_mir', but --task charades_ego was given" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("task", ["ek100_mir", "charades_ego"])
def test_shipped_quick_start_configs_load(task):
    from importlib.resources import files

    from egovlpv2_rt.train.finetune_config import load_finetune_config

    path = files("egovlpv2_rt") / "configs" / "finetune" / f"{task}_synthetic.yaml"
    cfg = load_finetune_config(str(path))
    assert cfg.task == task and cfg.model.init_checkpoint == "default"
    assert cfg.data.num_frames == {"ek100_mir": 16, "charades_ego": 32}[task]
