"""Readers of the QFVS files: dense tags, oracle summaries, Tags.mat, prompts, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.qfvs_data import load_qfvs, load_tags_mat, query_prompts, read_oracle


def _tree(root: Path, tags: dict[str, str], oracles: dict[str, dict[str, str]]) -> Path:
    for v, text in tags.items():
        (root / "Dense_per_shot_tags" / v).mkdir(parents=True)
        (root / "Dense_per_shot_tags" / v / f"{v}.txt").write_text(text)
    for v, files in oracles.items():
        (root / "Oracle_Summaries" / v).mkdir(parents=True)
        for name, text in files.items():
            (root / "Oracle_Summaries" / v / name).write_text(text)
    return root


def test_load_qfvs(tmp_path):
    root = _tree(
        tmp_path,
        {"P01": "Sky,Car\n\nCar\nCupglass,Sky\n", "P02": "Tree\nTree,Sky\n"},
        {"P01": {"Car_Sky_oracle.txt": "3\n1\n"}, "P02": {"Sky_Tree_oracle.txt": "2\n"}},
    )
    videos, vocab = load_qfvs(root)
    assert vocab == ["Car", "Cupglass", "Sky", "Tree"]
    assert [v.name for v in videos] == ["P01", "P02"]
    p1 = videos[0]
    assert p1.num_shots == 4
    assert p1.tags[1] == frozenset()
    assert p1.queries[0].concept1 == "Car" and p1.queries[0].concept2 == "Sky"
    assert p1.queries[0].oracle == (0, 2)  # 1-based 3, 1 -> 0-based sorted
    np.testing.assert_array_equal(
        p1.concept_matrix(vocab), [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]]
    )
    np.testing.assert_array_equal(p1.concept_labels("Sky"), [1, 0, 0, 1])


def test_prompts_rename():
    assert query_prompts("Cupglass", "Petsanimal") == (
        "There is a Glass",
        "There is a Animal",
        "There is a Glass and a Animal",
    )
    assert query_prompts("Musicalinstrument", "Car")[2] == "There is a Instrument and a Car"


def test_oracle_shot_outside_video(tmp_path):
    f = tmp_path / "Car_Sky_oracle.txt"
    f.write_text("1\n5\n")
    with pytest.raises(InputError) as err:
        read_oracle(f, 4)
    assert str(err.value) == f"{f}:2: shot 5 is outside the video (shots 1..4, 1-based)"
    f.write_text("0\n")
    with pytest.raises(InputError, match=r":1: shot 0 is outside the video"):
        read_oracle(f, 4)
    f.write_text("2\nx\n")
    with pytest.raises(InputError, match=r":2: 'x' is not a shot index"):
        read_oracle(f, 4)
    f.write_text("\n")
    with pytest.raises(InputError, match="empty oracle summary"):
        read_oracle(f, 4)


def test_concept_not_in_vocabulary(tmp_path):
    root = _tree(
        tmp_path,
        {"P01": "Sky\nCar\n"},
        {"P01": {"Car_Boat_oracle.txt": "1\n"}},
    )
    with pytest.raises(InputError) as err:
        load_qfvs(root)
    msg = str(err.value)
    assert "Car_Boat_oracle.txt: concept 'Boat' is not in the tag vocabulary (2 concepts)" in msg
    # With an explicit vocabulary, a dense tag outside it names file and line.
    with pytest.raises(InputError) as err:
        load_qfvs(root, vocabulary=["Sky", "Boat"])
    assert str(err.value).endswith(
        "P01.txt:2: concept 'Car' is not in the tag vocabulary (2 concepts)"
    )


def test_layout_errors(tmp_path):
    with pytest.raises(InputError, match="Dense_per_shot_tags: missing"):
        load_qfvs(tmp_path)
    root = _tree(tmp_path, {"P01": "Sky\n"}, {"P01": {"Sky_oracle.txt": "1\n"}})
    with pytest.raises(InputError, match=r"Sky_oracle.txt: not an oracle file name"):
        load_qfvs(root)


def test_load_tags_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    # The original's layout: a 1 x videos struct array with field Bin_Vecs, a shots x 1 cell
    # of 1 x concepts uint8 rows, so Tags[0][video][0][shot][0][0] is a concept vector.
    tags = np.zeros((1, 2), dtype=[("Bin_Vecs", "O")])
    for v, shots in enumerate(([[1, 0, 1], [0, 0, 0]], [[0, 1, 0]])):
        cell = np.empty((len(shots), 1), dtype=object)
        for i, vec in enumerate(shots):
            cell[i, 0] = np.array([vec], dtype=np.uint8)
        tags[0, v]["Bin_Vecs"] = cell
    path = tmp_path / "Tags.mat"
    scipy_io.savemat(str(path), {"Tags": tags})
    got = load_tags_mat(path)
    assert len(got) == 2
    np.testing.assert_array_equal(got[0], [[1, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(got[1], [[0, 1, 0]])
    scipy_io.savemat(str(path), {"Other": np.zeros(2)})
    with pytest.raises(InputError, match=r"not the QFVS Tags\.mat layout"):
        load_tags_mat(path)
