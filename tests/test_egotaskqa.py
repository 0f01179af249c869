"""EgoTaskQA: file readers, the per-tag accuracy, synthetic data, the QA model and its job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.eval.taskqa import majority_answer, majority_baseline, taskqa_accuracy
from egovlpv2_rt.tasks.egotaskqa_data import TaskQAItem, load_taskqa_split


def _write_folder(d: Path, items: list[dict], answers=("yes", "no", "cup"), tags=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "answer_set.txt").write_text("".join(f"{a}\n" for a in answers))
    tags = tags or ["descriptive", "predictive", "query", "verify"]
    (d / "all_reasoning_types.txt").write_text("\n".join(tags) + "\n")
    for split in ("train", "val", "test"):
        (d / f"formatted_{split}_qas_encode.json").write_text(json.dumps(items))
    return d


def _raw(**kw) -> dict:
    base = {
        "interval": "clip_0",
        "question": "What did I pick up? ",
        "answer_encode": 2,
        "type": ["descriptive"],
        "category": ["world"],
        "semantic": "object",
        "structural": "query",
        "reasoning_type": "descriptive$query",
        "extra": 1,
    }
    return {**base, **kw}


def test_reader_reads_items(tmp_path):
    # The release's field shapes: type and category lists; structural given, or read from
    # the tags when absent; a bare string label is accepted as one label.
    verify = {k: v for k, v in _raw(answer_encode=0).items() if k != "structural"}
    verify["reasoning_type"] = "descriptive$verify"
    d = _write_folder(tmp_path / "qa", [_raw(), verify, _raw(type="descriptive")])
    split = load_taskqa_split(d, "val")
    assert split.answers == ("yes", "no", "cup")
    assert split.items[0] == TaskQAItem(
        "clip_0",
        "What did I pick up? ",
        2,
        "query",
        ("descriptive", "query"),
        ("descriptive",),
        ("world",),
        "object",
    )
    assert split.items[1].answer == 0 and split.items[1].structural == "verify"
    assert split.items[2].type == ("descriptive",)
    assert split.video_path(split.items[0]) == d / "videos" / "clip_0.mp4"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(answer_encode=3), "item 1: field 'answer_encode' 3 is outside the answer set (0..2)"),
        (_raw(answer_encode=-1), "item 1: field 'answer_encode' -1 is outside"),
        (_raw(answer_encode="2"), "item 1: field 'answer_encode' must be an integer, got '2'"),
        ({k: v for k, v in _raw().items() if k != "question"}, "item 1: missing field 'question'"),
        (_raw(reasoning_type="descriptive$magic"), "unknown reasoning type 'magic'"),
        (_raw(interval="../x"), "item 1: field 'interval' must be a clip file name"),
        (_raw(type=["a", 3]), "item 1: field 'type' must be a string or a list of strings"),
        (_raw(structural=["query"]), "item 1: field 'structural' must be a string"),
        ([1], "item 1: expected an object, got list"),
    ],
)
def test_reader_errors_name_file_item_field(tmp_path, raw, message):
    d = _write_folder(tmp_path / "qa", [_raw(), raw])
    with pytest.raises(InputError) as e:
        load_taskqa_split(d, "test")
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(str(d / "formatted_test_qas_encode.json") + ": ")
    assert message in text


def test_reader_file_errors(tmp_path):
    d = _write_folder(tmp_path / "qa", [_raw()])
    (d / "answer_set.txt").write_text("yes\n\nno\n")
    with pytest.raises(InputError, match=r"answer_set.txt: line 2: empty answer entry"):
        load_taskqa_split(d, "train")
    (d / "answer_set.txt").write_text("yes\nno\nyes\n")
    with pytest.raises(InputError, match=r"line 3: answer 'yes' repeats line 1"):
        load_taskqa_split(d, "train")
    with pytest.raises(InputError, match=r"split must be one of"):
        load_taskqa_split(d, "dev")


def _it(structural: str, *tags: str) -> TaskQAItem:
    return TaskQAItem("c", "q", 0, structural, tags)


def test_accuracy_hand_worked():
    # 5 questions; right: 0, 2, 3.
    items = [
        _it("query", "descriptive", "query"),  # right
        _it("query", "predictive", "query"),  # wrong
        _it("verify", "descriptive", "predictive", "verify"),  # right
        _it("verify", "predictive", "verify"),  # right
        _it("logical", "descriptive"),  # wrong, neither open nor binary
    ]
    pred = [1, 2, 0, 1, 3]
    target = [1, 0, 0, 1, 2]
    acc = taskqa_accuracy(
        pred, target, items, ["descriptive", "predictive", "query", "verify", "x"]
    )
    # descriptive: q0 right, q2 right, q4 wrong -> 2/3; predictive: q1 wrong, q2, q3 right -> 2/3
    assert acc == pytest.approx(
        {
            "All": 60.0,
            "Open": 50.0,
            "Binary": 100.0,
            "descriptive": 200 / 3,
            "predictive": 200 / 3,
            "query": 50.0,
            "verify": 100.0,
            "x": 0.0,
        },
        abs=1e-12,
    )
    assert list(taskqa_accuracy(pred, target, items)) == [
        "All",
        "Open",
        "Binary",
        "descriptive",
        "predictive",
        "query",
        "verify",
    ]
    with pytest.raises(ValueError, match="one entry per question"):
        taskqa_accuracy(pred[:4], target, items)


def test_majority_baseline():
    assert majority_answer([3, 1, 1, 3, 2]) == 1  # tie 1/3 -> smaller index
    items = [_it("query", "descriptive"), _it("verify", "descriptive"), _it("verify", "predictive")]
    acc = majority_baseline([0, 0, 5], [0, 1, 0], items)
    assert acc["All"] == pytest.approx(200 / 3)
    assert acc["Open"] == 100.0 and acc["Binary"] == 50.0
    assert acc["descriptive"] == 50.0 and acc["predictive"] == 100.0


# -- synthetic data ------------------------------------------------------------------------------


def _small_config():
    from egovlpv2_rt.tasks.egotaskqa_synth import EgoTaskQASynthConfig

    return EgoTaskQASynthConfig(clips=(4, 2, 2), actions_per_clip=(3, 3), size=32, fps=4)


def test_synth_same_seed_same_bytes(tmp_path):
    from egovlpv2_rt.tasks.egotaskqa_synth import synthesize_egotaskqa

    a = synthesize_egotaskqa(tmp_path / "a", 3, _small_config())
    b = synthesize_egotaskqa(tmp_path / "b", 3, _small_config())
    files = sorted(p.relative_to(a["root"]) for p in a["root"].rglob("*") if p.is_file())
    assert len(files) == 3 + 2 + 8  # 3 question files, answers, tags, 8 clips
    for rel in files:
        assert (a["root"] / rel).read_bytes() == (b["root"] / rel).read_bytes(), rel
    c = synthesize_egotaskqa(tmp_path / "c", 4, _small_config())
    assert c["train"].read_bytes() != a["train"].read_bytes()
    cats, types = set(), set()
    for split in ("train", "val", "test"):
        sp = load_taskqa_split(a["root"], split)
        ans = [sp.answers[it.answer] for it in sp.items]
        assert ans.count("yes") == ans.count("no")  # balanced binary answers
        for it in sp.items:
            assert (it.structural == "verify") == (sp.answers[it.answer] in ("yes", "no"))
            want = (*it.type, *it.category, it.semantic, it.structural, "direct")
            assert it.reasoning == want
            assert (sp.video_root / f"{it.interval}.mp4").is_file()
        cats |= {t for it in sp.items for t in it.type}
        types |= {it.structural for it in sp.items}
    assert cats == {"descriptive", "predictive"} and types == {"query", "verify"}


# -- model and fine-tuning -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from egovlpv2_rt.tasks.egotaskqa_synth import synthesize_egotaskqa

    return synthesize_egotaskqa(tmp_path_factory.mktemp("taskqa"), 5, _small_config())["root"]


@pytest.mark.parametrize("encoder", ["fusion", "dual"])
def test_model_head_on_the_backbone_features(encoder, tmp_path):
    import torch

    from egovlpv2_rt.checkpoint import load_model
    from egovlpv2_rt.model_files import default_model_path
    from egovlpv2_rt.tasks.egotaskqa import TaskQAModel, load_taskqa_model, save_taskqa_model

    backbone = load_model(default_model_path(), num_frames=16)
    assert backbone.config.video.num_frames == 16
    torch.manual_seed(0)
    model = TaskQAModel(backbone, 7, encoder).eval()
    assert [type(m).__name__ for m in model.qa_head] == ["Linear", "ReLU", "Dropout", "Linear"]
    d = backbone.config.video.embed_dim
    width = d if encoder == "fusion" else d + backbone.config.text.hidden_size
    assert model.qa_head[0].in_features == width and model.qa_head[3].out_features == 7
    assert model.qa_head[2].p == 0.2
    video = torch.randn(2, 16, 3, 64, 64)
    ids = torch.tensor([[0, 50, 60, 2, 1], [0, 70, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        logits = model(video, ids, mask)
        if encoder == "fusion":
            feats = backbone.forward_fusion(video, ids, mask).video_cls
        else:
            feats = torch.cat(
                [backbone.forward_video(video).features, backbone.forward_text(ids, mask).features],
                -1,
            )
        assert logits.shape == (2, 7)
        torch.testing.assert_close(logits, model.qa_head(feats), rtol=0, atol=0)
        save_taskqa_model(model, tmp_path / "qa.safetensors")
        again = load_taskqa_model(tmp_path / "qa.safetensors")
        assert again.encoder == encoder and again.num_answers == 7
        torch.testing.assert_close(again(video, ids, mask), logits, rtol=0, atol=0)
    # The answer head takes optim.lr_mult_head (a fresh head beside a pre-trained backbone).
    from egovlpv2_rt.train.config import OptimConfig
    from egovlpv2_rt.train.optim import param_groups

    groups = param_groups(model, OptimConfig(lr=1e-4, lr_mult_head=30.0))
    head = [g for g in groups if any(n.startswith("qa_head.") for n in g["names"])]
    assert {g["group"] for g in head} == {"head/decay", "head/no_decay"}
    assert all(g["lr"] == pytest.approx(3e-3) for g in head)
    in_head = {n for g in head for n in g["names"]}
    assert {n for n, _ in model.named_parameters() if n.startswith("qa_head.")} <= in_head


def _job_config(root: Path, out: Path, **kw) -> dict:
    return {
        "task": "egotaskqa",
        "model": {"init_checkpoint": "default", "tokenizer": "default"},
        "data": {"root": str(root), "num_frames": 4, "image_size": 64},
        "optim": {"lr": 1e-4, "betas": [0.9, 0.999]},
        "eval": {"batch_size": 4},
        "global_batch_size": 2,
        "max_steps": 2,
        "checkpoint_every": 1,
        "progress": False,
        "out_dir": str(out),
        **kw,
    }


def test_job_trains_evaluates_on_val_and_saves(synth_root, tmp_path):
    import json as _json

    from egovlpv2_rt.model_files import default_model_dir, load_tokenizer
    from egovlpv2_rt.tasks.egotaskqa import evaluate_egotaskqa, load_taskqa_model
    from egovlpv2_rt.tasks.egotaskqa_job import (
        egotaskqa_config_from_dict,
        finetune_egotaskqa,
        read_best,
    )
    from egovlpv2_rt.train.state import load_training_state

    cfg = egotaskqa_config_from_dict(
        _job_config(synth_root, tmp_path / "run", eval={"batch_size": 4, "every_steps": 1})
    )
    res = finetune_egotaskqa(cfg, device="cpu")
    assert res.steps == 2 and res.weights is not None
    lines = (tmp_path / "run" / "eval.jsonl").read_text().splitlines()
    last = _json.loads(lines[-1])
    assert last["step"] == 2
    assert {"val/All", "val/Open", "val/Binary", "val/descriptive", "val/direct"} <= set(last)
    model = load_taskqa_model(res.weights)
    tok = load_tokenizer(default_model_dir(), 30)
    val = evaluate_egotaskqa(model, synth_root, "val", tok, batch_size=3)
    # Deterministic evaluation: the saved model gives the numbers logged during the run.
    assert {f"val/{k}": v for k, v in val.items()} == pytest.approx(
        {k: v for k, v in last.items() if k != "step"}, abs=1e-9
    )
    test = evaluate_egotaskqa(model, synth_root, "test", tok)
    assert set(test) == set(val) and 0.0 <= test["All"] <= 100.0
    # Model selection on val: best.safetensors is the evaluated step with the best val All
    # (the earliest among ties), and it scores that on val.
    logged = [_json.loads(ln) for ln in lines]
    top = max(r["val/All"] for r in logged)
    chosen = next(r for r in logged if r["val/All"] == top)
    assert read_best(tmp_path / "run") == {"step": chosen["step"], "val/All": top}
    best = load_taskqa_model(tmp_path / "run" / "best.safetensors")
    again = evaluate_egotaskqa(best, synth_root, "val", tok, batch_size=3)
    assert again["All"] == pytest.approx(top, abs=1e-9)
    # The training state holds the head (a resume continues it).
    state = load_training_state(res.checkpoint)
    assert state["step"] == 2 and "qa_head.3.weight" in state["model"]


def test_config_errors(synth_root, tmp_path):
    from egovlpv2_rt.tasks.egotaskqa_job import egotaskqa_config_from_dict
    from egovlpv2_rt.train.config import ConfigError

    with pytest.raises(ConfigError, match="encoder"):
        egotaskqa_config_from_dict(_job_config(synth_root, tmp_path, encoder="late"))
    with pytest.raises(ConfigError, match=r"\bloss\b"):
        egotaskqa_config_from_dict(_job_config(synth_root, tmp_path, loss={"name": "x"}))
    cfg = egotaskqa_config_from_dict(_job_config(synth_root, tmp_path, encoder="dual"))
    assert cfg.encoder == "dual" and cfg.data.max_text_length == 30


def test_shipped_configs_load():
    from importlib.resources import files

    from egovlpv2_rt.tasks.egotaskqa_job import load_egotaskqa_config

    d = files("egovlpv2_rt") / "configs" / "finetune"
    full = load_egotaskqa_config(str(d / "egotaskqa.yaml"))
    assert (full.optim.lr, full.optim.betas, full.optim.warmup_fraction) == (
        2e-4,
        (0.9, 0.999),
        0.1,
    )
    assert (full.epochs, full.global_batch_size, full.data.num_frames) == (36, 64, 16)
    assert (full.encoder, full.dropout, full.data.max_text_length) == ("fusion", 0.2, 30)
    quick = load_egotaskqa_config(str(d / "egotaskqa_synthetic.yaml"))
    assert quick.model.init_checkpoint == "default" and quick.data.image_size == 64


def test_cli_synth_finetune_eval(synth_root, tmp_path, capsys):
    """``egovlpv2 finetune --task egotaskqa`` then ``eval --task egotaskqa`` on the test split."""
    import json

    import yaml

    from egovlpv2_rt.cli import main

    cfg = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "python/egovlpv2_rt/configs/finetune"
         / "egotaskqa_synthetic.yaml").read_text()
    )  # fmt: skip
    cfg["data"]["root"] = str(synth_root)
    cfg["data"]["num_frames"] = 4
    cfg["max_steps"] = 2
    cfg["eval"]["every_steps"] = 0
    cfg["out_dir"] = str(tmp_path / "run")
    cfg["progress"] = False
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--task", "egotaskqa", "--config", str(tmp_path / "cfg.yaml")]) == 0
    err = capsys.readouterr().err
    assert f"model to test: {tmp_path / 'run' / 'best.safetensors'} (step 2, val All" in err
    ckpt = tmp_path / "run" / "best.safetensors"
    args = ["eval", "--task", "egotaskqa", "--data", str(synth_root), "--checkpoint", str(ckpt)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and {"All", "Open", "Binary"} <= set(report["accuracy"])
    assert all(0.0 <= v <= 100.0 for v in report["accuracy"].values())
    assert main([*args, "--frames", "8"]) == 1
    assert "--frames" in capsys.readouterr().err
