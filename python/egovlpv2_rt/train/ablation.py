"""The paper's objective ablation on the synthetic world: five pre-training rows with one budget,
each scored on EgoMCQ (dual / fusion / ensemble, inter / intra) on several held-out datasets.

Rows (the EgoVLPv2 poster's table): EgoNCE alone; + MLM; + VTM with hard negatives; + MLM +
VTM with random negatives; + MLM + VTM with hard negatives (the full objective). Every row has
the same data (the default model's training set, seed 1), steps, batch, seed and model (the
default model's architecture); VTM joins at half the steps in the rows that have it (trained
from scratch, VTM sits at chance until the dual features separate the captions: the default
model's staging), MLM runs throughout where it is on. The held-out EgoMCQ sets are generated
from seeds that are not the training seed (default 11, 12, 13: other videos, 200 questions,
half inter and half intra). Fusion and ensemble scores need a trained VTM head: rows without
VTM report them as ``None``.

Everything is written under one work folder and resumable per row: a row with its weights is
not trained again, a row with checkpoints resumes, a (row, seed) score already written is not
recomputed. Several processes may run different rows into the same folder (``rows``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.egoclip import read_egoclip
from ..data.synthetic import SynthConfig
from ..errors import InputError
from ..files import atomic_write_text
from .bpe import train_bpe_tokenizer
from .config import train_config_from_dict
from .default_model import (
    EVAL_CLIPS,
    IMAGE_SIZE,
    MAX_TEXT_LENGTH,
    RECIPE,
    TRAIN_SEED,
    default_train_config,
    synth_split,
)

__all__ = [
    "ABLATION_ROWS",
    "AblationRow",
    "AblationSettings",
    "ablation_table",
    "format_ablation_table",
    "run_ablation",
]


@dataclass(frozen=True)
class AblationRow:
    """One row: its name (folder), label (table), MLM on, VTM negatives (``off``/``random``/
    ``hard``)."""

    name: str
    label: str
    masked_lm: bool
    vtm_negatives: str

    @property
    def has_vtm(self) -> bool:
        return self.vtm_negatives != "off"


ABLATION_ROWS = (
    AblationRow("egonce", "EgoNCE", False, "off"),
    AblationRow("egonce_mlm", "+ MLM", True, "off"),
    AblationRow("egonce_vtm_hard", "+ VTM-Hard", False, "hard"),
    AblationRow("egonce_mlm_vtm_random", "+ MLM + VTM (random)", True, "random"),
    AblationRow("egonce_mlm_vtm_hard", "+ MLM + VTM-Hard", True, "hard"),
)
CELLS = ("dual", "fusion", "ensemble")


@dataclass(frozen=True)
class AblationSettings:
    """The one budget of every row.

    Attributes:
        steps: optimiser steps (global batch ``batch``); VTM joins at ``steps // 2``.
        train_clips: synthetic training clips (seed 1, the default model's data).
        eval_seeds: held-out EgoMCQ datasets.
        eval_questions: questions per held-out set (half inter, half intra).
        eval_clips: clips per held-out set (400: 50 videos, as the default model's).
        batch, lr, seed: as the default model's recipe.
        device: ``cpu`` or ``cuda``; threads: torch threads per process (CPU).
    """

    steps: int = 1000
    train_clips: int = 2400  # the budget of the table in bench/RESULTS.md
    eval_seeds: tuple[int, ...] = (11, 12, 13)
    eval_questions: int = 200
    eval_clips: int = EVAL_CLIPS
    batch: int = RECIPE.batch
    lr: float = RECIPE.lr
    seed: int = 0
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.steps < 2 or self.train_clips < self.batch or self.eval_questions < 2:
            raise InputError("ablation: steps >= 2, train_clips >= batch, eval_questions >= 2")
        if not self.eval_seeds or TRAIN_SEED in self.eval_seeds:
            raise InputError(
                f"ablation: eval_seeds must be non-empty and exclude the training seed "
                f"{TRAIN_SEED}, got {self.eval_seeds}"
            )

    def identity(self) -> dict[str, Any]:
        """What a row's weights depend on (recorded; a folder made otherwise is refused)."""
        d = dataclasses.asdict(self)
        for k in ("eval_seeds", "eval_questions", "eval_clips", "device", "threads"):
            d.pop(k)
        return d


def _rows(names: Sequence[str] | None) -> list[AblationRow]:
    if not names:
        return list(ABLATION_ROWS)
    known = {r.name: r for r in ABLATION_ROWS}
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"ablation rows {bad} unknown; choose from {sorted(known)}")
    return [known[n] for n in names]


def _check_identity(work: Path, settings: AblationSettings) -> None:
    path = work / "settings.json"
    want = settings.identity()
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            diff = [
                f"{k}: {have.get(k)!r} there, {v!r} asked"
                for k, v in want.items()
                if have.get(k) != v
            ]
            raise InputError(
                f"{work} holds an ablation run with another budget ({'; '.join(diff)}); "
                "use another folder"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(want, indent=1))


def _train_row(
    row: AblationRow, work: Path, settings: AblationSettings, tok_path: Path, vocab: int
) -> float:
    from .trainer import train

    out = work / "rows" / row.name
    if (out / "model.safetensors").is_file():
        return 0.0
    cfg = default_train_config(
        work / "train",
        tok_path,
        out,
        vocab,
        steps=settings.steps,
        batch=settings.batch,
        lr=settings.lr,
        width=64,
        heads=4,
        eval_dir=None,
        seed=settings.seed,
        vtm_start_step=settings.steps // 2 if row.has_vtm else 0,
    )
    cfg["loss"].update(
        {"contrastive": "egonce", "masked_lm": row.masked_lm, "vtm_negatives": row.vtm_negatives}
    )
    cfg["num_threads"] = settings.threads
    cfg["progress"] = False
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train_config.json", json.dumps(cfg, indent=1))
    t0 = time.perf_counter()
    resume = (out / "checkpoints" / "last.json").is_file()
    train(
        train_config_from_dict(cfg, str(out / "train_config.json")),
        resume=resume,
        device=settings.device,
    )
    seconds = time.perf_counter() - t0
    atomic_write_text(out / "train_seconds.json", json.dumps({"seconds": seconds}))
    return seconds


def _score_row(
    row: AblationRow, work: Path, settings: AblationSettings, tok_path: Path, seed: int
) -> dict[str, Any]:
    from ..checkpoint import load_model
    from ..eval.egomcq import evaluate_egomcq
    from ..tokenizer import RobertaTokenizer

    path = work / "rows" / row.name / f"egomcq_seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    eval_dir = work / "eval" / f"seed{seed}"
    synth_split(
        eval_dir,
        seed,
        SynthConfig(
            num_clips=settings.eval_clips, size=IMAGE_SIZE, num_mcq=settings.eval_questions
        ),
    )
    model = load_model(work / "rows" / row.name / "model.safetensors", device=settings.device)
    tok = RobertaTokenizer.from_tokenizer_json(tok_path, max_length=MAX_TEXT_LENGTH)
    modes = CELLS if row.has_vtm else ("dual",)
    res = evaluate_egomcq(
        model,
        eval_dir / "egomcq.json",
        eval_dir / "videos",
        tok,
        max_length=MAX_TEXT_LENGTH,
        batch_size=8,
        modes=modes,
    )
    scores = {m: res.accuracy[m] if m in modes else None for m in CELLS}
    atomic_write_text(path, json.dumps(scores))
    return scores


@dataclass
class AblationResult:
    """Per row: per held-out seed the EgoMCQ accuracies, and the training seconds."""

    settings: AblationSettings
    scores: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)


