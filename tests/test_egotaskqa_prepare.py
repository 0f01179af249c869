"""``egovlpv2 prepare --task egotaskqa``: the release's {train,val,test}_qas.json -> the
baselines' preprocessed files, checked against a hand-worked example of the original's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egovlpv2_rt.cli import main
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.egotaskqa_data import load_taskqa_split
from egovlpv2_rt.tasks.egotaskqa_prepare import prepare_egotaskqa


def _qa(interval: str, answer: str, tags: str | None, structural: str = "query") -> dict:
    qa = {
        "interval": interval,
        "question": f"What about {interval}?",
        "answer": answer,
        "type": ["descriptive"],
        "category": ["world"],
        "semantic": "object",
        "structural": structural,
        "reference": "direct",
        "program": "query(...)",
    }
    if tags is not None:
        qa["reasoning_type"] = tags
    return qa


def _release(root: Path) -> Path:
    splits = {
        "train": [
            _qa("c0", "Cup", None),  # reasoning_type built as split.py does
            _qa("c1", "yes", "descriptive$verify", "verify"),
            _qa("c2", "cup", "predictive$query"),
            _qa("c3", "no", "descriptive$verify", "verify"),
            _qa("c4", "yes", "descriptive$verify", "verify"),
            _qa("c5", "knife", "descriptive$query"),
        ],
        "val": [
            _qa("c6", "Cup", "counterfactual$query"),
            _qa("c7", "knife", "descriptive$query"),
            _qa("c8", "spoon", "descriptive$query"),
        ],
        "test": [_qa("c9", "no", "explanatory$verify", "verify")],
    }
    root.mkdir(parents=True)
    for split, qas in splits.items():
        (root / f"{split}_qas.json").write_text(json.dumps(qas))
    return root


def test_prepare_hand_worked(tmp_path):
    out = tmp_path / "direct"
    res = prepare_egotaskqa(_release(tmp_path / "release"), out)
    # yes x2 first; then the ties (one each) in order of first appearance, lower-cased and
    # merged: Cup and cup are one answer.
    answers = ["<UNK0>", "<UNK1>", "yes", "cup", "no", "knife"]
    assert (out / "answer_set.txt").read_text().splitlines() == answers
    enc = {
        s: [
            q["answer_encode"]
            for q in json.loads((out / f"formatted_{s}_qas_encode.json").read_text())
        ]
        for s in ("train", "val", "test")
    }
    assert enc["train"] == [3, 2, 3, 4, 2, 5]
    # val/test look the answer up as written: "Cup" is not "cup" -> <UNK1>, as the original.
    assert enc["val"] == [1, 5, 1] and enc["test"] == [4]
    assert res.unknown_answers == {"train": 0, "val": 2, "test": 0}
    # Tags in order of first appearance over train, test, val (reasoning_types.py).
    assert (out / "all_reasoning_types.txt").read_text().splitlines() == [
        "descriptive",
        "world",
        "object",
        "query",
        "direct",
        "verify",
        "predictive",
        "explanatory",
        "counterfactual",
    ]
    train = load_taskqa_split(out, "train")
    assert train.items[0].reasoning == ("descriptive", "world", "object", "query", "direct")
    assert [it.structural for it in train.items] == [
        "query",
        "verify",
        "query",
        "verify",
        "verify",
        "query",
    ]
    assert train.items[0].type == ("descriptive",) and train.items[0].category == ("world",)
    assert res.questions == {"train": 6, "val": 3, "test": 1} and res.answers == 6
    # Other keys kept as read (the original's reader ignores them).
    raw = json.loads((out / "formatted_train_qas_encode.json").read_text())
    assert raw[0]["program"] == "query(...)" and raw[0]["answer"] == "Cup"


def test_answer_top_keeps_the_most_frequent(tmp_path):
    out = tmp_path / "o"
    res = prepare_egotaskqa(_release(tmp_path / "r"), out, answer_top=1)
    assert (out / "answer_set.txt").read_text().splitlines() == ["<UNK0>", "<UNK1>", "yes"]
    assert res.unknown_answers == {"train": 4, "val": 3, "test": 1}


@pytest.mark.parametrize(
    ("split", "edit", "message"),
    [
        ("train", {"answer": 3}, "train_qas.json: item 1: field 'answer' must be a string, got 3"),
        ("val", {"interval": None}, "val_qas.json: item 1: field 'interval' must be a string"),
        ("val", {"reasoning_type": ""}, "field 'reasoning_type' must be a non-empty string"),
        (
            "train",
            {"type": "descriptive"},
            "item 1: no 'reasoning_type', and field 'type' is not a list",
        ),
    ],
)
def test_bad_release_items_name_file_item_field(tmp_path, split, edit, message):
    root = _release(tmp_path / "r")
    path = root / f"{split}_qas.json"
    qas = json.loads(path.read_text())
    qas[1].update(edit)
    if "type" in edit:
        del qas[1]["reasoning_type"]
    path.write_text(json.dumps(qas))
    with pytest.raises(InputError) as e:
        prepare_egotaskqa(root, tmp_path / "o")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_prepare(tmp_path, capsys):
    root = _release(tmp_path / "r")
    out = tmp_path / "o"
    assert (
        main(
            ["prepare", "--task", "egotaskqa", "--release", str(root), "--out", str(out), "--json"]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert got["questions"] == {"train": 6, "val": 3, "test": 1} and got["missing_clips"] == []
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(9):
        (videos / f"c{i}.mp4").write_bytes(b"")
    args = ["prepare", "--task", "egotaskqa", "--release", str(root), "--out", str(out)]
    assert main([*args, "--videos", str(videos)]) == 1  # c9 has no clip
    assert "1 clips missing, e.g. c9" in capsys.readouterr().out
    assert (
        main(["prepare", "--task", "egotaskqa", "--release", str(tmp_path), "--out", str(out)]) == 1
    )
    assert "train_qas.json: no question file" in capsys.readouterr().err
