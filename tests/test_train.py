"""Trainer: 2-process gloo torchrun equals 1 process; SIGKILL + --resume equals an
uninterrupted run; config errors. Tiny model, tiny synthetic data, a few steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from egovlpv2_rt.data.egoclip import read_egoclip
from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset
from egovlpv2_rt.train.bpe import train_bpe_tokenizer
from egovlpv2_rt.train.config import ConfigError, load_train_config
from egovlpv2_rt.train.launch import pretrain_command
from egovlpv2_rt.train.losses import LossWeights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, seed=11, cfg=SynthConfig(num_clips=40, size=32, num_mcq=10))
    texts = [r.clip_text for r in read_egoclip(root / "egoclip.csv")]
    train_bpe_tokenizer(texts, 300, root / "tokenizer.json")
    return root


def _config(dataset: Path, out: Path, **top) -> dict:
    from egovlpv2_rt.tokenizer import RobertaTokenizer

    vocab = RobertaTokenizer.from_tokenizer_json(dataset / "tokenizer.json").vocab_size
    dropout = top.pop("dropout", 0.0)
    cfg = {
        "model": {
            "preset": "tiny",
            "overrides": {
                "text": {
                    "vocab_size": vocab,
                    "hidden_dropout_prob": dropout,
                    "attention_probs_dropout_prob": dropout,
                },
                "fusion": {"vocab_size": vocab},
            },
        },
        "data": {
            "root": str(dataset),
            "tokenizer": str(dataset / "tokenizer.json"),
            "image_size": 32,
            "sampling": "rand",
            "neg_seconds": 60.0,
            "max_text_length": 16,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "out_dir": str(out),
        "global_batch_size": 8,
        "max_steps": 3,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
        "deterministic": True,
        "num_threads": 1,
    }
    cfg.update(top)
    return cfg


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def _env() -> dict:
    import egovlpv2_rt

    # The training subprocesses import the package this process imported (installed, with its
    # compiled extension, or the source tree), not whatever REPO/python holds.
    env = dict(os.environ)
    pkg_root = str(Path(egovlpv2_rt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_cmd(cfg_path: Path, nproc: int = 1, *extra: str) -> list[str]:
    return pretrain_command(cfg_path, nproc, "cpu", *extra)


def _run(cmd: list[str], timeout: float = 240) -> None:
    res = subprocess.run(
        cmd, check=False, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr[-4000:]}"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def _losses(out: Path) -> list[float]:
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[3]) for r in rows]


def test_two_process_gloo_equals_one_process(dataset, tmp_path):
    # float64: AdamW divides each gradient by its running RMS, so a parameter whose true
    # gradient is 0 (e.g. an attention key bias, to which softmax is invariant) moves by
    # lr * rounding_noise / eps. In float32 that noise differs between one batch of 8 and two
    # batches of 4 and reaches ~1e-5 absolute; in float64 it is ~1e-14. The losses of a float32
    # run agree to ~1e-7 as well, but only float64 tests the weights strictly.
    one = _write(_config(dataset, tmp_path / "one", precision="float64"), tmp_path / "one.json")
    two = _write(_config(dataset, tmp_path / "two", precision="float64"), tmp_path / "two.json")
    _run(_train_cmd(one, 1))
    _run(_train_cmd(two, 2))
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == len(l2) == 3
    assert all(torch.isfinite(torch.tensor(l1)))
    for a, b in zip(l1, l2, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    # Per tensor err = max|two - one| / max(max|one|, lr): relative to the tensor, but never
    # finer than one Adam step, the scale at which a zero-gradient parameter moves.
    lr = 1e-3
    worst = max(
        (
            (w2[k].double() - w1[k].double()).abs().max().item()
            / max(w1[k].double().abs().max().item(), lr),
            k,
        )
        for k in w1
        if w1[k].is_floating_point()
    )
    assert worst[0] <= 1e-5, worst
    # The weights moved: the comparison is not between two untouched initialisations.
    init_moved = max(
        _rel_err(w1[k], torch.zeros_like(w1[k]))
        for k in ("video_model.blocks.6.attn.alpha_i2t", "text_model.encoder.layer.6.alpha_t2i")
    )
    assert init_moved > 0


def _metrics(out: Path) -> list[dict[str, float]]:
    import csv

    with (out / "metrics.csv").open(newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_loss_start_steps_stage_mlm_and_vtm(dataset, tmp_path):
    # Step 0 EgoNCE alone, step 1 EgoNCE + MLM, steps 2-3 EgoNCE + MLM + VTM; 2 processes (DDP
    # must accept the parameters that get no gradient in the early steps) against 1 process,
    # float64.
    kw = {
        "precision": "float64",
        "max_steps": 4,
        "loss": {"preset": "original", "mlm_start_step": 1, "vtm_start_step": 2},
    }
    one = _write(_config(dataset, tmp_path / "one", **kw), tmp_path / "one.json")
    two = _write(_config(dataset, tmp_path / "two", **kw), tmp_path / "two.json")
    _run(_train_cmd(one, 1))
    _run(_train_cmd(two, 2))
    rows = _metrics(tmp_path / "one")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    nan = [[r[k] != r[k] for k in ("mlm", "vtm")] for r in rows]  # NaN: term not computed
    assert nan == [[True, True], [False, True], [False, False], [False, False]]
    assert rows[0]["loss"] == rows[0]["egonce"]
    assert abs(rows[1]["loss"] - rows[1]["egonce"] - rows[1]["mlm"]) <= 1e-12 * rows[1]["loss"]
    for r in rows[2:]:
        parts = r["egonce"] + r["mlm"] + 2 * r["vtm"]
        assert abs(r["loss"] - parts) <= 1e-12 * abs(parts)
    for a, b in zip(rows, _metrics(tmp_path / "two"), strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    # As in the test above: relative to the tensor, but never finer than one Adam step (lr).
    worst = max(
        ((w2[k] - w1[k]).abs().max().item() / max(w1[k].abs().max().item(), 1e-3), k)
        for k in w1
        if w1[k].is_floating_point()
    )
    assert worst[0] <= 1e-5, worst


def test_cpu_bf16_amp_trains_close_to_float32(dataset, tmp_path):
    # amp: bf16 on the CPU autocasts the Linears (the fused attention stays float32): the first
    # step, from the same weights and batch, matches float32 to bfloat16 accuracy.
    runs = {}
    for amp in ("off", "bf16"):
        cfg = _config(dataset, tmp_path / amp, amp=amp, max_steps=2)
        cfg["attention_impl"] = "fused"
        _run(_train_cmd(_write(cfg, tmp_path / f"{amp}.json"), 1))
        runs[amp] = _metrics(tmp_path / amp)
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e3 for r in runs["bf16"])
    first32, first16 = runs["off"][0], runs["bf16"][0]
    for k in ("egonce", "mlm", "vtm"):
        assert abs(first16[k] - first32[k]) <= 2e-2 * abs(first32[k]), k


def test_loss_start_steps_schedule():
    from egovlpv2_rt.train.distributed import DistInfo
    from egovlpv2_rt.train.objective import PretrainObjective

    obj = PretrainObjective(
        torch.nn.Linear(1, 1),
        LossWeights.original(),
        0.05,
        DistInfo(),
        seed=0,
        mlm_start_step=2,
        vtm_start_step=5,
    )
    got = [obj.weights_at(s) for s in (0, 1, 2, 4, 5, 100)]
    assert (
        got
        == [LossWeights(1.0, 0.0, 0.0)] * 2
        + [LossWeights(1.0, 1.0, 0.0)] * 2
        + [LossWeights(1.0, 1.0, 2.0)] * 2
    )
    none = PretrainObjective(
        torch.nn.Linear(1, 1),
        LossWeights(0.0, 1.0, 2.0),
        0.05,
        DistInfo(),
        seed=0,
        mlm_start_step=1,
        vtm_start_step=1,
    )
    with pytest.raises(ValueError, match="no loss"):
        none.weights_at(0)
    assert none.weights_at(1) == LossWeights(0.0, 1.0, 2.0)
    assert not obj.every_term_every_step and not none.every_term_every_step
    assert PretrainObjective(
        torch.nn.Linear(1, 1), LossWeights.original(), 0.05, DistInfo(), seed=0
    ).every_term_every_step
    # MLM from step 1 to step 3 (exclusive), VTM from step 2.
    stop = PretrainObjective(
        torch.nn.Linear(1, 1),
        LossWeights.original(),
        0.05,
        DistInfo(),
        seed=0,
        mlm_start_step=1,
        vtm_start_step=2,
        mlm_stop_step=3,
    )
    assert [stop.weights_at(s) for s in (0, 1, 2, 3, 50)] == [
        LossWeights(1.0, 0.0, 0.0),
        LossWeights(1.0, 1.0, 0.0),
        LossWeights(1.0, 1.0, 2.0),
        LossWeights(1.0, 0.0, 2.0),
        LossWeights(1.0, 0.0, 2.0),
    ]
    assert not stop.every_term_every_step
    gap = PretrainObjective(
        torch.nn.Linear(1, 1),
        LossWeights(0.0, 1.0, 2.0),
        0.05,
        DistInfo(),
        seed=0,
        mlm_stop_step=2,
        vtm_start_step=4,
    )
    with pytest.raises(ValueError, match=r"step 3 has no loss.*mlm_stop_step 2.*vtm_start_step"):
        gap.weights_at(3)


def test_sigkill_and_resume_matches_uninterrupted_run(dataset, tmp_path):
    steps = 8
    full = _write(
        _config(dataset, tmp_path / "full", max_steps=steps, dropout=0.1, checkpoint_every=2),
        tmp_path / "full.json",
    )
    _run(_train_cmd(full, 1))

    cut_out = tmp_path / "cut"
    cut = _write(
        _config(dataset, cut_out, max_steps=steps, dropout=0.1, checkpoint_every=2),
        tmp_path / "cut.json",
    )
    proc = subprocess.Popen(
        _train_cmd(cut, 1), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = cut_out / "checkpoints" / "last.json"
    log = cut_out / "metrics.csv"
    deadline = time.time() + 180
    # Kill after step 3 is logged: past the step-2 checkpoint, mid-epoch (10 steps per epoch).
    while time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 4 and ckpt.is_file():
            break
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("training did not reach step 3 in time")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads(ckpt.read_text())["step"]
    assert 2 <= saved < steps
    assert not (cut_out / "model.safetensors").exists()
    # What a kill inside a checkpoint write leaves: a temporary file, and a tensor file of a
    # later step whose last.json was never written. The resume removes both.
    stale = cut_out / "checkpoints" / ".last.json.k1ll3d.tmp"
    stale.write_text("{")
    orphan = cut_out / "checkpoints" / f"state-{saved + 1:08d}.safetensors"
    orphan.write_bytes(b"torn")

    _run(_train_cmd(cut, 1, "--resume"))
    assert sorted(p.name for p in (cut_out / "checkpoints").iterdir()) == [
        "last.json",
        f"state-{steps:08d}.safetensors",
    ]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(cut_out / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "full") == _losses(cut_out)


def test_config_unknown_key_names_file_and_key(dataset, tmp_path):
    cfg = _config(dataset, tmp_path / "x")
    cfg["optim"]["lr_mult_heads"] = 4.0
    path = _write(cfg, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match=r"bad\.json.*'optim\.lr_mult_heads'"):
        load_train_config(path)
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text("max_steps: 3\nglobal_batch: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'global_batch'"):
        load_train_config(yaml_path)
    cfg = _config(dataset, tmp_path / "x")
    cfg["max_steps"] = "ten"
    with pytest.raises(ConfigError, match="max_steps: expected an integer"):
        load_train_config(_write(cfg, tmp_path / "bad2.json"))
    cfg = _config(dataset, tmp_path / "x")
    cfg["model"]["overrides"]["video"] = {"patch_sizes": 8}
    with pytest.raises(ConfigError, match="patch_sizes"):
        load_train_config(_write(cfg, tmp_path / "bad3.json"))
    cfg = _config(dataset, tmp_path / "x")
    cfg["loss"] = {"vtm_start_step": -1}
    with pytest.raises(ConfigError, match=r"bad4\.json.*loss\.vtm_start_step: must be >= 0"):
        load_train_config(_write(cfg, tmp_path / "bad4.json"))
    cfg["loss"] = {"mlm_start_step": 5, "mlm_stop_step": 5}
    with pytest.raises(
        ConfigError,
        match=r"bad5\.json.*loss\.mlm_stop_step: must be 0 \(never\) "
        r"or > loss\.mlm_start_step \(5\)",
    ):
        load_train_config(_write(cfg, tmp_path / "bad5.json"))


def test_shipped_example_config_is_the_default_model_recipe():
    from egovlpv2_rt.train.default_model import RECIPE, default_train_config

    path = REPO / "python" / "egovlpv2_rt" / "configs" / "pretrain_synthetic.yaml"
    cfg = load_train_config(path)
    mc = cfg.model.build()
    assert mc.text.vocab_size == mc.fusion.vocab_size == 341
    assert mc.video.depth == 12 and mc.fusion.num_fuse_block == 6
    assert cfg.loss.weights() == LossWeights.original()
    recipe = default_train_config(
        Path("data/synth"),
        Path("data/synth/tokenizer.json"),
        Path("runs/synthetic"),
        341,
        steps=RECIPE.steps,
        batch=RECIPE.batch,
        lr=RECIPE.lr,
        width=64,
        heads=4,
        eval_dir=None,
        vtm_start_step=RECIPE.vtm_start,
        mlm_stop_step=RECIPE.mlm_stop,
        time_reversal=RECIPE.time_reversal,
    )
    recipe["num_threads"] = 1
    from egovlpv2_rt.train.config import train_config_from_dict

    assert cfg.to_dict() == train_config_from_dict(recipe, "recipe").to_dict()


def test_param_groups_and_schedule_follow_the_original():
    from egovlpv2_rt.config import preset
    from egovlpv2_rt.modeling.model import EgoVLPv2
    from egovlpv2_rt.train.config import OptimConfig
    from egovlpv2_rt.train.optim import build_optimizer, build_scheduler

    model = EgoVLPv2(preset("tiny"))
    cfg = OptimConfig(lr=1e-4, weight_decay=0.05, warmup_steps=10, min_lr_ratio=0.0)
    opt = build_optimizer(model, cfg)
    where = {n: g for g in opt.param_groups for n in g["names"]}
    assert len(where) == sum(1 for _ in model.parameters())
    expect = {
        "video_model.blocks.0.attn.qkv.weight": (1e-4, 0.05),
        "video_model.blocks.0.norm1.weight": (1e-4, 0.0),
        "text_model.encoder.layer.0.attention.output.LayerNorm.weight": (1e-4, 0.0),
        "video_model.blocks.0.norm3.weight": (1e-4, 0.05),  # not in the original's no-decay list
        "vid_proj.0.weight": (4e-4, 0.05),
        "mlm_score.bias": (4e-4, 0.0),
        "itm_score.fc.weight": (4e-4, 0.05),
        "video_model.blocks.6.attn.alpha_i2t": (4e-4, 0.05),
        "text_model.encoder.layer.6.alpha_t2i": (4e-4, 0.05),
        "cross_modal_text_transform.bias": (4e-4, 0.0),
        "text_model.encoder.layer.6.crossattention_t2i.self.query.weight": (4e-4, 0.05),
        "cls_token": (1e-4, 0.05),
    }
    for name, (lr, wd) in expect.items():
        assert (where[name]["lr"], where[name]["weight_decay"]) == pytest.approx((lr, wd)), name
    sched = build_scheduler(opt, cfg, total_steps=110)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5e-4) and lrs[10] == pytest.approx(1e-4)
    assert lrs[60] == pytest.approx(0.5e-4)  # half way through the cosine
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)


def test_scale_initialisation_keeps_special_inits():
    from egovlpv2_rt.config import preset
    from egovlpv2_rt.modeling.model import EgoVLPv2
    from egovlpv2_rt.train.trainer import scale_initialisation

    torch.manual_seed(0)
    ref = EgoVLPv2(preset("tiny"))
    torch.manual_seed(0)
    model = EgoVLPv2(preset("tiny"))
    scale_initialisation(model, 3.0)
    a, b = ref.state_dict(), model.state_dict()
    assert torch.equal(
        b["video_model.blocks.0.attn.qkv.weight"], 3.0 * a["video_model.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(
        b["text_model.embeddings.word_embeddings.weight"],
        3.0 * a["text_model.embeddings.word_embeddings.weight"],
    )
    assert b["text_model.embeddings.word_embeddings.weight"][1].abs().max() == 0  # padding row
    for key in (
        "video_model.blocks.0.timeattn.proj.weight",  # identity-style init, kept
        "video_model.blocks.0.attn.qkv.bias",
        "video_model.blocks.0.norm1.weight",
        "video_model.blocks.6.attn.alpha_i2t",
    ):
        assert torch.equal(a[key], b[key]), key
    assert b["video_model.blocks.0.timeattn.qkv.weight"].abs().max() == 0


def test_default_model_reuses_only_a_matching_synthetic_split(tmp_path):
    # The recipe's --work folder may hold a dataset from an earlier run; training on one of
    # another size would silently change the experiment.
    from egovlpv2_rt.data.synthetic import SynthConfig
    from egovlpv2_rt.train.default_model import synth_split

    root = tmp_path / "train"
    cfg = SynthConfig(num_clips=40, size=32, num_mcq=2)
    synth_split(root, 3, cfg)
    made = (root / "egoclip.csv").stat().st_mtime_ns
    synth_split(root, 3, cfg)  # same settings: reused as is
    assert (root / "egoclip.csv").stat().st_mtime_ns == made
    assert len(read_egoclip(root / "egoclip.csv")) == 40
    with pytest.raises(
        ValueError,
        match=r"train already holds a synthetic dataset made with "
        r"other settings \(seed: 3 there, 4 asked; num_clips: "
        r"40 there, 48 asked\)",
    ):
        synth_split(root, 4, SynthConfig(num_clips=48, size=32, num_mcq=2))
    (root / "synth.json").unlink()  # a folder from before synth.json: the clip count is checked
    with pytest.raises(ValueError, match=r"40 clips there, 48 asked"):
        synth_split(root, 3, SynthConfig(num_clips=48, size=32, num_mcq=2))
    synth_split(root, 3, cfg)


def test_default_model_second_phase_starts_from_the_first(tmp_path):
    # The recipe's two phases on tiny sizes: a first-phase run, then a second phase started
    # from its folder (--phase1-dir), as the shipped model was made; the record adds the
    # phases' steps and training times, and the second phase's config refuses nothing.
    from egovlpv2_rt.train.config import train_config_from_dict
    from egovlpv2_rt.train.default_model import main

    tiny = ["--train-clips", "40", "--steps", "2", "--batch", "4", "--width", "16"]
    tiny += ["--heads", "2", "--nproc", "1", "--eval-questions", "10", "--scene-clips", "40"]
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert (
        main([*tiny, "--work", str(tmp_path / "w1"), "--out", str(out1), "--scene-steps", "0"]) == 0
    )
    rec1 = json.loads((out1 / "results.json").read_text())
    assert rec1["phase2"] is None and rec1["steps"] == 2
    assert rec1["seconds"]["train"] == rec1["phase1"]["seconds_train"]
    assert not (out1 / "train_config_scenes.json").exists()
    work2 = tmp_path / "w2"
    args2 = [*tiny, "--work", str(work2), "--out", str(out2), "--scene-steps", "3"]
    args2 += ["--scene-lr", "1e-2", "--scene-warmup", "1", "--scene-object-negatives", "0.5"]
    args2 += ["--scene-reversal-share", "0.75"]
    assert main([*args2, "--phase1-dir", str(out1)]) == 0
    rec2 = json.loads((out2 / "results.json").read_text())
    assert rec2["phase1"]["seconds_train"] == rec1["seconds"]["train"]
    assert rec2["phase1"]["from"] == str(out1) and rec2["phase2"]["steps"] == 3
    assert rec2["steps"] == 5 and rec2["scene_seed"] == 3
    assert rec2["seconds"]["train"] == pytest.approx(
        rec1["seconds"]["train"] + rec2["phase2"]["seconds_train"], abs=0.11
    )
    assert not (work2 / "train").exists()  # the first phase was not run again
    assert (out2 / "tokenizer.json").read_bytes() == (out1 / "tokenizer.json").read_bytes()
    assert json.loads((out2 / "train_config.json").read_text()) == json.loads(
        (out1 / "train_config.json").read_text()
    )
    scene = json.loads((out2 / "train_config_scenes.json").read_text())
    assert scene["model"]["init_checkpoint"] == str((out1 / "model.safetensors").resolve())
    cfg = train_config_from_dict(scene, "scenes")
    assert cfg.init_scale == 1.0 and cfg.max_steps == 3 and cfg.eval.every_steps == 0
    assert (cfg.loss.vtm_start_step, cfg.loss.mlm_stop_step) == (0, 0)
    assert cfg.optim.lr == 1e-2 and cfg.optim.warmup_steps == 1
    assert cfg.loss.object_negatives == 0.5 and rec2["phase2"]["object_negatives"] == 0.5
    assert cfg.loss.time_reversal_share == 0.75 and rec2["phase2"]["reversal_share"] == 0.75
    first_loss = json.loads((out1 / "train_config.json").read_text())["loss"]
    assert "object_negatives" not in first_loss and "time_reversal_share" not in first_loss
    still = [r for r in read_egoclip(work2 / "scenes" / "egoclip.csv") if not r.tag_verb]
    assert still and all(r.clip_text.startswith("the ") for r in still)
    a, b = load_file(str(out1 / "model.safetensors")), load_file(str(out2 / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) > 1e-4
    # A two-phase folder is not a first phase; a folder without a record is refused by name.
    with pytest.raises(ValueError, match=r"results\.json records a two-phase model"):
        main([*args2, "--phase1-dir", str(out2)])
    with pytest.raises(FileNotFoundError, match=r"--phase1-dir .*empty: no model\.safetensors, "):
        main([*args2, "--phase1-dir", str(tmp_path / "empty")])
    # A one-phase model installed over a two-phase one leaves no second-phase config behind.
    assert (
        main([*tiny, "--work", str(tmp_path / "w1"), "--out", str(out2), "--scene-steps", "0"]) == 0
    )
    assert not (out2 / "train_config_scenes.json").exists()
    assert json.loads((out2 / "results.json").read_text())["phase2"] is None


def _cli_train(cfg_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "egovlpv2_rt.cli", "train", "--config", str(cfg_path)]
    return subprocess.run(
        [*cmd, "--device", "cpu", *extra],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_second_trainer_on_the_same_folder_is_refused(dataset, tmp_path):
    from egovlpv2_rt.train.trainer import hold_run_folder

    out = tmp_path / "run"
    cfg = _write(_config(dataset, out, max_steps=1), tmp_path / "run.json")
    with hold_run_folder(out):  # what a running trainer holds
        res = _cli_train(cfg)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert f"{out / 'training'}: another process is writing this training run" in res.stderr
    assert not (out / "config.json").exists()
    res = _cli_train(cfg)  # the lock went with its holder
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "model.safetensors").is_file()


def _to_legacy_state(sidecar: Path) -> Path:
    """Rewrite a run's state as egovlpv2-rt 0.1 wrote it: one torch pickle, numpy's and
    python's RNG states as tuples."""
    import numpy as np

    from egovlpv2_rt.train.state import load_training_state

    state = load_training_state(sidecar)
    state["rng"] = [
        {
            "torch": r["torch"],
            "numpy": (
                r["numpy"]["bit_generator"],
                np.asarray(r["numpy"]["key"], dtype=np.uint32),
                r["numpy"]["pos"],
                r["numpy"]["has_gauss"],
                r["numpy"]["cached_gaussian"],
            ),
            "python": (
                r["python"]["version"],
                tuple(r["python"]["internal"]),
                r["python"]["gauss_next"],
            ),
        }
        for r in state["rng"]
    ]
    legacy = sidecar.with_name("last.pt")
    torch.save(state, legacy)
    tensors = sidecar.with_name(json.loads(sidecar.read_text())["tensors"]["file"])
    sidecar.unlink()
    tensors.unlink()
    return legacy