def run_ablation(
    work: str | Path,
    settings: AblationSettings | None = None,
    *,
    rows: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> AblationResult:
    """Train and score ``rows`` (default: all five) under ``work``; returns every score there
    (rows run by other processes included)."""
    settings = settings or AblationSettings()
    work = Path(work)
    _check_identity(work, settings)
    torch.set_num_threads(settings.threads)
    synth_split(
        work / "train",
        TRAIN_SEED,
        SynthConfig(num_clips=settings.train_clips, size=IMAGE_SIZE, num_mcq=20),
    )
    tok_path = work / "tokenizer.json"
    if not tok_path.is_file():
        texts = [r.clip_text for r in read_egoclip(work / "train" / "egoclip.csv")]
        train_bpe_tokenizer(texts, 384, tok_path)
    from ..tokenizer import RobertaTokenizer

    vocab = RobertaTokenizer.from_tokenizer_json(tok_path, max_length=MAX_TEXT_LENGTH).vocab_size
    result = AblationResult(settings)
    for row in _rows(rows):
        if log:
            log(f"row {row.name}: training ({settings.steps} steps)")
        _train_row(row, work, settings, tok_path, vocab)
        for seed in settings.eval_seeds:
            _score_row(row, work, settings, tok_path, seed)
            if log:
                log(f"row {row.name}: scored on held-out seed {seed}")
    for row in ABLATION_ROWS:  # everything in the folder, whoever ran it
        d = work / "rows" / row.name
        got = {
            s: json.loads((d / f"egomcq_seed{s}.json").read_text())
            for s in settings.eval_seeds
            if (d / f"egomcq_seed{s}.json").is_file()
        }
        if got:
            result.scores[row.name] = got
        if (d / "train_seconds.json").is_file():
            result.train_seconds[row.name] = json.loads((d / "train_seconds.json").read_text())[
                "seconds"
            ]
    atomic_write_text(work / "ablation.json", json.dumps(ablation_table(result), indent=1))
    return result


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None}
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd}


