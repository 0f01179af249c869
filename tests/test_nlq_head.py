"""EgoNLQ VSLNet head: layer shapes and masking, padding invariance, top-k span decoding, the
highlight labels and the feature pooling against transcriptions of the original, feature-file
checks, seeded determinism, save/load, and learning on synthetic features."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from _nlq_synth import TEXT_DIM, VIDEO_DIM, synthetic_feature_dicts

from egovlpv2_rt.errors import InputError, UnsafeFileError
from egovlpv2_rt.eval.grounding import nlq_recall
from egovlpv2_rt.tasks.episodic.nlq_data import (
    highlight_labels,
    load_nlq_feature_file,
    load_nlq_features,
    parse_nlq_feature_dict,
    visual_feature_sampling,
)
from egovlpv2_rt.tasks.episodic.nlq_head import (
    CONFIG_NAME,
    LOG_NAME,
    WEIGHTS_NAME,
    NLQHeadConfig,
    build_nlq_model,
    decode_topk,
    evaluate_nlq_head,
    load_nlq_head,
    predict_spans,
    random_spans,
    read_nlq_head_config,
    train_nlq_head,
)
from egovlpv2_rt.tasks.episodic.spans import index_to_time
from egovlpv2_rt.tasks.episodic.vslnet import VSLNet, highlight_loss

MAX_POS = 32


def _tiny(variant: str = "full", drop: float = 0.0) -> VSLNet:
    torch.manual_seed(0)
    return VSLNet(VIDEO_DIM, TEXT_DIM, dim=16, num_heads=4, max_pos_len=MAX_POS, drop_rate=drop,
                  variant=variant)  # fmt: skip


def _samples(n: int, seed: int):
    dicts = synthetic_feature_dicts(n, seed, max_pos_len=MAX_POS)
    return [parse_nlq_feature_dict(d, f"synth{seed}_{i}", MAX_POS) for i, d in enumerate(dicts)]


def _config(**kw) -> NLQHeadConfig:
    base = {"dim": 16, "num_heads": 4, "max_pos_len": MAX_POS, "batch_size": 8, "lr": 3e-3}
    return NLQHeadConfig(**{**base, "drop_rate": 0.1, "num_threads": 1, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny head is op-overhead bound: one thread is the fastest on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- layers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["full", "small"])
def test_layer_shapes_and_masked_positions(variant):
    model = _tiny(variant).eval()
    b, t, lq = 2, 10, 5
    video = torch.randn(b, t, VIDEO_DIM)
    text = torch.randn(b, lq, TEXT_DIM)
    v_mask = torch.ones(b, t)
    v_mask[1, 7:] = 0
    q_mask = torch.ones(b, lq, dtype=torch.int64)
    q_mask[0, 3:] = 0
    h, start, end = model(video, v_mask, text, q_mask)
    assert h.shape == start.shape == end.shape == (b, t)
    # Padded cells: logits about -1e30, highlight exactly 0; valid ones ordinary numbers.
    assert start[1, 7:].max() < -1e29 and end[1, 7:].max() < -1e29
    assert h[1, 7:].abs().max() == 0.0
    assert start[1, :7].abs().max() < 1e3 and bool(((h[:, :7] > 0) & (h[:, :7] < 1)).all())
    assert (model.cq_attention is None) == (variant == "small")


@pytest.mark.parametrize("variant", ["full", "small"])
def test_outputs_do_not_depend_on_batch_padding(variant):
    model = _tiny(variant).eval()
    g = torch.Generator().manual_seed(3)
    short = torch.randn(1, 9, VIDEO_DIM, generator=g)
    long_ = torch.randn(1, 20, VIDEO_DIM, generator=g)
    text = torch.randn(2, 6, TEXT_DIM, generator=g)
    q_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(short, torch.ones(1, 9), text[:1, :4], q_mask[:1, :4])
        video = torch.cat([torch.cat([short, torch.zeros(1, 11, VIDEO_DIM)], 1), long_])
        v_mask = torch.zeros(2, 20)
        v_mask[0, :9] = 1
        v_mask[1] = 1
        batched = model(video, v_mask, text, q_mask)
    for a, b in zip(alone, batched, strict=True):
        torch.testing.assert_close(b[0, :9], a[0], atol=1e-5, rtol=1e-5)


def test_highlight_loss_weights_and_mask():
    scores = torch.tensor([[0.5, 0.25, 0.9, 0.3]])
    labels = torch.tensor([[1, 0, 1, 1]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    want = (2 * -math.log(0.5) + -math.log(0.75) + 2 * -math.log(0.9)) / 3
    assert float(highlight_loss(scores, labels, mask)) == pytest.approx(want, rel=1e-6)


# -- labels, pooling, decoding against the original's arithmetic ----------------------------------


def _highlight_reference(st: int, et: int, length: int) -> list[int]:
    """The original's ``train_collate_fn`` loop, one sample."""
    h = [0] * length
    extend_len = round(0.1 * float(et - st + 1))
    if extend_len > 0:
        st_, et_ = max(0, st - extend_len), min(et + extend_len, length - 1)
    else:
        st_, et_ = st, et
    for i in range(st_, et_ + 1):
        h[i] = 1
    return h