def test_resume_from_a_legacy_state_matches_and_cleans_a_killed_runs_litter(dataset, tmp_path):
    steps = 3
    full = _write(
        _config(dataset, tmp_path / "full", max_steps=steps, dropout=0.1), tmp_path / "full.json"
    )
    _run(_train_cmd(full, 1))
    cut_out = tmp_path / "cut"
    cut = _write(_config(dataset, cut_out, max_steps=steps, dropout=0.1), tmp_path / "cut.json")
    _run(_train_cmd(cut, 1, "--stop-after", "2"))
    ckpt = cut_out / "checkpoints"
    assert json.loads((ckpt / "last.json").read_text())["step"] == 2
    _to_legacy_state(ckpt / "last.json")
    # Temporaries a SIGKILL leaves (0.1 named them .last.pt.XXXX.tmp) and an orphan tensor file.
    litter = [
        ckpt / ".last.pt.k1ll3d.tmp",
        ckpt / ".last.json.k1ll3d.tmp",
        ckpt / ".state-00000004.safetensors.k1ll3d.tmp",
        ckpt / "state-00000004.safetensors",
        cut_out / ".model.safetensors.k1ll3d.tmp",
        cut_out / ".metrics.csv.k1ll3d.tmp",
    ]
    for path in litter:
        path.write_bytes(b"partial")

    _run(_train_cmd(cut, 1, "--resume"))
    assert [p.name for p in litter if p.exists()] == []
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "last.json",
        "last.pt",
        f"state-{steps:08d}.safetensors",
    ]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(cut_out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "full") == _losses(cut_out)


