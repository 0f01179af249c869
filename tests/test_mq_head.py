"""The built-in EgoMQ detection head: shapes, targets, decoding and NMS on hand-made cases,
determinism, save/load, bad feature files, 2-process gloo, and learning on synthetic features."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from egovlpv2_rt.errors import InputError, UnsafeFileError
from egovlpv2_rt.eval.detection import detection_map
from egovlpv2_rt.tasks.episodic.mq_head import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    MQClip,
    MQHead,
    MQHeadConfig,
    load_clip_features,
    load_mq_head,
    pad_features,
)
from egovlpv2_rt.tasks.episodic.mq_targets import build_targets, decode_clip, nms_1d
from egovlpv2_rt.tasks.episodic.mq_train import (
    evaluate_mq_head,
    ground_truth_records,
    predict_moments,
    random_detections,
    train_mq_head,
)

LABELS = ("open", "cut", "wash")
RATE = 1.87  # feature windows per second, as the original's MQ features


def synthetic_clips(seed: int, n: int, t: int = 64, c: int = 16, noise: float = 0.5):
    """Clips of ``t`` windows: Gaussian noise, plus 1 on feature dim ``k`` inside every moment
    of class ``k``; 3-16-window moments with 2-9-window gaps."""
    g = np.random.default_rng(seed)
    clips, feats = [], {}
    duration = t / RATE
    for i in range(n):
        x = g.normal(0.0, noise, (t, c)).astype(np.float32)
        moments = []
        pos = int(g.integers(0, 6))
        while True:
            length = int(g.integers(3, 17))
            if pos + length > t:
                break
            k = int(g.integers(0, len(LABELS)))
            x[pos : pos + length, k] += 1.0
            moments.append((LABELS[k], pos * duration / t, (pos + length) * duration / t))
            pos += length + int(g.integers(2, 10))
        uid = f"clip{seed}_{i}"
        clips.append(MQClip(uid, duration, tuple(moments)))
        feats[uid] = torch.from_numpy(x)
    return clips, feats


@pytest.fixture(autouse=True)
def one_thread():
    """The head's tensors are tiny: intra-op threads only add contention (10x slower on a
    loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = {"hidden_dim": 32, "num_layers": 2, "num_levels": 3, "batch_size": 8, "lr": 3e-3}


# -- model ----------------------------------------------------------------------------------------


def test_forward_shapes_and_masks():
    torch.manual_seed(0)
    cfg = MQHeadConfig(hidden_dim=16, num_levels=3)
    model = MQHead(12, LABELS, cfg).eval()
    feats, mask = pad_features([torch.randn(10, 12), torch.randn(3, 12)], cfg.pad_multiple)
    assert feats.shape == (2, 12, 12) and mask.sum(1).tolist() == [10.0, 3.0]
    logits, dists, masks = model(feats, mask)
    assert [tuple(x.shape) for x in logits] == [(2, 12, 3), (2, 6, 3), (2, 3, 3)]
    assert [tuple(x.shape) for x in dists] == [(2, 12, 2), (2, 6, 2), (2, 3, 2)]
    assert bool((torch.cat([d.flatten() for d in dists]) >= 0).all())
    # level l position j is valid when it covers a real window: j * 2**l < N
    assert masks[1][0].tolist() == [1, 1, 1, 1, 1, 0] and masks[2][1].tolist() == [1, 0, 0]
    with pytest.raises(InputError, match="multiple of 4"):
        model(torch.zeros(1, 6, 12), torch.ones(1, 6))


