"""The "small" 256-d projector of the EK-100 / Charades-Ego checkpoints: architecture and key
names as released, strict loading of state dicts with exactly the released key sets, the
projector named when a checkpoint and a config disagree, the config picked from the keys of a
file that stores none, and the runtime and ONNX export at a small-projector width."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_assets import tiny_config, tiny_model_dir

from egovlpv2_rt.checkpoint import (
    CheckpointMismatchError,
    ProjectorMismatchError,
    detect_projection,
    infer_config,
    load_checkpoint,
    load_model,
    save_safetensors,
)
from egovlpv2_rt.config import ModelConfig, preset
from egovlpv2_rt.modeling import EgoVLPv2

# Projector keys and shapes of the released files, written out from the original's
# ``model_epic_charades.py``: txt_proj = Sequential(ReLU(), Linear(768, 256)),
# vid_proj = Sequential(Linear(768, 256)).
SMALL_KEYS_BASE = [
    ("txt_proj.1.weight", [256, 768]),
    ("txt_proj.1.bias", [256]),
    ("vid_proj.0.weight", [256, 768]),
    ("vid_proj.0.bias", [256]),
]


def _manifest_smallproj(golden_manifest: Path) -> list[tuple[str, list[int], str]]:
    """The full-size manifest (minimal projector) with the projector keys swapped for the small
    ones at the place the original's module order puts them (after video_model)."""
    entries = json.loads(golden_manifest.read_text())["state_dict"]
    out: list[tuple[str, list[int], str]] = []
    inserted = False
    for key, shape, dtype in entries:
        if key.startswith(("txt_proj.", "vid_proj.")):
            if not inserted:
                out += [(k, s, "float32") for k, s in SMALL_KEYS_BASE]
                inserted = True
            continue
        out.append((key, shape, dtype))
    assert inserted
    return out


def _random_state(model: EgoVLPv2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=g, dtype=v.dtype)
        else:
            out[k] = v.clone()
    return out


def _tiny_small() -> ModelConfig:
    return tiny_config().replace(projection="small", projection_dim=16)


# -- architecture ------------------------------------------------------------------------------


def test_small_projector_is_relu_first_text_and_linear_video():
    model = EgoVLPv2(preset("tiny-smallproj")).eval()
    assert [type(m).__name__ for m in model.txt_proj] == ["ReLU", "Linear"]
    assert [type(m).__name__ for m in model.vid_proj] == ["Linear"]
    keys = {k: list(v.shape) for k, v in model.state_dict().items() if "_proj." in k[:9]}
    assert keys == {
        "txt_proj.1.weight": [16, 64],
        "txt_proj.1.bias": [16],
        "vid_proj.0.weight": [16, 64],
        "vid_proj.0.bias": [16],
    }
    # The text embedding is Linear(ReLU(CLS)): a negative CLS component contributes nothing.
    feat = torch.tensor([[-1.0, 2.0] + [0.0] * 62])
    w, b = model.txt_proj[1].weight, model.txt_proj[1].bias
    expected = 2.0 * w[:, 1] + b
    torch.testing.assert_close(model.txt_proj(feat)[0], expected, rtol=0, atol=1e-6)


def test_base_smallproj_state_dict_is_the_released_key_set(golden_manifest):
    with torch.device("meta"):
        model = EgoVLPv2(preset("base-smallproj"))
    ours = [
        (k, list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]
    expected = _manifest_smallproj(golden_manifest)
    assert ours == expected
    assert len(ours) == 558 - 10 + 4 == 552
    # 381,611,623 parameters with the minimal projector; the small one has 2 x (768*256 + 256)
    # in place of 2 x (768*4096 + 2 * (4096*4096 + 4096)).
    n = sum(p.numel() for p in model.parameters())
    assert n == 381_611_623 - 2 * (768 * 4096 + 2 * (4096 * 4096 + 4096)) + 2 * (768 * 256 + 256)
    assert preset("base-smallproj").projection_dim == 256


def test_projection_kinds_in_config():
    cfg = preset("base-smallproj")
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match=r"projection must be 'minimal' .* or 'small' .* 'big'"):
        preset("tiny", projection="big")