def test_highlight_labels_hand_examples():
    # 10 cells: extended by round(1.0) = 1 each side.
    assert highlight_labels(10, 19, 30).nonzero().flatten().tolist() == list(range(9, 21))
    # 5 cells: round(0.5) = 0 (half to even), no extension.
    assert highlight_labels(2, 6, 10).nonzero().flatten().tolist() == [2, 3, 4, 5, 6]
    # 15 cells: round(1.5) = 2, clipped to the sample at both ends.
    assert highlight_labels(1, 15, 17).nonzero().flatten().tolist() == list(range(17))
    # 25 cells: round(2.5) = 2.
    assert highlight_labels(5, 29, 40).nonzero().flatten().tolist() == list(range(3, 32))
    rng = np.random.default_rng(0)
    for _ in range(200):
        length = int(rng.integers(1, 60))
        st = int(rng.integers(0, length))
        et = int(rng.integers(st, length))
        assert highlight_labels(st, et, length).tolist() == _highlight_reference(st, et, length)


def _pooling_reference(x: np.ndarray, m: int) -> np.ndarray:
    """The original's ``visual_feature_sampling``, in float64."""
    n = x.shape[0]
    if n <= m:
        return x
    idxs = np.arange(0, m + 1, 1.0) / m * n
    idxs = np.round(idxs).astype(np.int32)
    idxs[idxs > n - 1] = n - 1
    rows = []
    for i in range(m):
        s, e = idxs[i], idxs[i + 1]
        rows.append(np.mean(x[s:e], axis=0) if s < e else x[s])
    return np.asarray(rows)