def ablation_table(result: AblationResult) -> dict[str, Any]:
    """The table as JSON: per row and cell (mode x inter/intra) the mean and sd (n - 1) over the
    held-out seeds, the per-seed values, the training seconds."""
    rows = []
    for row in ABLATION_ROWS:
        per_seed = result.scores.get(row.name)
        if not per_seed:
            continue
        cells: dict[str, Any] = {}
        for mode in CELLS:
            for kind in ("inter", "intra"):
                vals = [
                    float(s[mode][kind])
                    for s in per_seed.values()
                    if s.get(mode) is not None and s[mode].get(kind) is not None
                ]
                cells[f"{mode}/{kind}"] = {**_spread(vals), "values": vals}
        rows.append(
            {
                "row": row.name,
                "label": row.label,
                "seeds": sorted(int(s) for s in per_seed),
                "train_seconds": result.train_seconds.get(row.name),
                "cells": cells,
            }
        )
    return {"settings": dataclasses.asdict(result.settings), "rows": rows}


def format_ablation_table(table: dict[str, Any]) -> str:
    """The poster's layout: one line per row, EgoMCQ inter / intra for dual, fusion, ensemble,
    each ``mean+-sd``."""
    head = f"{'objective':<24}" + "".join(f"{m + ' inter':>15}{m + ' intra':>15}" for m in CELLS)
    lines = [head]
    for r in table["rows"]:
        line = f"{r['label']:<24}"
        for mode in CELLS:
            for kind in ("inter", "intra"):
                c = r["cells"][f"{mode}/{kind}"]
                text = "n/a" if c["mean"] is None else f"{c['mean']:.1f}+-{c['sd']:.1f}"
                line += f"{text:>15}"
        lines.append(line)
    seeds = table["settings"]["eval_seeds"]
    lines.append(f"(mean +- sd over held-out seeds {seeds}; n/a: no VTM head trained)")
    return "\n".join(lines)
