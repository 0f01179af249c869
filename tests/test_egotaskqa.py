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
        "type": "query",
        "category": "object",
        "semantic": "object",
        "reasoning_type": "descriptive$query",
        "extra": 1,
    }
    return {**base, **kw}


def test_reader_reads_items(tmp_path):
    d = _write_folder(tmp_path / "qa", [_raw(), _raw(answer_encode=0, type="verify")])
    split = load_taskqa_split(d, "val")
    assert split.answers == ("yes", "no", "cup")
    assert split.items[0] == TaskQAItem(
        "clip_0", "What did I pick up? ", 2, "query", "object", "object", ("descriptive", "query")
    )
    assert split.items[1].answer == 0 and split.items[1].type == "verify"
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


def _it(type_: str, *tags: str) -> TaskQAItem:
    return TaskQAItem("c", "q", 0, type_, "", "", tags)


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
            assert (it.type == "verify") == (sp.answers[it.answer] in ("yes", "no"))
            assert it.reasoning == (it.category, it.semantic, it.type, "direct")
            assert (sp.video_root / f"{it.interval}.mp4").is_file()
        cats |= {it.category for it in sp.items}
        types |= {it.type for it in sp.items}
    assert cats == {"descriptive", "predictive"} and types == {"query", "verify"}
