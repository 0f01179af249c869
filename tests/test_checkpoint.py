"""Checkpoint loading/saving and tower initialisation from HF RoBERTa and timm ViT weights."""

from __future__ import annotations

import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from egovlpv2_rt.checkpoint import (
    CONFIG_METADATA_KEY,
    CheckpointMismatchError,
    init_text_from_hf_roberta,
    init_video_from_timm,
    load_checkpoint,
    load_model,
    resize_temporal_embed,
    save_safetensors,
)
from egovlpv2_rt.config import ModelConfig, preset
from egovlpv2_rt.modeling import EgoVLPv2


@pytest.fixture(scope="module")
def tiny_weights(tiny_golden) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_golden.weights))


def _random_state(model: EgoVLPv2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
        for k, v in model.state_dict().items()
    }


def _assert_state_equal(model: EgoVLPv2, expected: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    assert ours.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(ours[k], v.to(ours[k].dtype)), k


# -- released checkpoints ------------------------------------------------------------------


def test_golden_weights_load_exactly(tiny_golden, tiny_weights):
    model = EgoVLPv2(preset("tiny"))
    report = load_checkpoint(model, tiny_golden.weights)
    _assert_state_equal(model, tiny_weights)
    assert len(report.loaded) == 558 and not report.missing and not report.unexpected


def _save_released_style(path, state: dict[str, torch.Tensor]) -> None:
    """Write a checkpoint as the original trainer does: DDP keys, epoch, optimizer state,
    numpy best metric and its ``parse_config.ConfigParser`` object."""
    module = types.ModuleType("parse_config")

    class ConfigParser:
        def __init__(self) -> None:
            self._config = {"arch": {"type": "FrozenInTime"}}

    ConfigParser.__module__, ConfigParser.__qualname__ = "parse_config", "ConfigParser"
    module.ConfigParser = ConfigParser
    sys.modules["parse_config"] = module
    try:
        torch.save(
            {
                "arch": "FrozenInTime",
                "epoch": 3,
                "state_dict": {"module." + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5}]},
                "monitor_best": np.float64(0.5),
                "config": ConfigParser(),
            },
            path,
        )
    finally:
        del sys.modules["parse_config"]


def test_released_pth_loads_with_weights_only(tmp_path, tiny_weights):
    path = tmp_path / "egovlpv2.pth"
    _save_released_style(path, tiny_weights)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the trainer's objects are not weights
    model = EgoVLPv2(preset("tiny"))
    load_checkpoint(model, path)
    _assert_state_equal(model, tiny_weights)
    assert "parse_config" not in sys.modules  # the checkpoint's class was never imported


def test_temporal_embed_is_truncated_when_the_checkpoint_has_more_frames(tmp_path, tiny_weights):
    state = dict(tiny_weights)
    eight = torch.randn(1, 8, 64)
    state["video_model.temporal_embed"] = eight
    path = tmp_path / "eight.pth"
    torch.save({"state_dict": state}, path)
    model = EgoVLPv2(preset("tiny"))
    report = load_checkpoint(model, path)
    assert torch.equal(model.video_model.temporal_embed.data, eight[:, :4])
    assert report.resized == {"video_model.temporal_embed": ((1, 8, 64), (1, 4, 64))}


def test_temporal_embed_is_interpolated_when_the_checkpoint_has_fewer_frames():
    two = torch.randn(1, 2, 64, dtype=torch.float64)
    four = resize_temporal_embed(two, 4)
    # Bilinear with align_corners=True over frames: frame j sits at j/3 between the two rows.
    expected = torch.stack([two[0, 0] * (1 - j / 3) + two[0, 1] * (j / 3) for j in range(4)])
    assert four.shape == (1, 4, 64)
    assert (four[0] - expected).abs().max().item() <= 1e-15
    three = torch.randn(1, 3, 8)
    five = resize_temporal_embed(three, 5)  # positions 0, .5, 1, 1.5, 2
    assert torch.allclose(five[0, 1], (three[0, 0] + three[0, 1]) / 2, atol=1e-6)
    assert torch.equal(five[0, [0, 2, 4]], three[0])