def test_resume_of_a_continued_run_does_not_need_its_init_checkpoint(dataset, tmp_path):
    # A run started from model.init_checkpoint resumes from its own state: the init file is
    # not read again (here it is gone), and the result equals the uninterrupted run.
    _run(_train_cmd(_write(_config(dataset, tmp_path / "first"), tmp_path / "first.json")))
    init = tmp_path / "init.safetensors"
    shutil.copy(tmp_path / "first" / "model.safetensors", init)

    def cfg(out: str) -> Path:
        c = _config(dataset, tmp_path / out, max_steps=3)
        c["model"]["init_checkpoint"] = str(init)
        return _write(c, tmp_path / f"{out}.json")

    _run(_train_cmd(cfg("full"), 1))
    _run(_train_cmd(cfg("cut"), 1, "--stop-after", "2"))
    init.unlink()
    _run(_train_cmd(cfg("cut"), 1, "--resume"))
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")


def _tiny_model_and_batch(b: int, length: int = 8):
    """A float64 tiny model in eval mode and a random batch of ``b`` clips and captions, with
    the generator that drew them (for more draws)."""
    from egovlpv2_rt.config import preset
    from egovlpv2_rt.modeling import EgoVLPv2

    torch.manual_seed(0)
    model = EgoVLPv2(preset("tiny")).double().eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    shape = (b, cfg.video.num_frames, 3, cfg.video.img_size, cfg.video.img_size)
    video = torch.randn(*shape, generator=gen, dtype=torch.float64)
    ids = torch.randint(3, cfg.text.vocab_size, (b, length), generator=gen)
    return model, video, ids, torch.ones_like(ids), gen