def test_batched_rows_equal_the_clip_alone():
    torch.manual_seed(1)
    cfg = MQHeadConfig(hidden_dim=16, num_levels=3)
    model = MQHead(8, LABELS, cfg).eval()
    a, b = torch.randn(10, 8), torch.randn(23, 8)
    batch = model(*pad_features([a, b], cfg.pad_multiple))
    alone = model(*pad_features([a], cfg.pad_multiple))
    for lvl in range(3):
        n = alone[0][lvl].shape[1]  # a alone is padded to 12, in the batch to 24
        torch.testing.assert_close(batch[0][lvl][0, :n], alone[0][lvl][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batch[1][lvl][0, :n], alone[1][lvl][0], rtol=1e-5, atol=1e-6)


# -- targets, decoding, NMS -----------------------------------------------------------------------


def test_targets_hand_worked():
    cfg = MQHeadConfig(num_levels=2, regression_base=4.0)  # ranges [0, 4) and [4, inf)
    levels = build_targets([(1, 2.0, 8.0), (0, 3.1, 3.4)], 8, 3, cfg)
    l0, l1 = levels
    # Level 0 centres j + 0.5 inside [2, 8]: j = 2..7 with (left, right) = (c - 2, 8 - c):
    # j=2 (0.5, 5.5), j=3 (1.5, 4.5), j=4 (2.5, 3.5), j=5 (3.5, 2.5), j=6 (4.5, 1.5),
    # j=7 (5.5, 0.5): max < 4 only for j = 4, 5.
    # [3.1, 3.4] contains no centre on either level: its midpoint cell j = 3 gets it,
    # distances clamped: (3.5 - 3.1, max(3.4 - 3.5, 0)) = (0.4, 0).
    assert l0.pos.tolist() == [False, False, False, True, True, True, False, False]
    assert l0.cls[:, 1].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert l0.cls[:, 0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    torch.testing.assert_close(l0.dist[3:6], torch.tensor([[0.4, 0.0], [2.5, 3.5], [3.5, 2.5]]))
    # Level 1 centres 1, 3, 5, 7: inside for 3 (1, 5), 5 (3, 3), 7 (5, 1); max >= 4 for 3 and 7.
    assert l1.pos.tolist() == [False, True, False, True]
    torch.testing.assert_close(
        l1.dist, torch.tensor([[0.0, 0.0], [1.0, 5.0], [0.0, 0.0], [5.0, 1.0]])
    )
    assert l1.cls.sum().item() == 2.0 and l1.cls[:, 1].tolist() == [0, 1, 0, 1]


def test_overlapping_moments_share_classes_and_take_the_shorter_distances():
    cfg = MQHeadConfig(num_levels=1)
    (l0,) = build_targets([(0, 0.0, 8.0), (2, 3.0, 5.0)], 8, 3, cfg)
    # centre 3.5 and 4.5 lie in both: classes 0 and 2, distances of the 2-window moment
    assert l0.cls[3].tolist() == [1, 0, 1] and l0.cls[4].tolist() == [1, 0, 1]
    torch.testing.assert_close(l0.dist[3], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(l0.dist[0], torch.tensor([0.5, 7.5]))


def test_hard_and_soft_nms_hand_worked():
    segs = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    # [1, 10] has tIoU 9/10 with [0, 10] > 0.5: dropped
    ks, kc = nms_1d(segs, scores, mode="hard", threshold=0.5, sigma=0.5, top_k=10)
    assert ks.tolist() == [[0.0, 10.0], [20.0, 30.0]] and kc.tolist() == [0.9, 0.7]
    # soft: 0.8 * exp(-0.81 / 0.5) = 0.15833 falls below 0.7; [20, 30] has tIoU 0: kept as is
    ks, kc = nms_1d(segs, scores, mode="soft", threshold=0.5, sigma=0.5, top_k=10)
    assert ks.tolist() == [[0.0, 10.0], [20.0, 30.0], [1.0, 10.0]]
    np.testing.assert_allclose(kc.numpy(), [0.9, 0.7, 0.8 * math.exp(-0.81 / 0.5)], rtol=1e-12)
    ks, _ = nms_1d(segs, scores, mode="soft", threshold=0.5, sigma=0.5, top_k=2)
    assert len(ks) == 2


def test_decode_clip_hand_worked():
    cfg = MQHeadConfig(num_levels=1, score_threshold=0.1, nms_mode="hard", nms_threshold=0.5)
    logits = torch.full((4, 2), -20.0)
    logits[1, 0] = 0.0  # p = 0.5
    logits[2, 0] = math.log(0.25 / 0.75)  # p = 0.25
    logits[3, 1] = math.log(0.2 / 0.8)  # p = 0.2
    dists = torch.tensor([[1.0, 1.0], [1.5, 0.5], [2.5, 0.5], [0.5, 10.0]])
    # 4 windows over 8 s: 2 s per window. Position 1 (centre 1.5): [0, 2] windows = [0, 4] s;
    # position 2 (centre 2.5): [0, 3] = [0, 6] s, tIoU 4/6 with [0, 4] > 0.5: suppressed;
    # position 3 (centre 3.5), class 1: [3, 13.5] = [6, 27] s, clamped to the clip: [6, 8].
    dets = decode_clip([logits], [dists], [torch.ones(4)], 4, 8.0, cfg)
    assert [(k, s, e) for k, s, e, _ in dets] == [(0, 0.0, 4.0), (1, 6.0, 8.0)]
    np.testing.assert_allclose([d[3] for d in dets], [0.5, 0.2], rtol=1e-6)  # float32 logits
    # padding positions never produce a detection
    assert decode_clip([logits], [dists], [torch.tensor([1.0, 0, 0, 0])], 1, 8.0, cfg) == []


# -- training -------------------------------------------------------------------------------------


def test_training_is_deterministic_and_the_seed_matters():
    clips, feats = synthetic_clips(3, 6, t=32, c=8)
    cfg = MQHeadConfig(**{**SMALL, "epochs": 2, "batch_size": 4})
    m1, log1 = train_mq_head(clips, feats, LABELS, cfg)
    m2, log2 = train_mq_head(clips, feats, LABELS, cfg)
    m3, _ = train_mq_head(clips, feats, LABELS, MQHeadConfig(**{**SMALL, "epochs": 2, "seed": 5}))
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert [r["loss"] for r in log1] == [r["loss"] for r in log2]
    assert [r["steps"] for r in log1] == [2.0, 4.0]  # 6 clips, batch 4: 2 steps per epoch
    assert log1[-1]["loss"] < log1[0]["loss"]


def test_save_load_round_trip_from_a_feature_folder(tmp_path):
    clips, feats = synthetic_clips(4, 4, t=32, c=8)
    folder = tmp_path / "features"
    folder.mkdir()
    for uid, x in feats.items():
        torch.save(x, folder / f"{uid}.pt")
    cfg = MQHeadConfig(**{**SMALL, "epochs": 1, "max_detections": 20})
    model, log = train_mq_head(clips, folder, LABELS, cfg, out_dir=tmp_path / "head")
    # the same weights as training from the in-memory mapping
    ref, _ = train_mq_head(clips, feats, LABELS, cfg)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    for source in (tmp_path / "head", tmp_path / "head" / WEIGHTS_NAME):
        loaded = load_mq_head(source)
        assert loaded.labels == LABELS and loaded.config == cfg and loaded.in_dim == 8
        sd = loaded.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    desc = json.loads((tmp_path / "head" / CONFIG_NAME).read_text())
    assert desc["labels"] == list(LABELS) and desc["config"]["hidden_dim"] == 32
    assert desc["log"][0]["loss"] == log[0]["loss"]
    preds = predict_moments(loaded, clips, folder, LABELS)
    assert preds == predict_moments(model, clips, feats, LABELS)
    assert 0 < len(preds) <= 20 * len(clips)
    assert all(0.0 <= p["start"] <= p["end"] <= clips[0].duration for p in preds)
    with pytest.raises(InputError, match="differ from the head"):
        predict_moments(loaded, clips, feats, ("a", "b", "c"))
    with pytest.raises(InputError, match="expected feature dim 8"):
        predict_moments(loaded, clips, {c.clip_uid: torch.zeros(5, 9) for c in clips}, LABELS)


def test_load_mq_head_refuses_other_files(tmp_path):
    with pytest.raises(InputError, match=r"from a \.safetensors file only"):
        load_mq_head(tmp_path / "head.pt")
    with pytest.raises(InputError, match="weights not found"):
        load_mq_head(tmp_path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(InputError, match="no egovlpv2_mq_head metadata"):
        load_mq_head(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_mq_head(tmp_path / "bad.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("ran code",))


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, InputError, "not found"),
        (torch.zeros(5), InputError, r"\[N, C\] tensor with N >= 1, got shape \(5,\)"),
        (torch.zeros(0, 8), InputError, r"got shape \(0, 8\)"),
        (torch.zeros(4, 8, dtype=torch.int64), InputError, "floating-point"),
        ({"features": torch.zeros(4, 8)}, InputError, "got dict"),
        (torch.full((4, 8), math.nan), InputError, "NaN or infinite"),
        (torch.zeros(4, 7), InputError, "expected feature dim 8, got 7"),
        (_Payload(), UnsafeFileError, "refused"),
        (b"plain text, not torch", InputError, "not a torch.save file"),
    ],
)
def test_bad_feature_files_name_the_file(tmp_path, content, error, match):
    path = tmp_path / "c1.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, _Payload):
        torch.save({"x": content}, path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(error, match=match) as info:
        load_clip_features(tmp_path, "c1", dim=8)
    assert str(path) in str(info.value)


def test_good_feature_file_loads_as_float32(tmp_path):
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.save(x, tmp_path / "c2.pt")
    got = load_clip_features(tmp_path, "c2", dim=8)
    assert got.dtype == torch.float32 and torch.equal(got, x.float())


def test_config_and_clip_validation():
    with pytest.raises(InputError, match=r"MQHeadConfig.hidden_dim must be > 0"):
        MQHeadConfig(hidden_dim=0)
    with pytest.raises(InputError, match=r"MQHeadConfig.nms_mode must be 'hard' or 'soft'"):
        MQHeadConfig(nms_mode="linear")
    with pytest.raises(InputError, match=r"MQHeadConfig.dropout must lie in \[0, 1\)"):
        MQHeadConfig(dropout=1.0)
    with pytest.raises(InputError, match=r"MQHeadConfig.epochs must be an int"):
        MQHeadConfig(epochs=2.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="clip c: moments\\[0\\] ends before it starts"):
        MQClip("c", 10.0, (("open", 5.0, 4.0),))
    with pytest.raises(InputError, match="clip c: duration must be > 0"):
        MQClip("c", 0.0)
    clips, feats = synthetic_clips(0, 1, t=16, c=4)
    bad = [MQClip(clips[0].clip_uid, clips[0].duration, (("jump", 1.0, 2.0),))]
    with pytest.raises(InputError, match="moment label 'jump' is not in labels"):
        train_mq_head(bad, feats, LABELS, MQHeadConfig(**{**SMALL, "epochs": 1}))
    with pytest.raises(InputError, match="no entry for clip"):
        train_mq_head(clips, {}, LABELS, MQHeadConfig(**{**SMALL, "epochs": 1}))


def test_random_detections_are_seeded_and_inside_the_clip():
    clips, _ = synthetic_clips(0, 3, t=16, c=4)
    a = random_detections(clips, LABELS, seed=3, per_clip=7)
    assert a == random_detections(clips, LABELS, seed=3, per_clip=7)
    assert a != random_detections(clips, LABELS, seed=4, per_clip=7)
    assert len(a) == 21 and {d["video"] for d in a} == {c.clip_uid for c in clips}
    assert all(0 <= d["start"] <= d["end"] <= clips[0].duration for d in a)
    assert {d["label"] for d in a} <= set(LABELS)


def test_learns_synthetic_moments_well_above_random():
    train, train_feats = synthetic_clips(1, 32)
    test, test_feats = synthetic_clips(2, 20)  # held out: other seed
    cfg = MQHeadConfig(**{**SMALL, "epochs": 20, "seed": 0, "max_detections": 100})
    model, log = train_mq_head(train, train_feats, LABELS, cfg)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    res = evaluate_mq_head(model, test, test_feats, LABELS)
    rnd = detection_map(
        random_detections(test, LABELS, seed=0, per_clip=100), ground_truth_records(test)
    )
    # Measured: trained average 84.8 (mAP@0.5 72.1, R@1x_IoU0.5 70.0), random 17.1 (mAP@0.5 3.8).
    assert res["average"] > 70.0
    assert rnd["average"] < 30.0
    assert res["mAP@0.5"] > rnd["mAP@0.5"] + 50.0
    assert res["R@1x_IoU0.5"] > 50.0


# -- 2 gloo processes -----------------------------------------------------------------------------


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        clips, feats = synthetic_clips(5, 6, t=32, c=8)
        cfg = MQHeadConfig(**{**SMALL, "epochs": 2, "batch_size": 2})
        model, log = train_mq_head(clips, feats, LABELS, cfg, out_dir=Path(out_dir) / "head")
        torch.save(
            {"state": model.state_dict(), "loss": torch.tensor([r["loss"] for r in log])},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_training_keeps_ranks_in_step(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # DDP averages the gradients: both ranks hold the same weights after every step
    assert all(torch.equal(v, r1["state"][k]) for k, v in r0["state"].items())
    # ... while each saw its own clips (6 clips, 2 ranks x 2 per step: 2 steps per epoch)
    assert not torch.equal(r0["loss"], r1["loss"])
    saved = load_mq_head(tmp_path / "head")  # written once, by rank 0
    assert all(torch.equal(v, r0["state"][k]) for k, v in saved.state_dict().items())
    assert json.loads((tmp_path / "head" / CONFIG_NAME).read_text())["log"][-1]["steps"] == 4.0
