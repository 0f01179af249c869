"""Parity with the original EgoVLPv2 on every golden set (see tests/golden/README.md).

For each set, attention implementation and dtype, the model is built from the set's hparams,
the golden weights are loaded through the public checkpoint loader, and every output and every
trace tensor of the four phases (video, text, itm, mlm) is compared with
``err = max|ours - ref| / max|ref|``: <= 1e-10 in float64, <= 1e-5 in float32.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import GOLDEN_DIR, GOLDEN_ENV, golden_sets_to_test
from safetensors.torch import load_file

from egovlpv2_rt.checkpoint import load_checkpoint
from egovlpv2_rt.config import ModelConfig
from egovlpv2_rt.modeling import EgoVLPv2, sim_matrix

pytestmark = pytest.mark.parity

DTYPES = {"f64": (torch.float64, 1e-10), "f32": (torch.float32, 1e-5)}
IMPLS = ("reference", "fused")
PHASE_OUTPUTS = {
    "video": ("video_embeds", "video_feat"),
    "text": ("text_embeds", "text_feat"),
    "itm": ("itm_logits", "itm_fused_video_cls", "itm_fused_text_cls"),
    "mlm": ("mlm_logits", "mlm_fused_text"),
}
INPUTS = {
    "video_f64",
    "video_f32",
    "input_ids",
    "attention_mask",
    "text_mlm_ids",
    "egonce_mask_v",
    "egonce_mask_n",
    "egonce_mask_bool",
}
# EgoNCE is a training loss; its parity test belongs to the training code.
DEFERRED = {"egonce_loss_f64", "egonce_loss_f32"}

_CACHE: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}


@pytest.fixture(scope="module")
def golden_io(golden):
    return load_file(str(golden.io))


def _err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    assert tuple(ours.shape) == tuple(ref.shape), f"shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    return ((ours.detach().double() - ref).abs().max() / ref.abs().max()).item()


def _run(golden, io, impl: str, suffix: str) -> dict[str, torch.Tensor]:
    """All of our tensors named as in the golden file, without the dtype suffix."""
    key = (golden.name, impl, suffix)
    if key in _CACHE:
        return _CACHE[key]
    hparams = json.loads(golden.config.read_text())["hparams"]
    model = EgoVLPv2(ModelConfig.from_golden_hparams(hparams), attention_impl=impl)
    load_checkpoint(model, golden.weights)
    model = model.to(DTYPES[suffix][0]).eval()
    video = io[f"video_{suffix}"]
    ids, mask, mlm_ids = io["input_ids"], io["attention_mask"], io["text_mlm_ids"]
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        v = model.forward_video(video, return_traces=True)
        t = model.forward_text(ids, mask, return_traces=True)
        itm = model.forward_fusion(video, ids, mask, task="itm", return_traces=True)
        mlm = model.forward_fusion(video, mlm_ids, mask, task="mlm", return_traces=True)
    for phase, result in (("video", v), ("text", t), ("itm", itm), ("mlm", mlm)):
        for name, tensor in result.traces.items():
            out[f"trace_{phase}_{name}"] = tensor
    out.update(
        video_embeds=v.embeds,
        video_feat=v.features,
        text_embeds=t.embeds,
        text_feat=t.features,
        itm_logits=itm.logits,
        itm_fused_video_cls=itm.video_cls,
        itm_fused_text_cls=itm.text_states[:, 0],
        mlm_logits=mlm.logits,
        mlm_fused_text=mlm.text_states,
        sim=sim_matrix(t.embeds, v.embeds),
    )
    _CACHE[key] = out
    return out


def _phase_names(io, phase: str, suffix: str) -> list[str]:
    traces = sorted(
        k[: -len(suffix) - 1]
        for k in io
        if k.startswith(f"trace_{phase}_") and k.endswith(f"_{suffix}")
    )
    return list(PHASE_OUTPUTS[phase]) + traces


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("suffix", list(DTYPES))
@pytest.mark.parametrize("phase", list(PHASE_OUTPUTS))
def test_phase_matches_golden(golden, golden_io, phase, suffix, impl):
    ours = _run(golden, golden_io, impl, suffix)
    tol = DTYPES[suffix][1]
    names = _phase_names(golden_io, phase, suffix)
    assert len(names) >= len(PHASE_OUTPUTS[phase]) + 13, f"traces of {phase} missing in golden"
    missing = [n for n in names if n not in ours]
    assert not missing, f"{phase}: our model produced no tensor for {missing}"
    errs = {n: _err(ours[n], golden_io[f"{n}_{suffix}"]) for n in names}
    bad = {n: e for n, e in errs.items() if not e <= tol}
    worst = max(errs, key=errs.get)
    assert not bad, (
        f"{golden.name}/{phase}/{suffix}/{impl}: err > {tol:g} for {bad}; "
        f"first diverging trace tells the layer"
    )
    assert errs[worst] <= tol


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("suffix", list(DTYPES))
def test_sim_matches_golden(golden, golden_io, suffix, impl):
    ours = _run(golden, golden_io, impl, suffix)
    err = _err(ours["sim"], golden_io[f"sim_{suffix}"])
    assert err <= DTYPES[suffix][1], f"sim err {err:.3e}"


def test_golden_sets_found():
    """Parity must not pass vacuously: the repository's own tiny set is always among the sets."""
    in_repo = [s for s in golden_sets_to_test() if not s.extra]
    assert [(s.name, s.problem) for s in in_repo] == [("tiny", None)]
    assert all(p.is_file() for p in (in_repo[0].config, in_repo[0].weights, in_repo[0].io))


def test_extra_golden_sets_are_added_and_incomplete_ones_fail(tmp_path, monkeypatch):
    """$EGOVLPV2_GOLDEN_DIR adds sets (never replaces); a set missing a file carries a problem."""
    for name in ("tiny_config.json", "tiny_weights.safetensors", "tiny_io.safetensors"):
        (tmp_path / name).symlink_to(GOLDEN_DIR / name)
    (tmp_path / "half_config.json").write_text("{}")
    monkeypatch.setenv(GOLDEN_ENV, str(tmp_path))
    sets = golden_sets_to_test()
    assert [(s.label, s.extra) for s in sets] == [
        ("tiny", False),
        (f"{tmp_path.name}/half", True),
        (f"{tmp_path.name}/tiny", True),
    ]
    half = sets[1]
    assert half.problem is not None and "half_weights.safetensors" in half.problem
    assert "half_io.safetensors" in half.problem and sets[2].problem is None
    monkeypatch.setenv(GOLDEN_ENV, str(tmp_path / "nowhere"))
    assert "does not exist" in (golden_sets_to_test()[-1].problem or "")
    monkeypatch.setenv(GOLDEN_ENV, str(GOLDEN_DIR))  # the repository's own folder: no twin
    assert [s.label for s in golden_sets_to_test()] == ["tiny"]


def test_every_golden_tensor_is_compared(golden, golden_io):
    """No output of the golden set escapes the comparison (other than the deferred loss)."""
    compared = {"sim"}
    for phase in PHASE_OUTPUTS:
        for suffix in DTYPES:
            compared.update(_phase_names(golden_io, phase, suffix))
    covered = {f"{n}_{s}" for n in compared for s in DTYPES} | INPUTS | DEFERRED
    uncovered = sorted(set(golden_io) - covered)
    assert uncovered == []