def test_time_reversal_objective_matches_hand_computation():
    # EgoNCE with each caption's reversed clip as one more negative, and VTM with half of its
    # negatives replaced by reversed clips, against the same quantities computed by hand from
    # the model's own encoders (float64, one process).
    from egovlpv2_rt.modeling.model import sim_matrix
    from egovlpv2_rt.train.distributed import DistInfo
    from egovlpv2_rt.train.losses import egonce_loss, sample_vtm_pairs, with_time_reversal
    from egovlpv2_rt.train.objective import GlobalBatch, PretrainObjective

    b = 6
    model, video, ids, am, gen = _tiny_model_and_batch(b)
    mask_v = (torch.rand(b, b, generator=gen) > 0.7).double()
    mask_v.fill_diagonal_(1.0)
    # Clip 2 has no verb tag (a still clip): played backwards it is itself, so it gets no
    # reversal negative in either term.
    mask_v[2, :] = 0.0
    mask_v[:, 2] = 0.0
    mask_n = (torch.rand(b, b, generator=gen) > 0.5).double()
    batch = GlobalBatch(video, ids, am, ids, torch.full_like(ids, -100), mask_v, mask_n, 0, 7)
    obj = PretrainObjective(
        model, LossWeights(1.0, 0.0, 2.0), 0.05, DistInfo(), seed=5, time_reversal=True
    )
    with torch.no_grad():
        got = obj(batch)
        t = model.encode_text(ids, am)
        sim = sim_matrix(t, model.encode_video(video))
        rev = sim_matrix(t, model.encode_video(video.flip(1))).diagonal().clone()
        rev[2] = float("-inf")
        want, pos = egonce_loss(sim, mask_v, mask_n, 0.05, reversed_sim=rev)
        draw = torch.Generator().manual_seed(5 * 1_000_003 + 7)
        reversible = torch.tensor([True, True, False, True, True, True])
        pairs = with_time_reversal(sample_vtm_pairs(sim, pos, 0.05, draw), draw, reversible)
        assert pairs.reversed is not None and pairs.reversed.any()
        assert not pairs.reversed[pairs.text_index == 2].any()
        pv = video[pairs.video_index]
        pv[pairs.reversed] = pv[pairs.reversed].flip(1)
        logits = model.vtm_logits(pv, ids[pairs.text_index], am[pairs.text_index])
        vtm = torch.nn.functional.cross_entropy(logits, pairs.labels)
        plain = PretrainObjective(model, LossWeights(1.0, 0.0, 2.0), 0.05, DistInfo(), seed=5)(
            batch
        )
    assert got.egonce is not None and got.vtm is not None and plain.egonce is not None
    assert abs(got.egonce.item() - want.item()) <= 1e-12 * abs(want.item())
    assert abs(got.vtm.item() - vtm.item()) <= 1e-12 * abs(vtm.item())
    assert got.egonce.item() > plain.egonce.item()  # one more negative per caption