@pytest.mark.parametrize(("n", "m"), [(5, 8), (8, 8), (9, 8), (20, 7), (300, 256), (897, 256)])
def test_visual_feature_sampling_matches_the_original(n, m):
    x = torch.from_numpy(np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32))
    got = visual_feature_sampling(x, m)
    want = _pooling_reference(x.numpy().astype(np.float64), m)
    assert got.dtype == torch.float32 and got.shape == (min(n, m), 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    if n <= m:
        assert got is x


def test_decode_topk_hand_example():
    # 3 valid cells of 4; the padded cell gets a huge logit that must never be picked.
    ps, pe = [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]
    start = torch.tensor([[math.log(p) for p in ps] + [100.0]])
    end = torch.tensor([[math.log(p) for p in pe] + [100.0]])
    # Upper-triangle products: (1,2) .30, (1,1) .18, (2,2) .15, (0,2) .05, (0,1) .03, (0,0) .02;
    # the lower-triangle (2,1) = .09 is excluded.
    got = decode_topk(start, end, torch.tensor([3]), k=5)
    assert got[0].tolist() == [[1, 2], [1, 1], [2, 2], [0, 2], [0, 1]]
    # More pairs asked than the 6 valid ones: the last is repeated.
    got = decode_topk(start, end, torch.tensor([3]), k=8)
    assert got[0, 5:].tolist() == [[0, 0], [0, 0], [0, 0]]
    # One valid cell: the only pair.
    assert decode_topk(start, end, torch.tensor([1]), k=2)[0].tolist() == [[0, 0], [0, 0]]
    # Equal probabilities: ties go to the smaller (start, end).
    flat = torch.zeros(1, 3)
    assert decode_topk(flat, flat, torch.tensor([3]), 3)[0].tolist() == [[0, 0], [0, 1], [0, 2]]
    with pytest.raises(InputError, match=r"lengths must be in \[1, 4\]"):
        decode_topk(start, end, torch.tensor([5]), k=1)


def test_decode_topk_never_picks_padding_of_a_peaked_model():
    # Probabilities so peaked that float32 products of all other pairs underflow to 0.
    start = torch.full((1, 8), -200.0)
    end = torch.full((1, 8), -200.0)
    start[0, 2] = end[0, 3] = 200.0
    got = decode_topk(start, end, torch.tensor([5]), k=5)
    assert got[0, 0].tolist() == [2, 3]
    assert int(got.max()) < 5 and bool((got[0, :, 0] <= got[0, :, 1]).all())


# -- feature files --------------------------------------------------------------------------------


def _write(path, obj):
    torch.save(obj, path)
    return path


def test_feature_files_load_sorted_and_pooled(tmp_path):
    dicts = synthetic_feature_dicts(3, 5, max_pos_len=MAX_POS, windows=(40, 40))
    # The original's own layout: nested text_token and 0-d tensor fields.
    nested = dict(dicts[1])
    nested["text_token"] = {"attention_mask": nested.pop("text_token.attention_mask")}
    for k in ("s_ind", "e_ind", "v_len", "sample_id", "query_idx"):
        nested[k] = torch.tensor(nested[k])
    nested["duration"] = torch.tensor(nested["duration"], dtype=torch.float64)
    for name, d in (("feat_2.pt", dicts[0]), ("feat_10.pt", nested), ("feat_1.pt", dicts[2])):
        _write(tmp_path / name, d)
    samples = load_nlq_features(tmp_path, max_pos_len=MAX_POS)
    assert [s.source.rsplit("/", 1)[1] for s in samples] == ["feat_1.pt", "feat_10.pt", "feat_2.pt"]
    s = samples[1]
    assert s.video.shape == (MAX_POS, VIDEO_DIM) and s.v_len == MAX_POS
    assert s.text.shape == (6, TEXT_DIM) and s.text_mask.dtype == torch.int64
    assert s.vid == "clip5_1" and s.duration == 60.0 and isinstance(s.s_ind, int)
    ref = _pooling_reference(dicts[1]["fused_video_features"].double().numpy(), MAX_POS)
    np.testing.assert_allclose(s.video.numpy(), ref, rtol=1e-6, atol=1e-6)


def _good() -> dict:
    return synthetic_feature_dicts(1, 9, max_pos_len=MAX_POS, windows=(20, 20))[0]


class _NotATensor:
    pass


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("fused_video_features"), "missing key 'fused_video_features'"),
        (lambda d: d.pop("e_time"), "missing key 'e_time'"),
        (lambda d: d.pop("text_token.attention_mask"), "missing key 'text_token.attention_mask'"),
        (
            lambda d: d.update(fused_video_features=torch.zeros(20)),
            r"'fused_video_features' must have 2 dimensions, got shape \(20,\)",
        ),
        (
            lambda d: d.update(fused_video_features=torch.zeros(20, 16, dtype=torch.float64)),
            "'fused_video_features' must be float32, got torch.float64",
        ),
        (
            lambda d: d.update(dual_text_features=torch.zeros(2, 6, 8)),
            r"must be \[1, L, Dt\] with L, Dt >= 1, got \(2, 6, 8\)",
        ),
        (
            lambda d: d.update({"text_token.attention_mask": torch.ones(1, 5, dtype=torch.int64)}),
            r"attention mask must be \[1, 6\] like the text features, got \(1, 5\)",
        ),
        (
            lambda d: d.update({"text_token.attention_mask": torch.full((1, 6), 2)}),
            "attention mask must be 0/1 with at least one 1",
        ),
        (
            lambda d: d["fused_video_features"].__setitem__((3, 2), float("nan")),
            "'fused_video_features' contains NaN",
        ),
        (lambda d: d.update(v_len=19), r"'v_len' is 19 but min\(max_pos_len=32, N_win=20\) = 20"),
        (lambda d: d.update(s_ind=5, e_ind=4), "must satisfy 0 <= s_ind <= e_ind < v_len = 20"),
        (lambda d: d.update(e_ind=20), "must satisfy 0 <= s_ind <= e_ind"),
        (lambda d: d.update(duration=0.0), "'duration' must be > 0 seconds"),
        (lambda d: d.update(e_time=-1.0), "'e_time' -1.0 is before 's_time'"),
        (lambda d: d.update(s_ind=2.5), "'s_ind' must be an integer, got 2.5"),
        (lambda d: d.update(s_ind=torch.tensor(2.0)), "'s_ind' must be an integer"),
        (lambda d: d.update(duration="60"), "'duration' must be a number, got str"),
        (lambda d: d.update(duration=float("inf")), "'duration' must be finite"),
        (lambda d: d.update(vid=3), "'vid' must be a string, got int"),
    ],
)
def test_bad_feature_dicts(tmp_path, edit, match):
    d = _good()
    edit(d)
    path = _write(tmp_path / "feat_0.pt", d)
    with pytest.raises(InputError, match=match) as info:
        load_nlq_feature_file(path, max_pos_len=MAX_POS)
    assert str(path) in str(info.value)