# -- loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [4, 16, 32])
@pytest.mark.parametrize(
    "name",
    [
        "EgoVLPv2_smallproj.pth",
        "EgoVLPv2_smallproj_epoch1.pth",
        "EK-100_finetune.pth",
        "Charades-Ego_finetune.pth",
    ],
)
def test_released_small_files_load_strictly(tmp_path, name, frames):
    """A file laid out as the released ones (``{'state_dict': {'module.' + key: ...}}``, a
    4-frame temporal embedding) loads strictly into a small-projector model at 4, 16 (EK-100) or
    32 (Charades-Ego) frames; the temporal embedding is interpolated, the rest is bit-exact."""
    cfg4 = _tiny_small()
    state = _random_state(EgoVLPv2(cfg4))
    path = tmp_path / name
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 1}, path)
    cfg = cfg4.replace(video=dataclasses.replace(cfg4.video, num_frames=frames))
    model = load_model(path, cfg, attention_impl="reference")
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state)
    for k, v in state.items():
        if k != "video_model.temporal_embed":
            assert torch.equal(loaded[k], v), k
    te = loaded["video_model.temporal_embed"]
    assert te.shape == (1, frames, 64)
    # align_corners=True: the first and last rows are the checkpoint's.
    torch.testing.assert_close(te[0, 0], state["video_model.temporal_embed"][0, 0])
    torch.testing.assert_close(te[0, -1], state["video_model.temporal_embed"][0, -1])