def test_object_negatives_objective_matches_hand_computation():
    # VTM with loss.object_negatives (and a quarter of the negatives time-reversed): the pairs
    # are the plain draw, then the time reversals, then the object-negative redraw, all from
    # the step's generator; the loss is the model's cross-entropy on exactly those pairs
    # (float64, one process). A batch without the noun tags is refused.
    from egovlpv2_rt.modeling.model import sim_matrix
    from egovlpv2_rt.train.distributed import DistInfo
    from egovlpv2_rt.train.losses import (
        egonce_loss,
        sample_vtm_pairs,
        with_object_negatives,
        with_time_reversal,
    )
    from egovlpv2_rt.train.objective import GlobalBatch, PretrainObjective

    model, video, ids, am, _ = _tiny_model_and_batch(8)
    verbs = torch.tensor([0, 0, 1, 0, 1, 2, 0, 1])
    nouns = torch.tensor([0, 1, 0, 2, 3, 0, 0, 1])
    mask_v = (verbs[:, None] == verbs[None]).double()
    mask_n = (nouns[:, None] == nouns[None]).double()
    batch = GlobalBatch(video, ids, am, ids, torch.full_like(ids, -100), mask_v, mask_n, 0, 3)
    w = LossWeights(1.0, 0.0, 2.0)
    obj = PretrainObjective(
        model,
        w,
        0.05,
        DistInfo(),
        seed=5,
        time_reversal=True,
        object_negatives=1.0,
        time_reversal_share=0.25,
    )
    with torch.no_grad():
        got = obj(batch)
        sim = sim_matrix(model.encode_text(ids, am), model.encode_video(video))
        _, pos = egonce_loss(sim, mask_v, mask_n, 0.05)
        draw = torch.Generator().manual_seed(5 * 1_000_003 + 3)
        pairs = with_time_reversal(sample_vtm_pairs(sim, pos, 0.05, draw), draw, share=0.25)
        pairs = with_object_negatives(pairs, sim, mask_v, mask_n, 1.0, 0.05, draw)
        assert pairs.reversed is not None
        neg = (pairs.labels == 0) & ~pairs.reversed
        assert neg.any()
        # every such negative shares a verb and no noun with its pair (all slots have one here)
        assert (mask_v[pairs.text_index, pairs.video_index][neg] == 1).all()
        assert (mask_n[pairs.text_index, pairs.video_index][neg] == 0).all()
        pv = video[pairs.video_index]
        pv[pairs.reversed] = pv[pairs.reversed].flip(1)
        logits = model.vtm_logits(pv, ids[pairs.text_index], am[pairs.text_index])
        vtm = torch.nn.functional.cross_entropy(logits, pairs.labels)
        plain = PretrainObjective(model, w, 0.05, DistInfo(), seed=5, time_reversal=True)(batch)
    assert got.vtm is not None and plain.vtm is not None
    assert abs(got.vtm.item() - vtm.item()) <= 1e-12 * abs(vtm.item())
    assert got.vtm.item() != plain.vtm.item()  # the redraw changed the pairs
    no_nouns = GlobalBatch(video, ids, am, ids, torch.full_like(ids, -100), mask_v, None, 0, 3)
    with pytest.raises(ValueError, match="object negatives need the verb and noun tag masks"):
        obj(no_nouns)
    with pytest.raises(ValueError, match=r"object_negatives must be in \[0, 1\], got -0.1"):
        PretrainObjective(model, w, 0.05, DistInfo(), seed=5, object_negatives=-0.1)
    with pytest.raises(ValueError, match=r"time_reversal_share must be in \[0, 1\], got 2"):
        PretrainObjective(model, w, 0.05, DistInfo(), seed=5, time_reversal_share=2)