def test_pickled_objects_and_garbage_are_refused(tmp_path):
    d = _good()
    d["extra"] = _NotATensor()
    path = _write(tmp_path / "evil.pt", d)
    with pytest.raises(UnsafeFileError, match=r"evil.pt: refused, reading it would run code"):
        load_nlq_feature_file(path)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"garbage\.pt: not a readable torch feature file"):
        load_nlq_feature_file(bad)
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    (tmp_path / "list.pt").write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="expected a dict of features, got list"):
        load_nlq_feature_file(tmp_path / "list.pt")
    with pytest.raises(InputError, match=r"no \*\.pt NLQ feature files"):
        load_nlq_features(_empty(tmp_path))


def _empty(tmp_path):
    p = tmp_path / "empty"
    p.mkdir()
    return p


def test_feature_size_mismatch_across_files(tmp_path):
    a, b = synthetic_feature_dicts(2, 4, max_pos_len=MAX_POS)
    b["fused_video_features"] = torch.zeros(b["fused_video_features"].shape[0], 5)
    _write(tmp_path / "a.pt", a)
    _write(tmp_path / "b.pt", b)
    with pytest.raises(InputError, match=r"b.pt: feature sizes \(video 5, text 8\) differ"):
        load_nlq_features(tmp_path, max_pos_len=MAX_POS)


# -- config, training, files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"variant": "tiny"}, "variant must be 'full' or 'small'"),
        ({"dim": 30, "num_heads": 8}, "dim must be a multiple of num_heads=8"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_steps": 0}, "max_steps must be None or an integer >= 1"),
        ({"drop_rate": 1.0}, r"drop_rate must be in \[0, 1\)"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"device": "tpu"}, "device must be 'cpu', 'cuda' or 'auto'"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(InputError, match=match):
        NLQHeadConfig(**kw)


def test_config_defaults_are_the_original_and_roundtrip():
    c = NLQHeadConfig()
    assert (c.dim, c.num_heads, c.max_pos_len, c.lr, c.weight_decay) == (128, 8, 256, 1e-3, 0.01)
    assert (c.batch_size, c.epochs, c.clip_norm, c.drop_rate, c.highlight_lambda) == (
        32, 50, 1.0, 0.2, 5.0,
    )  # fmt: skip
    assert NLQHeadConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(InputError, match=r"unknown settings \['width'\]"):
        NLQHeadConfig.from_dict({"width": 3})
    assert c.run_steps(100) == 50 * 4 and NLQHeadConfig(max_steps=7).run_steps(100) == 7


def test_no_decay_on_biases_and_layer_norms():
    from egovlpv2_rt.tasks.episodic.nlq_head import _param_groups

    model = _tiny()
    decay, no_decay = _param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = sorted(names[id(p)] for p in no_decay["params"])
    assert all(n.endswith(".bias") or "norm" in n for n in nd)
    assert "feature_encoder.conv_block.layer_norms.0.weight" in nd
    d = {names[id(p)] for p in decay["params"]}
    assert {"cq_attention.w4C", "query_affine.weight", "feature_encoder.pos_embedding.weight"} <= d
    assert len(nd) + len(d) == len(names) and decay["weight_decay"] == 0.01


@pytest.mark.parametrize("variant", ["full", "small"])
def test_training_is_seeded_and_bitwise_deterministic(variant):
    train = _samples(20, 0)
    cfg = _config(variant=variant, max_steps=4)
    rng_before = torch.get_rng_state()
    m1, log1 = train_nlq_head(train, cfg)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    m2, _ = train_nlq_head(train, cfg)
    m3, _ = train_nlq_head(train, _config(variant=variant, max_steps=4, seed=1))
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    # It trained: the weights moved from their initial values.
    torch.manual_seed(cfg.seed)  # the initial weights of the run
    init = build_nlq_model(NLQHeadConfig(**log1["config"]))
    assert log1["steps"] == 4 and log1["train_loss"][-1]["step"] == 4
    assert not torch.equal(init.state_dict()["query_affine.weight"], s1["query_affine.weight"])
    assert log1["train_loss"][-1]["lr"] == 0.0  # linear decay to 0, no warm-up


def test_save_load_and_predictions_equal(tmp_path):
    train, val = _samples(16, 0), _samples(6, 1)
    model, log = train_nlq_head(train, _config(max_steps=3, eval_every=2), val_samples=val,
                                out_dir=tmp_path)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, LOG_NAME]
    assert [v["step"] for v in log["val"]] == [2, 3] and log["selected_step"] == 3
    cfg = read_nlq_head_config(tmp_path)
    assert (cfg.video_dim, cfg.text_dim, cfg.dim) == (VIDEO_DIM, TEXT_DIM, 16)
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == cfg.to_dict()
    loaded = load_nlq_head(tmp_path / WEIGHTS_NAME)
    assert not loaded.training
    a, b = predict_spans(model, val, k=5), predict_spans(loaded, val, k=5)
    assert a.shape == (6, 5, 2) and np.array_equal(a, b)
    assert {k: v for k, v in log["val"][-1].items() if k != "step"} == evaluate_nlq_head(
        loaded, val
    )
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(InputError, match=r"no 'egovlpv2\.nlq_head_config' metadata"):
        load_nlq_head(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="weights file does not exist"):
        load_nlq_head(tmp_path / "missing")


