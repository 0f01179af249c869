"""Dual-encoder fine-tuning through the training loop: the loss falls on a learnable in-test
task, a stopped run resumes bit-identically, 2-process gloo equals 1 process, the fusion layers
stay untouched, the losses match float64 transcriptions, the config loader names its errors and
the shipped recipes are the original's. Tiny model, a few steps."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _finetune_task import CAPTIONS, ColourTask
from _tiny_assets import tiny_config, tiny_model_dir
from safetensors.torch import load_file

import egovlpv2_rt
from egovlpv2_rt.checkpoint import save_safetensors
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.train.config import ConfigError, OptimConfig
from egovlpv2_rt.train.finetune import finetune, pair_loss
from egovlpv2_rt.train.finetune_config import (
    FinetuneLoss,
    finetune_config_from_dict,
    load_finetune_config,
)
from egovlpv2_rt.train.optim import build_optimizer, build_scheduler
from egovlpv2_rt.train.trainer import scale_initialisation

HERE = Path(__file__).resolve().parent
RECIPES = Path(egovlpv2_rt.__file__).resolve().parent / "configs" / "finetune"


def _init_checkpoint(factory, dropout: float) -> Path:
    """The 2-layer tiny model with its weight matrices drawn at std 0.02 * 6.25 (as the shipped
    pre-training recipe's ``init_scale``): at std 0.02 and width 64 its embeddings hardly depend
    on the input, and a few steps could not move them apart."""
    d = factory.mktemp("ft-init")
    shutil.copy(tiny_model_dir(factory) / "tokenizer.json", d / "tokenizer.json")
    cfg = tiny_config()
    cfg = cfg.replace(
        text=dataclasses.replace(
            cfg.text, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
    )
    torch.manual_seed(0)
    model = EgoVLPv2(cfg)
    scale_initialisation(model, 6.25)
    save_safetensors(model, d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """With text dropout 0.1 (the tiny preset's)."""
    return _init_checkpoint(tmp_path_factory, 0.1)


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory) -> Path:
    """Without dropout: ranks draw different dropout masks than one process does."""
    return _init_checkpoint(tmp_path_factory, 0.0)


def _cfg(tiny: Path, out: Path, **top) -> dict:
    cfg = {
        "task": "colours",
        "model": {
            "init_checkpoint": str(tiny / "model.safetensors"),
            "tokenizer": str(tiny / "tokenizer.json"),
        },
        "data": {"num_frames": 2, "image_size": 32, "max_text_length": 24},
        "optim": {"lr": 1e-3, "warmup_fraction": 0.1},
        "loss": {"name": "max_margin"},
        "out_dir": str(out),
        "global_batch_size": 8,
        "max_steps": 6,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
    }
    for k, v in top.items():
        if isinstance(v, dict):
            cfg[k] = {**cfg.get(k, {}), **v}
        else:
            cfg[k] = v
    return cfg


def _metrics(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# InfoNCE at the tiny model's scale learns within a few steps at temperature 0.2 (at the
# recipe's 0.05 it first spends them shrinking its initial spread of similarities).
@pytest.mark.parametrize("loss", [{"name": "max_margin"}, {"name": "infonce", "temperature": 0.2}])
def test_finetuning_lowers_the_loss_and_leaves_the_fusion_layers(tiny, tmp_path, loss):
    out = tmp_path / "run"
    cfg = finetune_config_from_dict(
        _cfg(tiny, out, loss=loss, max_steps=24, optim={"lr": 2e-3}, checkpoint_every=24)
    )
    res = finetune(cfg, ColourTask(), device="cpu")
    assert res.steps == 24
    rows = _metrics(out)
    assert list(rows[0]) == [
        "step", "epoch", "lr", "loss", "sim_pos", "sim_neg", "grad_norm", "seconds"
    ]  # fmt: skip
    losses = [float(r["loss"]) for r in rows]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.75 * first, losses
    # The positives pull away from the negatives.
    gap0 = float(rows[0]["sim_pos"]) - float(rows[0]["sim_neg"])
    gap1 = float(rows[-1]["sim_pos"]) - float(rows[-1]["sim_neg"])
    assert gap1 > gap0 + 0.1, (gap0, gap1)
    # 32 items / 8 per step = 4 steps an epoch.
    assert [int(r["epoch"]) for r in rows] == [e for e in range(6) for _ in range(4)]
    # The task's evaluation ran after the last step.
    ev = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ev] == [24] and 0.0 <= ev[0]["accuracy"] <= 1.0

    init = load_file(str(tiny / "model.safetensors"))
    tuned = load_file(str(out / "model.safetensors"))
    # The 4-frame temporal embedding was resized to the task's 2 frames.
    assert init["video_model.temporal_embed"].shape[1] == 4
    assert tuned["video_model.temporal_embed"].shape[1] == 2
    fusion = [
        k for k in init if k.startswith(("cross_modal", "itm_score", "mlm_score")) or "i2t" in k
    ]
    assert fusion
    for k in fusion:
        assert torch.equal(init[k], tuned[k]), k
    moved = [k for k in ("txt_proj.weight", "vid_proj.weight") if k in init] or [
        k for k in init if k.startswith(("txt_proj", "vid_proj"))
    ]
    assert moved and all(not torch.equal(init[k], tuned[k]) for k in moved)


def test_stopped_run_resumes_bit_identically(tiny, tmp_path):
    # The tiny model's text dropout (0.1, stored in its checkpoint) is on: the resumed run
    # must continue the RNG streams as well.
    full = finetune_config_from_dict(_cfg(tiny, tmp_path / "full", eval={"enabled": False}))
    cut = finetune_config_from_dict(_cfg(tiny, tmp_path / "cut", eval={"enabled": False}))
    finetune(full, ColourTask(), device="cpu")
    stopped = finetune(cut, ColourTask(), device="cpu", stop_after=3)
    assert stopped.steps == 3 and not (tmp_path / "cut" / "model.safetensors").exists()
    state = json.loads((tmp_path / "cut" / "checkpoints" / "last.json").read_text())
    assert state["step"] == 2
    finetune(cut, ColourTask(), device="cpu", resume=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [r["loss"] for r in _metrics(tmp_path / "full")]
    lb = [r["loss"] for r in _metrics(tmp_path / "cut")]
    assert len(la) == 6 and la == lb


def _env() -> dict:
    env = dict(os.environ)
    pkg_root = str(Path(egovlpv2_rt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cfg: dict, path: Path, nproc: int) -> None:
    path.write_text(json.dumps(cfg))
    worker = str(HERE / "_finetune_task.py")
    cmd = (
        [sys.executable, worker, str(path)]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            worker,
            str(path),
        ]
    )
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr[-4000:]}"


# Three steps of a global batch of 16 (2 steps an epoch: the run crosses an epoch). Longer runs
# drift apart in block 0's time attention: its gradient is ~1e-10, far below Adam's eps, where
# the update is lr / eps = 1e5 times the gradient, rounding noise included (1e-14 after one
# step, 3e-9 after three, 5e-3 after four; the losses still agree to 5e-10).
@pytest.mark.parametrize("loss", [{"name": "infonce", "temperature": 0.2}, {"name": "max_margin"}])
def test_two_process_gloo_equals_one_process(tiny_no_dropout, tmp_path, loss):
    tiny = tiny_no_dropout
    # float64, as the pre-training test: Adam's division by the gradient RMS magnifies
    # float32 rounding differences between one batch of 8 and two of 4.
    common = {
        "precision": "float64",
        "max_steps": 3,
        "global_batch_size": 16,
        "num_threads": 1,
        "deterministic": True,
        "loss": loss,
    }
    _run(_cfg(tiny, tmp_path / "one", **common), tmp_path / "one.json", 1)
    _run(_cfg(tiny, tmp_path / "two", **common), tmp_path / "two.json", 2)
    l1 = [float(r["loss"]) for r in _metrics(tmp_path / "one")]
    l2 = [float(r["loss"]) for r in _metrics(tmp_path / "two")]
    assert len(l1) == len(l2) == 3
    assert [int(r["epoch"]) for r in _metrics(tmp_path / "two")] == [0, 0, 1]
    for a, b in zip(l1, l2, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    lr = 1e-3
    worst = max(
        (
            (w2[k] - w1[k]).abs().max().item() / max(w1[k].abs().max().item(), lr),
            k,
        )
        for k in w1
        if w1[k].is_floating_point()
    )
    assert worst[0] <= 1e-5, worst
    e1 = json.loads((tmp_path / "one" / "eval.jsonl").read_text())
    e2 = json.loads((tmp_path / "two" / "eval.jsonl").read_text())
    assert e1 == e2


def _max_margin_f64(sim, w, m):
    n = len(sim)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += max(0.0, w[i] * m - (sim[i][i] - sim[i][j]))
                total += max(0.0, w[i] * m - (sim[i][i] - sim[j][i]))
    return total / (2 * n * (n - 1))


def _infonce_f64(sim, t):
    import math

    n = len(sim)
    rows = -sum(
        sim[i][i] / t - math.log(sum(math.exp(sim[i][j] / t) for j in range(n))) for i in range(n)
    )
    cols = -sum(
        sim[j][j] / t - math.log(sum(math.exp(sim[i][j] / t) for i in range(n))) for j in range(n)
    )
    return rows / n + cols / n


def test_pair_losses_match_float64_transcriptions():
    gen = torch.Generator().manual_seed(3)
    sim = torch.rand(6, 6, generator=gen, dtype=torch.float64) * 2 - 1
    w = torch.rand(6, generator=gen, dtype=torch.float64)
    mm = pair_loss(FinetuneLoss("max_margin", margin=0.2))(sim, w)
    assert abs(mm.item() - _max_margin_f64(sim.tolist(), w.tolist(), 0.2)) <= 1e-12
    assert mm.item() > 0
    nce = pair_loss(FinetuneLoss("infonce", temperature=0.05))(sim, w)
    assert abs(nce.item() - _infonce_f64(sim.tolist(), 0.05)) <= 1e-10


def test_config_errors_name_file_key_and_value(tiny, tmp_path):
    def bad(mutate, pattern):
        cfg = _cfg(tiny, tmp_path / "x")
        mutate(cfg)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match=pattern):
            load_finetune_config(path)

    bad(lambda c: c["optim"].update(lr_mult=2.0), r"bad\.json: unknown key 'optim\.lr_mult'")
    bad(
        lambda c: c["data"].update(num_frames="16"),
        r"bad\.json: data\.num_frames: expected an integer, got '16'",
    )
    bad(
        lambda c: c["loss"].update(name="hinge"),
        r"bad\.json: loss\.name: expected one of \['max_margin', 'infonce'\], got 'hinge'",
    )
    bad(
        lambda c: c.update(epochs=3),
        r"bad\.json: epochs: exactly one of max_steps \(6\) and epochs must be > 0, got 3",
    )
    bad(lambda c: c["model"].pop("init_checkpoint"), r"model\.init_checkpoint: is required")
    bad(
        lambda c: c["optim"].update(betas=[0.9]),
        r"optim\.betas: expected a list of 2 numbers, got \[0\.9\]",
    )


def test_shipped_recipes_are_the_originals():
    ek = load_finetune_config(RECIPES / "ek100_mir.yaml")
    assert (ek.task, ek.loss.name, ek.loss.margin) == ("ek100_mir", "max_margin", 0.2)
    assert (ek.optim.lr, ek.optim.weight_decay, ek.optim.betas, ek.optim.eps) == (
        2e-4,
        0.01,
        (0.9, 0.98),
        1e-8,
    )
    assert (ek.optim.lr_mult_head, ek.optim.lr_mult_cross_modal) == (1.0, 1.0)
    assert (ek.epochs, ek.global_batch_size, ek.data.num_frames) == (100, 128, 16)
    assert ek.data.max_text_length == 30 and ek.model.preset == "base-smallproj"
    ch = load_finetune_config(RECIPES / "charades_ego.yaml")
    assert (ch.task, ch.loss.name, ch.loss.temperature) == ("charades_ego", "infonce", 0.05)
    assert (ch.optim.lr, ch.optim.weight_decay) == (1.5e-5, 0.01)
    assert (ch.epochs, ch.global_batch_size, ch.data.num_frames) == (20, 128, 32)
    assert ch.data.max_text_length == 15
    # 10% warm-up over epochs x steps per epoch (67217 EK-100 training clips).
    steps = ek.total_steps(67217)
    assert steps == 100 * (67217 // 128) == 52500
    assert ek.optim.build(steps).warmup_steps == 5250


def test_warmup_cosine_schedule_of_the_recipe():
    # get_cosine_schedule_with_warmup(0.1 * 100, 100): 0 at the start, the peak at 10, half at
    # 55, 0 at the end.
    model = torch.nn.Linear(2, 2)
    cfg: OptimConfig = load_finetune_config(RECIPES / "ek100_mir.yaml").optim.build(100)
    sched = build_scheduler(build_optimizer(model, cfg), cfg, 100)
    f = sched.lr_lambdas[0]
    assert [f(0), f(5), f(10), f(55), f(100)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_captions_fit_the_tiny_tokenizer(tiny):
    from egovlpv2_rt.tokenizer import RobertaTokenizer

    tok = RobertaTokenizer.from_tokenizer_json(tiny / "tokenizer.json")
    ids = tok(list(CAPTIONS), max_length=24, padding="max_length")["attention_mask"]
    # No caption is cut at the tests' data.max_text_length (24): they are 17 to 19 tokens.
    assert ids.sum(1).tolist() == [18, 19, 17, 17]