def test_object_negatives_and_reversal_share_config_is_checked(dataset, tmp_path):
    cfg = _config(dataset, tmp_path / "x")
    cfg["loss"] = {"object_negatives": 1.5}
    with pytest.raises(
        ConfigError, match=r"on1\.json.*loss\.object_negatives: must be in \[0, 1\]"
    ):
        load_train_config(_write(cfg, tmp_path / "on1.json"))
    cfg["loss"] = {"object_negatives": 0.5, "use_noun": False}
    with pytest.raises(ConfigError, match=r"loss\.object_negatives: needs the verb and noun tags"):
        load_train_config(_write(cfg, tmp_path / "on2.json"))
    cfg["loss"] = {"object_negatives": 0.5, "vtm_negatives": "off"}
    with pytest.raises(ConfigError, match=r"loss\.object_negatives: needs VTM"):
        load_train_config(_write(cfg, tmp_path / "on3.json"))
    cfg["loss"] = {"time_reversal_share": -0.1}
    with pytest.raises(ConfigError, match=r"loss\.time_reversal_share: must be in \[0, 1\]"):
        load_train_config(_write(cfg, tmp_path / "on4.json"))
    cfg["loss"] = {"time_reversal_share": 0.75}
    with pytest.raises(ConfigError, match=r"time_reversal_share: .*needs loss\.time_reversal"):
        load_train_config(_write(cfg, tmp_path / "on5.json"))
    cfg["loss"] = {"object_negatives": 0.5, "time_reversal_share": 0.75, "time_reversal": True}
    ok = load_train_config(_write(cfg, tmp_path / "ok.json")).loss
    assert (ok.object_negatives, ok.time_reversal_share) == (0.5, 0.75)


