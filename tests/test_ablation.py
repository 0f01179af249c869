"""``egovlpv2 ablate``: the rows' objective switches reach the trainer, the table's cells are the
mean and spread of the per-seed scores, a rerun trains and scores nothing again, and a folder
made with another budget is refused."""

from __future__ import annotations

import json
import statistics

import pytest

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.train import ablation as ab
from egovlpv2_rt.train.ablation import AblationSettings, ablation_table, run_ablation

SMALL = AblationSettings(
    steps=2, train_clips=32, eval_seeds=(11, 12), eval_questions=4, eval_clips=32
)


def test_rows_train_with_their_objectives_and_the_table_summarises_the_seeds(tmp_path, monkeypatch):
    rows = ["egonce", "egonce_mlm_vtm_random"]
    res = run_ablation(tmp_path, SMALL, rows=rows)
    for name, mlm, vtm in (("egonce", False, "off"), ("egonce_mlm_vtm_random", True, "random")):
        cfg = json.loads((tmp_path / "rows" / name / "train_config.json").read_text())
        assert (cfg["loss"]["masked_lm"], cfg["loss"]["vtm_negatives"]) == (mlm, vtm)
        assert cfg["loss"]["vtm_start_step"] == (1 if vtm != "off" else 0)
        assert cfg["max_steps"] == 2 and cfg["data"]["root"].endswith("train")
    metrics = (tmp_path / "rows" / "egonce" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    last = dict(zip(header, metrics[-1].split(","), strict=True))
    assert last["mlm"] == "nan" and last["vtm"] == "nan"  # EgoNCE alone
    table = ablation_table(res)
    assert [r["row"] for r in table["rows"]] == rows
    for r in table["rows"]:
        assert r["seeds"] == [11, 12]
        for cell, c in r["cells"].items():
            per_seed = [res.scores[r["row"]][s] for s in (11, 12)]
            mode, kind = cell.split("/")
            if r["row"] == "egonce" and mode != "dual":
                assert c["mean"] is None and c["values"] == []  # no VTM head: n/a
                continue
            vals = [float(p[mode][kind]) for p in per_seed]
            assert c["values"] == vals
            assert c["mean"] == pytest.approx(statistics.fmean(vals))
            assert c["sd"] == pytest.approx(statistics.stdev(vals))
    assert json.loads((tmp_path / "ablation.json").read_text()) == json.loads(json.dumps(table))
    printed = ab.format_ablation_table(table)
    assert "EgoNCE" in printed and "n/a" in printed and "+ MLM + VTM (random)" in printed

    # A rerun reads what is there: no training, no scoring.
    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr("egovlpv2_rt.train.trainer.train", fail)
    monkeypatch.setattr("egovlpv2_rt.eval.egomcq.evaluate_egomcq", fail)
    again = run_ablation(tmp_path, SMALL, rows=["egonce"])
    assert again.scores == res.scores


def test_other_budget_and_seeds_are_refused(tmp_path):
    run_ablation(
        tmp_path,
        AblationSettings(
            steps=2, train_clips=32, eval_seeds=(11,), eval_questions=4, eval_clips=32
        ),
        rows=[],
    )
    with pytest.raises(InputError, match=r"another budget.*steps: 2 there, 3 asked"):
        run_ablation(tmp_path, AblationSettings(steps=3, train_clips=32, eval_seeds=(11,)), rows=[])
    with pytest.raises(InputError, match="exclude the training seed 1"):
        AblationSettings(eval_seeds=(1, 11))
    with pytest.raises(InputError, match="rows \\['nope'\\] unknown"):
        run_ablation(
            tmp_path,
            AblationSettings(
                steps=2, train_clips=32, eval_seeds=(11,), eval_questions=4, eval_clips=32
            ),
            rows=["nope"],
        )
