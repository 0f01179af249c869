"""The model's structure, configuration, input validation and dual-mode text tower."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from egovlpv2_rt import ops
from egovlpv2_rt.checkpoint import load_checkpoint, resize_temporal_embed
from egovlpv2_rt.config import FusionConfig, ModelConfig, TextConfig, VideoConfig, preset
from egovlpv2_rt.modeling import EgoVLPv2, sim_matrix
from egovlpv2_rt.modeling.attention import _with_dropout


def _manifest(path) -> dict:
    return json.loads(path.read_text())


def _tiny_inputs(
    cfg: ModelConfig,
    batch: int = 2,
    length: int = 7,
    frames: int | None = None,
    dtype=torch.float64,
    seed: int = 0,
):
    g = torch.Generator().manual_seed(seed)
    v, t = cfg.video, cfg.text
    frames = frames or v.num_frames
    video = torch.randn(batch, frames, v.in_chans, v.img_size, v.img_size, generator=g, dtype=dtype)
    ids = torch.randint(5, t.vocab_size, (batch, length), generator=g)
    ids[:, 0] = t.bos_token_id
    mask = torch.ones(batch, length, dtype=torch.int64)
    # Second caption padded: real tokens, </s>, then pads.
    ids[1, 4], ids[1, 5:], mask[1, 5:] = t.eos_token_id, t.pad_token_id, 0
    ids[0, -1] = t.eos_token_id
    return video, ids, mask


def _tiny_model(tiny_golden=None, **overrides) -> EgoVLPv2:
    """Tiny model with the golden weights (non-trivial gates) when given, else random."""
    model = EgoVLPv2(preset("tiny", **overrides))
    if tiny_golden is not None:
        load_checkpoint(model, tiny_golden.weights)
    return model.double().eval()


# -- structure -----------------------------------------------------------------------------


def test_base_preset_state_dict_equals_manifest(golden_manifest):
    manifest = _manifest(golden_manifest)
    with torch.device("meta"):
        model = EgoVLPv2(preset("base"))
    ours = [
        (k, list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]
    assert len(ours) == manifest["num_state_dict_entries"] == 558
    assert ours == [tuple(entry) for entry in manifest["state_dict"]]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["total_parameters"] == 381_611_623


def test_presets_match_golden_hparams(golden_manifest, tiny_golden):
    manifest = _manifest(golden_manifest)
    assert ModelConfig.from_golden_hparams(manifest["hparams"]) == preset("base")
    hparams = json.loads(tiny_golden.config.read_text())["hparams"]
    assert ModelConfig.from_golden_hparams(hparams) == preset("tiny")


def test_tiny_state_dict_matches_golden_weights(tiny_golden):
    golden = load_file(str(tiny_golden.weights))
    ours = EgoVLPv2(preset("tiny")).state_dict()
    assert sorted(ours) == sorted(golden)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in golden.items()
    }
    assert ours["text_model.embeddings.position_ids"].dtype == torch.int64


def test_fresh_model_follows_original_initialisation():
    model = EgoVLPv2(preset("tiny"))
    blk = model.video_model.blocks[0]
    assert torch.count_nonzero(blk.timeattn.qkv.weight).item() == 0
    assert torch.all(blk.timeattn.proj.weight == 1).item()
    assert torch.count_nonzero(model.video_model.temporal_embed).item() == 0
    assert model.video_model.blocks[6].attn.alpha_i2t.item() == 0.0
    assert model.text_model.encoder.layer[6].alpha_t2i.item() == 0.0
    assert torch.count_nonzero(model.text_model.embeddings.word_embeddings.weight[1]) == 0
    std = model.text_model.encoder.layer[0].attention.self.query.weight.std().item()
    assert abs(std - 0.02) < 0.004


def test_task_names_select_heads():
    model = EgoVLPv2(preset("tiny", task_names="EgoNCE"))
    keys = model.state_dict().keys()
    assert not any(k.startswith(("mlm_score", "itm_score", "cls_token", "norm.")) for k in keys)
    video, ids, mask = _tiny_inputs(model.config, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="no ITM head"):
        model.vtm_logits(video, ids, mask)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", "tiny"])
def test_config_round_trips_through_json(name):
    cfg = preset(name, projection_dim=16)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_unknown_keys_are_named():
    data = preset("tiny").to_dict()
    data["video"]["num_frame"] = 8
    with pytest.raises(ValueError, match=r"^video: unknown key\(s\) \[.num_frame.\]"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['attn_impl'\]"):
        ModelConfig.from_dict({"attn_impl": "fused"})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VideoConfig(embed_dim=100, num_heads=12), "divisible by num_heads"),
        (lambda: VideoConfig(img_size=200, patch_size=16), "divisible by patch_size"),
        (lambda: TextConfig(hidden_size=100, num_attention_heads=12), "divisible"),
        (lambda: FusionConfig(num_fuse_block=13), "num_fuse_block"),
        (lambda: EgoVLPv2(preset("tiny"), attention_impl="flash"), "attention_impl"),
        (lambda: preset("tiny", embed_dim=32), "embed_dim"),
        (lambda: preset("tiny", task_names="EgoNCE_VQA"), "task_names"),
        (lambda: dataclasses.replace(preset("tiny"), text=TextConfig()), "must be equal|must "),
    ],
)
def test_config_checks(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- text tower equals transformers.RobertaModel ---------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_text_tower_equals_transformers_roberta(tiny_golden, attn_implementation):
    transformers = pytest.importorskip("transformers")
    model = _tiny_model(tiny_golden)
    t = model.config.text
    hf_cfg = transformers.RobertaConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        intermediate_size=t.intermediate_size,
        hidden_act=t.hidden_act,
        max_position_embeddings=t.max_position_embeddings,
        type_vocab_size=t.type_vocab_size,
        pad_token_id=t.pad_token_id,
        bos_token_id=t.bos_token_id,
        eos_token_id=t.eos_token_id,
        layer_norm_eps=t.layer_norm_eps,
        attn_implementation=attn_implementation,
    )
    hf = transformers.RobertaModel(hf_cfg, add_pooling_layer=False).double().eval()
    ours_sd = model.state_dict()
    hf_sd = {k: ours_sd["text_model." + k] for k in hf.state_dict()}
    hf.load_state_dict(hf_sd)
    _, ids, mask = _tiny_inputs(model.config, batch=3, length=11)
    ids[2, 3:], mask[2, 3:] = t.pad_token_id, 0
    ids[2, 2] = t.eos_token_id
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        ours = model.forward_text(ids, mask, return_traces=True)

    def err(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    assert err(ours.last_hidden_state, ref.last_hidden_state) <= 1e-10
    assert err(ours.traces["tembed"], ref.hidden_states[0]) <= 1e-10
    for i in range(t.num_hidden_layers):
        assert err(ours.traces[f"tlayer{i:02d}"], ref.hidden_states[i + 1]) <= 1e-10


# -- behaviour -------------------------------------------------------------------------------


def test_mlm_logits_do_not_need_the_last_video_block(tiny_golden):
    model = _tiny_model(tiny_golden)
    video, ids, mask = _tiny_inputs(model.config)
    with torch.no_grad():
        fast = model.mlm_logits(video, ids, mask)
        traced = model.forward_fusion(video, ids, mask, task="mlm", return_traces=True)
    assert torch.equal(fast, traced.logits)
    assert sorted(traced.traces) == sorted(
        ["vtokens_in", "tembed"]
        + [f"vblock{i:02d}" for i in range(12)]
        + [f"tlayer{i:02d}" for i in range(12)]
    )


def test_fusion_gates_change_the_towers(tiny_golden):
    """Fusion and dual mode share blocks 0..5 and differ from block 6 on (gates on)."""
    model = _tiny_model(tiny_golden)
    video, ids, mask = _tiny_inputs(model.config)
    with torch.no_grad():
        dual = model.forward_text(ids, mask, return_traces=True).traces
        fused = model.forward_fusion(video, ids, mask, return_traces=True).traces
    assert torch.equal(dual["tlayer05"], fused["tlayer05"])
    assert (dual["tlayer06"] - fused["tlayer06"]).abs().max().item() > 1e-3


def test_fewer_frames_use_the_first_temporal_embeddings(tiny_golden):
    """A 2-frame clip on a 4-frame model equals the 2-frame model with truncated temporal_embed."""
    model = _tiny_model(tiny_golden)
    cfg2 = model.config.replace(video=dataclasses.replace(model.config.video, num_frames=2))
    model2 = EgoVLPv2(cfg2).double().eval()
    sd = model.state_dict()
    sd["video_model.temporal_embed"] = resize_temporal_embed(sd["video_model.temporal_embed"], 2)
    model2.load_state_dict(sd)
    video, _, _ = _tiny_inputs(model.config, frames=2)
    with torch.no_grad():
        a, b = model.encode_video(video), model2.encode_video(video)
    assert a.shape == (2, model.config.projection_dim)
    assert torch.equal(a, b)


def test_sim_matrix_is_cosine_with_eps():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[0.6, 0.8, 7 / (5 * math.sqrt(2))], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    assert torch.allclose(sim_matrix(a, b), expected, rtol=0, atol=1e-15)
    assert torch.equal(EgoVLPv2.sim_matrix(a, b), sim_matrix(a, b))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_golden):
    def grads(checkpointing: bool):
        text = dataclasses.replace(
            preset("tiny").text, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        model = EgoVLPv2(preset("tiny", text=text), gradient_checkpointing=checkpointing)
        load_checkpoint(model, tiny_golden.weights)
        model = model.double().train()
        calls = []
        model.video_model.blocks[7].register_forward_pre_hook(lambda *_: calls.append(1))
        video, ids, mask = _tiny_inputs(model.config)
        loss = model.vtm_logits(video, ids, mask).square().sum()
        loss = loss + model.encode_text(ids, mask).square().sum()
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = grads(False)
    ckpt, ckpt_calls = grads(True)
    assert plain_calls == 1 and ckpt_calls == 2  # the block is recomputed in backward
    assert plain.keys() == ckpt.keys() and len(plain) > 500
    worst = max(
        ((plain[k] - ckpt[k]).abs().max() / plain[k].abs().max().clamp_min(1e-300)).item()
        for k in plain
    )
    assert worst <= 1e-12


def test_dropout_is_active_in_training_only(tiny_golden):
    model = _tiny_model(tiny_golden)
    video, ids, mask = _tiny_inputs(model.config)
    with torch.no_grad():
        eval_a = model.vtm_logits(video, ids, mask)
        eval_b = model.vtm_logits(video, ids, mask)
        model.train()
        torch.manual_seed(0)
        train = model.vtm_logits(video, ids, mask)
    assert torch.equal(eval_a, eval_b)
    assert (train - eval_a).abs().max().item() > 1e-6


def test_dropout_path_of_cross_attention_equals_the_op_without_dropout():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 16, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    proj = torch.nn.Linear(16, 16).double()
    gate = torch.tensor([0.7], dtype=torch.float64)
    residual = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    key_mask = torch.zeros(2, 7, dtype=torch.float64)
    key_mask[1, 5:] = torch.finfo(torch.float64).min
    ref = ops.gated_cross_attention(
        q, k, v, key_mask, proj.weight, proj.bias, gate, residual, 4, 0.5, impl="reference"
    )
    with torch.no_grad():
        ours = _with_dropout(q, k, v, key_mask, proj, gate, residual, 4, 0.5, 0.0, 0.0)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-14


def test_set_attention_impl_switches_every_module():
    model = EgoVLPv2(preset("tiny"))
    model.set_attention_impl("fused")
    impls = {m.impl for m in model.modules() if hasattr(m, "impl")}
    assert impls == {"fused"} and model.attention_impl == "fused"
    with pytest.raises(ValueError, match="impl must be one of"):
        model.set_attention_impl("flash")


def test_execution_settings_are_not_part_of_the_config():
    """What is saved is what the model is: a 0.1 config's execution settings are dropped on
    reading, never written, and the model takes them as arguments instead."""
    cfg = preset("tiny")
    assert not {"attention_impl", "check_finite_pixels", "gradient_checkpointing"} & set(
        cfg.to_dict()
    )
    legacy = {
        **cfg.to_dict(),
        "attention_impl": "fused",
        "check_finite_pixels": False,
        "gradient_checkpointing": True,
    }
    assert ModelConfig.from_dict(legacy) == cfg
    with pytest.raises(TypeError):
        preset("tiny", attention_impl="fused")
    model = EgoVLPv2(
        cfg, attention_impl="reference", gradient_checkpointing=True, check_finite_pixels=False
    )
    assert (model.attention_impl, model.gradient_checkpointing, model.check_finite_pixels) == (
        "reference",
        True,
        False,
    )
    assert {m.impl for m in model.modules() if hasattr(m, "impl")} == {"reference"}
    assert EgoVLPv2(cfg).attention_impl == "auto"


def test_auto_attention_takes_the_fused_ops_where_they_run(monkeypatch):
    """impl="auto" calls the fused op for float64/float32 CPU tensors when the extension is
    built, and the reference path for a dtype the kernels lack (bfloat16 on the CPU)."""
    calls = []
    real = ops.reference_divided_space_time_attention
    monkeypatch.setattr(
        ops,
        "reference_divided_space_time_attention",
        lambda *a: calls.append("reference") or real(*a),
    )
    qkv = torch.randn(2, 1 + 4 * 4, 3 * 16, dtype=torch.float64)
    auto = ops.divided_space_time_attention(qkv, 2, 4, False, 0.25, impl="auto")
    fused = ops.divided_space_time_attention(qkv, 2, 4, False, 0.25, impl="fused")
    assert ops.fused_available(qkv.device, torch.float64) and calls == []
    assert torch.equal(auto, fused)
    ops.divided_space_time_attention(qkv.bfloat16(), 2, 4, False, 0.25, impl="auto")
    assert calls == ["reference"] and not ops.fused_available(qkv.device, torch.bfloat16)


# -- bad input -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny32():
    return EgoVLPv2(preset("tiny")).eval()


def _good(cfg):
    return _tiny_inputs(cfg, dtype=torch.float32)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda v: v[0], ValueError, r"video: expected rank 5 \[B, F<=4, 3, 32, 32\]"),
        (lambda v: v.repeat(1, 2, 1, 1, 1), ValueError, r"video: frame count F=8 .*\[1, 4\]"),
        (lambda v: v[..., :24, :24], ValueError, r"video: image size 24x24 is not divisible"),
        (
            lambda v: v.repeat(1, 1, 1, 2, 2)[..., :48, :48],
            ValueError,
            r"video: image size 48x48 does not match the configured img_size 32x32",
        ),
        (lambda v: v[:, :, :1], ValueError, r"video: expected 3 channels"),
        (lambda v: v.to(torch.int64), TypeError, r"video: expected a floating point tensor"),
        (lambda v: v.double(), TypeError, r"video: expected dtype torch.float32"),
        (lambda v: v.numpy(), TypeError, r"video: expected a torch.Tensor"),
        (
            lambda v: v.index_fill(4, torch.tensor([3]), float("nan")),
            ValueError,
            r"video: contains NaN",
        ),
    ],
)
def test_bad_video_is_rejected(tiny32, make, error, message):
    video, ids, mask = _good(tiny32.config)
    bad = make(video)
    with pytest.raises(error, match=message):
        tiny32.encode_video(bad)
    with pytest.raises(error, match=message):
        tiny32.vtm_logits(bad, ids, mask)


def test_nan_check_can_be_switched_off():
    model = EgoVLPv2(preset("tiny"), check_finite_pixels=False).eval()
    video, _, _ = _good(model.config)
    video[0, 0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = model.encode_video(video)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


def test_skip_value_checks_skips_only_the_value_checks(tiny32):
    from egovlpv2_rt.modeling.validation import skip_value_checks

    video, _ids, _mask = _good(tiny32.config)
    nan_video = video.clone()
    nan_video[0, 0, 0, 0, 0] = float("nan")
    with torch.no_grad(), skip_value_checks(), skip_value_checks():
        out = tiny32.encode_video(nan_video)
        with pytest.raises(ValueError, match="video: expected 3 channels"):
            tiny32.encode_video(video[:, :, :1])  # shape checks still run
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    with pytest.raises(ValueError, match="video: contains NaN"):  # back on after the block
        tiny32.encode_video(nan_video)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda i, m: (i[0], m), ValueError, r"input_ids: expected rank 2 \[B, L<=38\]"),
        (lambda i, m: (i.float(), m), TypeError, r"input_ids: expected an integer tensor"),
        (
            lambda i, m: (i.index_fill(1, torch.tensor([2]), 1000), m),
            ValueError,
            r"input_ids: token id 1000 is out of the vocabulary \[0, 1000\)",
        ),
        (
            lambda i, m: (i.index_fill(1, torch.tensor([2]), -3), m),
            ValueError,
            r"input_ids: token id -3 is out of the vocabulary",
        ),
        (
            lambda i, m: (i.repeat(1, 6), m.repeat(1, 6)),
            ValueError,
            r"input_ids: sequence length 42 exceeds the maximum 38",
        ),
        (
            lambda i, m: (i, m[:, :-1]),
            ValueError,
            r"attention_mask: expected shape \[2, 7\] 0/1 mask .*got \(2, 6\)",
        ),
        (lambda i, m: (i, m.tolist()), TypeError, r"attention_mask: expected a torch.Tensor"),
    ],
)
def test_bad_text_is_rejected(tiny32, make, error, message):
    video, ids, mask = _good(tiny32.config)
    bad_ids, bad_mask = make(ids, mask)
    with pytest.raises(error, match=message):
        tiny32.encode_text(bad_ids, bad_mask)
    with pytest.raises(error, match=message):
        tiny32.mlm_logits(video, bad_ids, bad_mask)


def test_fusion_batch_mismatch_is_rejected(tiny32):
    video, ids, mask = _good(tiny32.config)
    with pytest.raises(ValueError, match="same batch size"):
        tiny32.vtm_logits(video[:1], ids, mask)