def test_init_checkpoint_starts_a_run_from_its_weights(dataset, tmp_path):
    # Continued pre-training (model.init_checkpoint): before its first step the model holds the
    # file's weights exactly; a file that does not fit, a missing file, and a random-start
    # setting beside it are refused, each naming what is wrong.
    from safetensors.torch import save_file

    from egovlpv2_rt.checkpoint import CheckpointMismatchError
    from egovlpv2_rt.train.distributed import DistInfo
    from egovlpv2_rt.train.trainer import PretrainJob

    _run(_train_cmd(_write(_config(dataset, tmp_path / "first"), tmp_path / "first.json")))
    weights = tmp_path / "first" / "model.safetensors"
    want = load_file(str(weights))

    def job(init: Path | str, **top) -> PretrainJob:
        cfg = _config(dataset, tmp_path / "second", **top)
        cfg["model"]["init_checkpoint"] = str(init)
        return PretrainJob(
            load_train_config(_write(cfg, tmp_path / "second.json")), DistInfo(), torch.float32
        )

    got = job(weights).model.state_dict()
    assert set(want) <= set(got)
    assert max((got[k] - want[k]).abs().max().item() for k in want) == 0.0
    # A fresh model differs from it (the comparison above is not vacuous).
    fresh = PretrainJob(
        load_train_config(_write(_config(dataset, tmp_path / "x"), tmp_path / "x.json")),
        DistInfo(),
        torch.float32,
    ).model.state_dict()
    assert max((fresh[k] - want[k]).abs().max().item() for k in want) > 0.01

    bad = tmp_path / "bad.safetensors"
    key = "text_model.embeddings.word_embeddings.weight"
    save_file({**want, key: want[key][:-1].contiguous()}, str(bad))
    with pytest.raises(
        CheckpointMismatchError, match=rf"bad\.safetensors does not fit(.|\n)*{key}"
    ):
        job(bad)
    with pytest.raises(CheckpointMismatchError, match=r"default_model.model\.safetensors does"):
        job("default")  # the shipped model, another architecture than this tiny one
    with pytest.raises(FileNotFoundError, match=r"model\.init_checkpoint: no such file"):
        job(tmp_path / "none.safetensors")
    with pytest.raises(ConfigError, match=r"init_scale: must be 1 with model\.init_checkpoint"):
        job(weights, init_scale=2.0)