def test_mismatching_checkpoint_lists_every_problem(tiny_weights):
    state = dict(tiny_weights)
    del state["itm_score.fc.bias"]
    state["video_model.head.weight"] = torch.zeros(3, 64)
    state["txt_proj.0.weight"] = torch.zeros(16, 64)
    model = EgoVLPv2(preset("tiny"))
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    err = info.value
    assert err.missing == ["itm_score.fc.bias"]
    assert err.unexpected == ["video_model.head.weight"]
    assert err.mismatched == [("txt_proj.0.weight", (16, 64), (32, 64))]
    text = str(err)
    for name in (
        "missing keys (1): itm_score.fc.bias",
        "unexpected keys (1): video_model.head.weight",
        "txt_proj.0.weight (checkpoint [16, 64], model [32, 64])",
    ):
        assert name in text


def test_non_strict_load_reports_but_shape_mismatch_still_raises(tiny_weights):
    state = dict(tiny_weights)
    del state["itm_score.fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    model = EgoVLPv2(preset("tiny"))
    report = load_checkpoint(model, state, strict=False)
    assert report.missing == ["itm_score.fc.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(model.txt_proj[0].weight.data, tiny_weights["txt_proj.0.weight"])
    state["txt_proj.0.weight"] = torch.zeros(16, 64)
    with pytest.raises(CheckpointMismatchError, match=re.escape("txt_proj.0.weight")):
        load_checkpoint(model, state, strict=False)


def test_checkpoint_without_position_ids_loads(tiny_weights):
    state = {k: v for k, v in tiny_weights.items() if k != "text_model.embeddings.position_ids"}
    model = EgoVLPv2(preset("tiny"))
    load_checkpoint(model, state)
    _assert_state_equal(model, tiny_weights)


def test_non_tensor_entries_are_rejected(tiny_weights):
    state = dict(tiny_weights)
    state["norm.weight"] = [1.0] * 64
    with pytest.raises(TypeError, match=re.escape("'norm.weight' is a list, not a tensor")):
        load_checkpoint(EgoVLPv2(preset("tiny")), state)


# -- safetensors -----------------------------------------------------------------------------


def test_safetensors_file_is_self_describing(tmp_path, tiny_weights):
    cfg = preset("tiny")
    model = EgoVLPv2(cfg, attention_impl="reference")
    load_checkpoint(model, tiny_weights)
    path = tmp_path / "model.safetensors"
    save_safetensors(model, path, metadata={"note": "test"})
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert ModelConfig.from_json(meta[CONFIG_METADATA_KEY]) == cfg and meta["note"] == "test"
    loaded = load_model(path, dtype=torch.float64)
    assert loaded.config == cfg and not loaded.training
    _assert_state_equal(
        loaded, {k: v.double() if v.is_floating_point() else v for k, v in tiny_weights.items()}
    )


def test_pth_needs_an_explicit_config(tmp_path, tiny_weights):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": tiny_weights}, path)
    with pytest.raises(ValueError, match="stores no config; pass config="):
        load_model(path)
    model = load_model(path, preset("tiny"), attention_impl="reference")
    _assert_state_equal(model, tiny_weights)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("nope.pth")):
        load_checkpoint(EgoVLPv2(preset("tiny")), tmp_path / "nope.pth")


# -- HF RoBERTa initialisation ---------------------------------------------------------------


def _hf_roberta(cfg: ModelConfig, **changes):
    transformers = pytest.importorskip("transformers")
    t = cfg.text
    fields = {
        name: getattr(t, name)
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "layer_norm_eps",
        )
    }
    fields["attn_implementation"] = "eager"
    fields.update(changes)
    torch.manual_seed(3)
    return transformers.RobertaModel(transformers.RobertaConfig(**fields))