def test_base_size_small_key_set_fits_base_smallproj(golden_manifest):
    """The full-size key/shape set of the released small-projector files (manifest with the
    projector swapped, ``module.``-prefixed inside ``state_dict`` as released), shapes only on
    the meta device (base-size values would take gigabytes): it is exactly the key/shape set of
    ``base-smallproj``, which ``infer_config`` picks from the keys; a ``base`` model refuses it
    naming the projector before any value is read."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    sd = {
        "module." + k: torch.empty(s, dtype=dtypes[d], device="meta")
        for k, s, d in _manifest_smallproj(golden_manifest)
    }
    assert detect_projection(k.removeprefix("module.") for k in sd) == "small"
    assert infer_config({"state_dict": sd}) == preset("base-smallproj")
    with torch.device("meta"):
        model = EgoVLPv2(preset("base-smallproj"))
        minimal = EgoVLPv2(preset("base"))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k.removeprefix("module."): tuple(v.shape) for k, v in sd.items()
    }
    with pytest.raises(ProjectorMismatchError) as info:
        load_checkpoint(minimal, {"state_dict": sd}, source="EgoVLPv2_smallproj.pth")
    assert str(info.value) == (
        "EgoVLPv2_smallproj.pth: checkpoint has the 'small' projector (txt_proj.1, vid_proj.0), "
        "config says 'minimal'; build the model with projection='small' (preset "
        "'base-smallproj' for the full-size model)"
    )


def test_config_is_picked_from_the_keys_of_a_file_without_one(tmp_path):
    """``load_model`` with no config: a released-layout file is recognised by its keys and
    shapes. At tiny sizes nothing is a released model, so ``infer_config`` is checked on the
    full-size key set above and on tiny files here it refuses with the existing message."""
    state = _random_state(EgoVLPv2(_tiny_small()))
    path = tmp_path / "EK-100_finetune.pth"
    torch.save({"state_dict": state}, path)
    assert infer_config({"state_dict": state}) is None
    with pytest.raises(ValueError, match=r"stores no config; pass config=.*'base-smallproj'"):
        load_model(path)


def test_infer_config_reads_frames_and_heads(golden_manifest):
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    sd = {
        k: torch.empty(s, dtype=dtypes[d], device="meta")
        for k, s, d in _manifest_smallproj(golden_manifest)
        if not k.startswith("mlm_score.")
    }
    sd["video_model.temporal_embed"] = torch.empty(1, 16, 768, device="meta")
    del sd["text_model.embeddings.position_ids"]  # newer transformers do not save it
    cfg = infer_config(sd)
    assert cfg is not None
    assert (cfg.projection, cfg.projection_dim, cfg.video.num_frames, cfg.task_names) == (
        "small",
        256,
        16,
        "EgoNCE_ITM",
    )
    minimal = {
        k: torch.empty(s, dtype=dtypes[d], device="meta")
        for k, s, d in json.loads(golden_manifest.read_text())["state_dict"]
    }
    assert infer_config(minimal) == preset("base")
    minimal["extra.weight"] = torch.empty(2, device="meta")
    assert infer_config(minimal) is None


@pytest.mark.parametrize(
    ("ckpt_kind", "config_kind", "keys"),
    [("minimal", "small", "txt_proj.0/2/4"), ("small", "minimal", "txt_proj.1, vid_proj.0")],
)
def test_other_projector_is_named_in_one_line(tmp_path, ckpt_kind, config_kind, keys):
    def cfg(kind: str) -> ModelConfig:
        return tiny_config().replace(projection=kind, projection_dim=16)

    state = _random_state(EgoVLPv2(cfg(ckpt_kind)))
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ProjectorMismatchError) as info:
        load_model(path, cfg(config_kind))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: checkpoint has the {ckpt_kind!r} projector ({keys}"), (
        message
    )
    assert f"config says {config_kind!r}" in message
    assert isinstance(info.value, CheckpointMismatchError) and isinstance(info.value, ValueError)
    # Non-strict loads refuse it too: the towers would load and the projector stay random.
    with pytest.raises(ProjectorMismatchError, match=re.escape(f"config says {config_kind!r}")):
        load_checkpoint(EgoVLPv2(cfg(config_kind)), state, strict=False)


def test_detect_projection():
    assert detect_projection(["txt_proj.0.weight", "txt_proj.2.weight", "vid_proj.0.weight"]) == (
        "minimal"
    )
    assert detect_projection(["txt_proj.1.weight", "vid_proj.0.bias"]) == "small"
    assert detect_projection(["video_model.cls_token"]) is None
    assert detect_projection(["txt_proj.1.weight", "txt_proj.2.weight"]) is None  # both kinds


def test_small_projector_of_the_wrong_width_names_the_shapes(tmp_path):
    state = _random_state(EgoVLPv2(_tiny_small()))
    with pytest.raises(CheckpointMismatchError, match=r"txt_proj\.1\.weight \(checkpoint \[16, "):
        load_checkpoint(EgoVLPv2(_tiny_small().replace(projection_dim=8)), state)


# -- runtime and export ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory) -> Path:
    """model.safetensors of a tiny small-projector model + the tiny tokenizer."""
    d = tmp_path_factory.getbasetemp() / "egovlpv2-tiny-smallproj"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_model_dir(tmp_path_factory) / "tokenizer.json", d / "tokenizer.json")
    torch.manual_seed(3)
    model = EgoVLPv2(_tiny_small()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name or "timeattn" in name:
                p.normal_(0.0, 0.5)
    save_safetensors(model, d / "model.safetensors")
    return d


CAPTIONS = ["#C C moves the red square to the left", "C rotates the green triangle"]


def test_runtime_and_onnx_export_with_the_small_projector(small_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from egovlpv2_rt.cli.export import main as export_main
    from egovlpv2_rt.runtime import load

    model = load_model(small_model_dir / "model.safetensors", attention_impl="reference")
    assert model.config.projection == "small"
    rt = load(small_model_dir, backend="torch", device="cpu")
    assert rt.embedding_dim == 16
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 4, 3, 32, 32, generator=g)
    pixels = (pixels - 0.45) / 0.226
    with torch.no_grad():
        ref_v = model.encode_video(pixels).numpy()
        tok = rt.tokenizer(CAPTIONS, max_length=rt.preprocessing.max_text_length)
        ref_t = model.encode_text(tok["input_ids"], tok["attention_mask"]).numpy()
    assert ref_v.shape == (3, 16) and ref_t.shape == (2, 16)
    np.testing.assert_allclose(rt.encode_video(pixels), ref_v, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rt.encode_text(CAPTIONS), ref_t, rtol=0, atol=1e-5)

    out = tmp_path / "export"
    rc = export_main(
        ["--mode", "dual", "--checkpoint", str(small_model_dir), "--out", str(out), "--json"]
    )
    assert rc == 0
    ort_rt = load(out, backend="onnxruntime", device="cpu")
    assert ort_rt.embedding_dim == 16
    np.testing.assert_allclose(ort_rt.encode_video(pixels), ref_v, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ort_rt.encode_text(CAPTIONS), ref_t, rtol=0, atol=1e-4)