def test_predicted_spans_are_on_the_sample_grid():
    samples = _samples(5, 2)
    pred = predict_spans(_tiny(), samples, k=5)
    for s, spans in zip(samples, pred, strict=True):
        grid = {index_to_time(i, i, s.v_len, s.duration) for i in range(s.v_len)}
        starts = {g[0] for g in grid}
        ends = {g[1] for g in grid}
        assert all(a in starts and b in ends and a < b for a, b in spans)
        assert spans.max() <= s.duration + 1e-4


def test_select_best_needs_a_dev_split_and_mismatched_dims():
    train = _samples(8, 0)
    with pytest.raises(InputError, match="select_best_on_val needs val_samples"):
        train_nlq_head(train, _config(max_steps=1, select_best_on_val=True))
    with pytest.raises(InputError, match="video_dim is 768 but the training features have size 16"):
        train_nlq_head(train, _config(max_steps=1, video_dim=768))
    with pytest.raises(InputError, match="no training samples"):
        train_nlq_head([], _config(max_steps=1))


def test_random_spans_baseline():
    samples = _samples(50, 3)
    r = random_spans(samples, 5, seed=0)
    assert r.shape == (50, 5, 2) and bool((r[..., 0] < r[..., 1]).all())
    assert r.min() >= 0 and r.max() <= 60.0
    assert np.array_equal(r, random_spans(samples, 5, seed=0))
    assert not np.array_equal(r, random_spans(samples, 5, seed=1))


def test_learns_synthetic_queries_far_above_random_spans():
    train, test = _samples(256, 0), _samples(128, 1)
    model, log = train_nlq_head(train, _config(max_steps=200, seed=0))
    trained = evaluate_nlq_head(model, test)
    gt = np.array([[s.s_time, s.e_time] for s in test])
    random = nlq_recall(random_spans(test, 5, seed=0), gt)
    print("trained", trained, "random", random, "s/step", log["seconds_per_step"])
    assert random["R@1_IoU0.3"] < 25.0
    assert trained["R@1_IoU0.3"] > 70.0
    assert trained["R@1_IoU0.5"] > random["R@1_IoU0.5"] + 40.0
    assert log["train_loss"][-1]["loss"] < log["train_loss"][0]["loss"]


# -- torchrun: 2 gloo processes ------------------------------------------------------------------


def _ddp_config() -> NLQHeadConfig:
    return _config(max_steps=3, drop_rate=0.0, batch_size=8)


def _ddp_samples():
    # Equal clip lengths: every rank's loss normalisers are equal, so the DDP-averaged gradient
    # is the one-process gradient of the global batch.
    dicts = synthetic_feature_dicts(16, 6, max_pos_len=MAX_POS, windows=(24, 24))
    return [parse_nlq_feature_dict(d, f"ddp{i}", MAX_POS) for i, d in enumerate(dicts)]


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model, log = train_nlq_head(_ddp_samples(), _ddp_config(), out_dir=f"{out_dir}/head")
        assert log["world_size"] == 2
        assert log["samples_seen_by_rank"] == 3 * 4  # half of each global batch of 8
        torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    one, log = train_nlq_head(_ddp_samples(), _ddp_config())
    assert log["samples_seen_by_rank"] == 3 * 8
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the ranks stay in sync
    for k, v in one.state_dict().items():
        torch.testing.assert_close(r0[k], v, atol=1e-5, rtol=1e-4, msg=k)
    # Only rank 0 wrote the head, and it loads.
    loaded = load_nlq_head(tmp_path / "head")
    assert all(torch.equal(loaded.state_dict()[k], r0[k]) for k in r0)