def test_text_tower_from_hf_roberta_directory(tmp_path):
    model = EgoVLPv2(preset("tiny"))
    hf = _hf_roberta(model.config)
    hf.save_pretrained(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_text_from_hf_roberta(model, tmp_path)
    ours = model.state_dict()
    for k, v in hf.state_dict().items():
        if not k.startswith("pooler."):
            assert torch.equal(ours["text_model." + k], v), k
    untouched = [
        k
        for k in ours
        if ".crossattention_t2i." in k or k.endswith("alpha_t2i") or not k.startswith("text_model.")
    ]
    assert len(untouched) > 100
    assert all(torch.equal(ours[k], before[k]) for k in untouched)
    assert sorted(report.ignored) == ["pooler.dense.bias", "pooler.dense.weight"]
    # The loaded tower computes what the HF model computes.
    hf, model = hf.double().eval(), model.double().eval()
    ids = torch.tensor([[0, 17, 99, 5, 2, 1, 1], [0, 44, 2, 1, 1, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model.forward_text(ids, mask).last_hidden_state
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-10


def test_text_tower_from_pytorch_model_bin_with_lm_prefix(tmp_path):
    model = EgoVLPv2(preset("tiny"))
    hf = _hf_roberta(model.config)
    hf.config.to_json_file(tmp_path / "config.json")
    state = {"roberta." + k: v for k, v in hf.state_dict().items()}
    state["lm_head.dense.weight"] = torch.zeros(64, 64)
    torch.save(state, tmp_path / "pytorch_model.bin")
    init_text_from_hf_roberta(model, tmp_path)
    assert torch.equal(
        model.text_model.encoder.layer[11].output.dense.weight.data,
        hf.encoder.layer[11].output.dense.weight.data,
    )


def test_text_tower_config_mismatch_is_named(tmp_path):
    model = EgoVLPv2(preset("tiny"))
    _hf_roberta(model.config, intermediate_size=128).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"intermediate_size: 128 in config.json, 256 in the"):
        init_text_from_hf_roberta(model, tmp_path)


# -- timm ViT initialisation -----------------------------------------------------------------


def _timm_vit_state(cfg: ModelConfig, seed: int = 5) -> dict[str, torch.Tensor]:
    """A state dict with timm ``VisionTransformer`` names and the tiny shapes."""
    v = cfg.video
    d, hidden, n = v.embed_dim, int(v.embed_dim * v.mlp_ratio), v.patches_per_frame
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, n + 1, d),
        "patch_embed.proj.weight": (d, v.in_chans, v.patch_size, v.patch_size),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(v.depth):
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (d,),
                p + "norm1.bias": (d,),
                p + "attn.qkv.weight": (3 * d, d),
                p + "attn.qkv.bias": (3 * d,),
                p + "attn.proj.weight": (d, d),
                p + "attn.proj.bias": (d,),
                p + "norm2.weight": (d,),
                p + "norm2.bias": (d,),
                p + "mlp.fc1.weight": (hidden, d),
                p + "mlp.fc1.bias": (hidden,),
                p + "mlp.fc2.weight": (d, hidden),
                p + "mlp.fc2.bias": (d,),
            }
        )
    shapes.update(
        {"norm.weight": (d,), "norm.bias": (d,), "head.weight": (1000, d), "head.bias": (1000,)}
    )
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_video_tower_from_timm_vit(tmp_path, tiny_weights):
    model = EgoVLPv2(preset("tiny"))
    load_checkpoint(model, tiny_weights)  # random time attention, non-zero gates
    vit = _timm_vit_state(model.config)
    path = tmp_path / "vit.pth"
    torch.save({"model": vit}, path)
    report = init_video_from_timm(model, path)
    ours = model.state_dict()
    for k, v in vit.items():
        if not k.startswith("head."):
            assert torch.equal(ours["video_model." + k], v), k
    assert sorted(report.ignored) == ["head.bias", "head.weight"]
    assert len(report.loaded) == 4 + 12 * 12 + 2
    for k in (
        "video_model.blocks.3.norm3.weight",
        "video_model.temporal_embed",
        "video_model.blocks.8.attn.qkv_i2t.weight",
        "video_model.blocks.8.attn.alpha_i2t",
    ):
        assert torch.equal(ours[k], tiny_weights[k]), k
    # time_init "zeros": the time attention adds exactly zero, so each block starts as ViT's.
    blk = model.video_model.blocks[0]
    x = torch.randn(2, 17, 64)
    assert torch.count_nonzero(blk.timeattn(blk.norm3(x), 4)).item() == 0
    assert torch.all(blk.timeattn.proj.weight == 1).item()


def test_video_tower_from_timm_rejects_foreign_keys_and_shapes():
    model = EgoVLPv2(preset("tiny"))
    vit = _timm_vit_state(model.config)
    vit["blocks.0.ls1.gamma"] = torch.ones(64)
    vit["pos_embed"] = torch.zeros(1, 10, 64)
    del vit["norm.bias"]
    with pytest.raises(CheckpointMismatchError) as info:
        init_video_from_timm(model, vit)
    assert info.value.unexpected == ["blocks.0.ls1.gamma"]
    assert info.value.missing == ["video_model.norm.bias"]
    assert info.value.mismatched == [("video_model.pos_embed", (1, 10, 64), (1, 5, 64))]
