"""EK-100 multi-instance retrieval task: readers, sampler, transform, training pairs,
evaluation and the synthetic split."""

from __future__ import annotations

import math
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from egovlpv2_rt.errors import InputError, UnsafeFileError
from egovlpv2_rt.eval.metrics import ek100_mir_metrics
from egovlpv2_rt.tasks.ek100_data import (
    CLIP_COLUMNS,
    EK100Layout,
    load_ek100_split,
    parse_timestamp,
    read_clip_csv,
    read_relevancy,
    read_sentence_csv,
)
from egovlpv2_rt.tasks.ek100_mir import (
    EK100MIRDataset,
    choose_training_caption,
    evaluate_ek100_mir,
)
from egovlpv2_rt.tasks.ek100_synth import (
    NOUN_CLASSES,
    EK100SynthConfig,
    semantic_relevancy,
    synthesize_ek100_mir,
)
from egovlpv2_rt.tasks.ek100_video import (
    EK100_MEAN,
    EK100_STD,
    ek100_frame_ids,
    ek100_transform,
    plan_ek100_clip,
)
from egovlpv2_rt.video.reader import read_plan
from egovlpv2_rt.video.synthetic import read_frame_code, write_video

HEADER = ",".join(CLIP_COLUMNS)
ROW = (
    'P01_01_0,P01,P01_01,00:00:01.50,00:00:01.089,00:01:02.50,65,3750,"wash tap, water",wash,2,'
    "tap,3,\"['tap', 'water']\",\"[3, 27]\""
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    return synthesize_ek100_mir(tmp_path_factory.mktemp("ek100"), 5)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- readers


def test_clip_csv_reads_quoted_list_fields_and_timestamps(tmp_path):
    p = tmp_path / "EPIC_100_retrieval_test.csv"
    p.write_text(HEADER + "\n" + ROW + "\n")
    (c,) = read_clip_csv(p)
    assert (c.narration_id, c.participant_id, c.video_id) == ("P01_01_0", "P01", "P01_01")
    assert c.start_sec == pytest.approx(1.089, abs=1e-12)
    assert c.stop_sec == 62.5
    assert c.narration == "wash tap, water"
    assert c.all_nouns == ("tap", "water") and c.all_noun_classes == (3, 27)
    assert (c.verb_class, c.noun_class, c.start_frame, c.stop_frame) == (2, 3, 65, 3750)
    assert parse_timestamp("01:02:03.25") == 3723.25


def test_clip_csv_missing_column(tmp_path):
    p = tmp_path / "EPIC_100_retrieval_train.csv"
    cols = [c for c in CLIP_COLUMNS if c != "verb_class"]
    p.write_text(",".join(cols) + "\n")
    with pytest.raises(InputError) as e:
        read_clip_csv(p)
    msg = _one_line(e)
    assert str(p) in msg and "missing column(s) ['verb_class']" in msg and HEADER in msg


@pytest.mark.parametrize(
    ("old", "new", "line_col"),
    [
        ("00:01:02.50", "62.5", "column 'stop_timestamp'"),
        ('"[3, 27]"', '"[3, x]"', "column 'all_noun_classes'"),
        (",65,", ",six,", "column 'start_frame'"),
    ],
)
def test_clip_csv_bad_field_names_line_and_column(tmp_path, old, new, line_col):
    p = tmp_path / "EPIC_100_retrieval_train.csv"
    p.write_text(HEADER + "\n" + ROW.replace(old, new) + "\n")
    with pytest.raises(InputError) as e:
        read_clip_csv(p)
    msg = _one_line(e)
    assert f"{p}: line 2, {line_col}" in msg


def test_clip_csv_wrong_field_count(tmp_path):
    p = tmp_path / "EPIC_100_retrieval_train.csv"
    p.write_text(HEADER + "\n" + ROW + ",extra\n")
    with pytest.raises(InputError, match=r"line 2: expected 15 fields as the header, got 16"):
        read_clip_csv(p)


def test_sentence_csv(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text('narration_id,narration\nP01_01_0,"wash tap, water"\n')
    (s,) = read_sentence_csv(p)
    assert (s.narration_id, s.text) == ("P01_01_0", "wash tap, water")
    p.write_text("narration_id\nP01_01_0\n")
    with pytest.raises(InputError, match=r"line 1: 1 column\(s\).*expected 2"):
        read_sentence_csv(p)


def _copy_split(synth: dict[str, Path], dst: Path) -> EK100Layout:
    ann = dst / "retrieval_annotations"
    (ann / "relevancy").mkdir(parents=True)
    for src in synth["annotations"].rglob("*"):
        if src.is_file():
            (ann / src.relative_to(synth["annotations"])).write_bytes(src.read_bytes())
    return EK100Layout(ann, synth["videos"])


def test_relevancy_shape_must_match_csvs(synth, tmp_path):
    lay = _copy_split(synth, tmp_path)
    rel = lay.relevancy("test")
    n_captions = len(read_sentence_csv(lay.sentence_csv("test")))
    rel.write_bytes(pickle.dumps(np.zeros((12, 3))))
    with pytest.raises(InputError) as e:
        load_ek100_split(lay, "test")
    msg = _one_line(e)
    assert str(rel) in msg and f"shape (12, 3); expected (12, {n_captions})" in msg


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_relevancy_pickle_with_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "rel.pkl"
    p.write_bytes(pickle.dumps({"rel": np.zeros((2, 2)), "x": _Payload(marker)}))
    with pytest.raises(UnsafeFileError) as e:
        read_relevancy(p)
    msg = _one_line(e)
    assert str(p) in msg and "pathlib" in msg and "expected a pickled numpy float array" in msg
    assert not marker.exists()
    pickle.loads(p.read_bytes())  # the payload is live: plain pickle would have run it
    assert marker.exists()


def test_relevancy_pickle_of_other_objects(tmp_path):
    p = tmp_path / "rel.pkl"
    p.write_bytes(pickle.dumps({"rel": np.zeros((2, 2))}))
    with pytest.raises(InputError, match=r"rel.pkl: the pickle holds a dict; expected a numpy"):
        read_relevancy(p)
    p.write_bytes(pickle.dumps(np.array([[1, "a"]], dtype=object)))
    with pytest.raises(InputError, match=r"rel.pkl: relevancy has dtype object"):
        read_relevancy(p)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_relevancy_pickle_protocols_and_npy(tmp_path, protocol):
    a = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    p = tmp_path / "rel.pkl"
    p.write_bytes(pickle.dumps(a, protocol=protocol))
    np.testing.assert_array_equal(read_relevancy(p, (3, 4)), a)
    n = tmp_path / "rel.npy"
    np.save(n, a)
    np.testing.assert_array_equal(read_relevancy(n, (3, 4)), a)


def test_relevancy_values_checked(tmp_path):
    p = tmp_path / "rel.npy"
    np.save(p, np.array([[0.5, 1.5]]))
    with pytest.raises(InputError, match=r"relevancy\[0, 1\] = 1.5; expected a value in \[0, 1\]"):
        read_relevancy(p)
    np.save(p, np.array([[0.5, np.nan]]))
    with pytest.raises(InputError, match=r"relevancy\[0, 1\] = nan; expected a finite value"):
        read_relevancy(p)
    np.save(p, np.array([[0.5, 1]], dtype=object))
    with pytest.raises(InputError, match=r"rel.npy: not a readable .npy array without pickles"):
        read_relevancy(p)


# ---------------------------------------------------------------- synthetic split


def test_synthetic_split_reads_back(synth):
    tr = load_ek100_split(synth["root"], "train")
    te = load_ek100_split(synth["root"], "test")
    assert (len(tr.clips), len(te.clips)) == (24, 12)
    assert tr.relevancy.shape == (24, len(tr.sentences))
    assert te.relevancy.shape == (12, len(te.sentences))
    # Every clip is fully relevant to its own caption; captions are unique narrations.
    texts = [s.text for s in te.sentences]
    assert len(set(texts)) == len(texts)
    for i, c in enumerate(te.clips):
        assert te.relevancy[i, texts.index(c.narration)] == 1.0
    assert set(te.caption_clip.tolist()) <= set(range(12))
    for c in te.clips:
        assert te.layout.videos / c.participant_id / f"{c.video_id}.MP4" == te.video_path(
            te.clips.index(c)
        )
    # Graded values (partial verb / noun overlap) appear.
    assert len(np.unique(tr.relevancy)) >= 4


def test_relevancy_rule_hand_example():
    table = NOUN_CLASSES.index("table")
    # "pick up red square from table" vs "put down red square on table": verbs differ (0),
    # nouns equal (1).
    assert semantic_relevancy([2], [0, table], [3], [0, table]) == 0.5
    # vs "pick up red circle from table": verbs equal, nouns {sq, table} & {circle, table} = 1/3.
    assert semantic_relevancy([2], [0, table], [2], [1, table]) == pytest.approx(2 / 3)
    # vs "rotate red square": nouns {sq, table} & {sq} = 1/2, verbs differ.
    assert semantic_relevancy([2], [0, table], [4], [0]) == 0.25
    assert semantic_relevancy([1], [5], [0], [6]) == 0.0


def test_synthetic_relevancy_is_the_rule(synth):
    tr = load_ek100_split(synth["root"], "train")
    for i, a in enumerate(tr.clips):
        for j, k in enumerate(tr.caption_clip):
            b = tr.clips[int(k)]
            want = semantic_relevancy(
                [a.verb_class], a.all_noun_classes, [b.verb_class], b.all_noun_classes
            )
            assert tr.relevancy[i, j] == want


def test_synthetic_is_deterministic_per_seed(synth, tmp_path):
    small = EK100SynthConfig(train_videos=1, test_videos=1, clips_per_video=5, size=32)
    a = synthesize_ek100_mir(tmp_path / "a", 11, config=small)
    b = synthesize_ek100_mir(tmp_path / "b", 11, config=small)
    c = synthesize_ek100_mir(tmp_path / "c", 12, config=small)
    files = sorted(q.relative_to(a["root"]) for q in a["root"].rglob("*") if q.is_file())
    assert len(files) == 8
    for f in files:
        assert (a["root"] / f).read_bytes() == (b["root"] / f).read_bytes(), f
    assert a["train_csv"].read_bytes() != c["train_csv"].read_bytes()


# ---------------------------------------------------------------- sampling


def _original_get_frame_ids(start_frame, end_frame, num_segments, jitter, rng):
    """The original's get_frame_ids, line for line (np.random.randint -> rng.integers)."""
    seg_size = float(end_frame - start_frame - 1) / num_segments
    seq = []
    for i in range(num_segments):
        start = int(np.round(seg_size * i) + start_frame)
        end = int(np.round(seg_size * (i + 1)) + start_frame)
        end = min(end, end_frame)
        if jitter:  # noqa: SIM108 - kept as the original writes it
            frame_id = rng.integers(low=start, high=(end + 1))
        else:
            frame_id = (start + end) // 2
        seq.append(frame_id)
    return seq


@pytest.mark.parametrize(("t0", "t1", "fps"), [(1.089, 62.5, 59.94), (0.0, 2.0, 8), (3.3, 3.9, 30)])
def test_frame_ids_match_the_original(t0, t1, fps):
    start, end = round(fps * t0), math.ceil(fps * t1)
    for jitter in (False, True):
        want = _original_get_frame_ids(start, end, 16, jitter, np.random.default_rng(4))
        got = ek100_frame_ids(start, end, 16, jitter, np.random.default_rng(4))
        assert got.tolist() == [int(x) for x in want]
    assert ek100_frame_ids(7, 7, 4).tolist() == [7, 7, 7, 7]


def test_plan_reads_exactly_the_sampled_frames(tmp_path):
    v = write_video(tmp_path / "v.MP4", 90, width=64, height=48, fps=30)
    plan = plan_ek100_clip(v, 0.5, 2.2, num_frames=8)
    want = ek100_frame_ids(15, 66, 8)
    assert plan.indices.tolist() == want.tolist()
    frames = read_plan(plan, "pyav", None)
    assert [read_frame_code(f.numpy()) for f in frames] == want.tolist()
    # Training draws are a function of the seed; the last frame is clamped into the video.
    late = plan_ek100_clip(v, 2.9, 3.0, num_frames=4, train=True, rng=np.random.default_rng(0))
    assert late.indices.max() <= 89 and late.indices.min() >= 87


# ---------------------------------------------------------------- transform


def _bilinear_up(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Plain bilinear resize (align_corners=False, edge-clamped) of [..., H, W] for upscaling."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, rf = axis(x.shape[-2], h)
    c0, c1, cf = axis(x.shape[-1], w)
    rows = x[..., r0, :] * (1 - rf)[:, None] + x[..., r1, :] * rf[:, None]
    return rows[..., c0] * (1 - cf) + rows[..., c1] * cf


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x - np.array(EK100_MEAN)[:, None, None]) / np.array(EK100_STD)[:, None, None]


def test_eval_transform_numerics():
    frames = torch.randint(
        0, 256, (3, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    got = ek100_transform(train=False)(frames, dtype=torch.float64).numpy()
    x = _bilinear_up(frames.numpy().astype(np.float64), 224, 298)  # short side 224
    left = round((298 - 224) / 2)
    want = _normalise(x[..., :, left : left + 224])
    assert got.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_train_transform_numerics_and_no_flip():
    frames = torch.randint(
        0, 256, (2, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    tf = ek100_transform(train=True)
    params = tf.sample(48, 64, torch.Generator().manual_seed(3))
    got = tf(frames, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    b = params.box
    crop = frames.numpy().astype(np.float64)[
        ..., b.top : b.top + b.height, b.left : b.left + b.width
    ]
    np.testing.assert_allclose(got, _normalise(_bilinear_up(crop, 224, 224)), rtol=0, atol=1e-9)
    draws = [tf.sample(48, 64, torch.Generator().manual_seed(s)) for s in range(200)]
    assert not any(d.flip for d in draws)
    areas = [d.box.height * d.box.width / (48 * 64) for d in draws]
    assert min(areas) > 0.45 and max(areas) <= 1.0


# ---------------------------------------------------------------- training pairs


def test_choose_training_caption():
    row = np.array([0.05, 0.5, 0.1, 1.0, 0.75])
    picks = [choose_training_caption(row, np.random.default_rng(s)) for s in range(300)]
    assert {j for j, _ in picks} == {1, 3, 4}  # > 0.1 strictly
    assert all(w == row[j] for j, w in picks)
    again = [choose_training_caption(row, np.random.default_rng(s)) for s in range(300)]
    assert picks == again
    assert choose_training_caption(np.array([0.1, 0.0]), np.random.default_rng(0)) == (-1, 1.0)


def test_train_dataset_pairs(synth):
    tr = load_ek100_split(synth["root"], "train")
    ds = EK100MIRDataset(tr, train=True, num_frames=4, size=32, seed=3)
    item = ds[5]
    assert item.video.shape == (4, 3, 32, 32) and item.video.dtype == torch.float32
    assert item.clip_index == 5 and item.caption_index >= 0
    assert item.text == tr.sentences[item.caption_index].text
    assert item.weight == tr.relevancy[5, item.caption_index] > 0.1
    again = ds[5]
    assert torch.equal(item.video, again.video) and item.text == again.text
    # A clip without relevant captions falls back to its own narration with weight 1.
    bare = EK100MIRDataset(
        type(tr)(tr.split, tr.layout, tr.clips, tr.sentences, tr.relevancy * 0, tr.caption_clip),
        train=True,
        num_frames=4,
        size=32,
    )
    assert bare.caption(2) == (tr.clips[2].narration, 1.0, -1)
    test = EK100MIRDataset(
        load_ek100_split(synth["root"], "test"), train=False, num_frames=4, size=32
    )
    assert test[0].text == test.split.clips[0].narration and test[0].weight == 1.0


# ---------------------------------------------------------------- evaluation


def test_evaluation_equals_metrics_on_independent_similarity(synth, tmp_path_factory):
    from _tiny_assets import tiny_config, tiny_model_dir

    from egovlpv2_rt.modeling import EgoVLPv2
    from egovlpv2_rt.tasks.ek100_video import read_ek100_clip
    from egovlpv2_rt.tokenizer import RobertaTokenizer

    tok = RobertaTokenizer.from_tokenizer_json(tiny_model_dir(tmp_path_factory) / "tokenizer.json")
    torch.manual_seed(0)
    model = EgoVLPv2(tiny_config()).eval()
    res = evaluate_ek100_mir(model, tok, synth["root"], batch_size=5)

    te = load_ek100_split(synth["root"], "test")
    with torch.no_grad():
        v = torch.cat(
            [
                model.encode_video(
                    read_ek100_clip(
                        te.video_path(i), c.start_sec, c.stop_sec, num_frames=4, size=32
                    )[None]
                )
                for i, c in enumerate(te.clips)
            ]
        ).double()
        t = []
        for s in te.sentences:
            clip = next(c for c in te.clips if c.narration_id == s.narration_id)
            enc = tok([clip.narration], max_length=model.config.text.max_text_length)
            t.append(model.encode_text(enc["input_ids"], enc["attention_mask"]))
        t = torch.cat(t).double()
    cos = torch.nn.functional.cosine_similarity(v[:, None, :], t[None, :, :], dim=-1)
    want = ek100_mir_metrics(((cos + 1) / 2).numpy(), te.relevancy)
    got = res.as_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    assert 0 < got["mAP_AVG"] < 100 and 0 < got["nDCG_AVG"] <= 100
    np.testing.assert_allclose(res.sim, ((cos + 1) / 2).numpy(), atol=1e-6)


def test_dali_cpu_reads_the_ek100_plan_and_transform(tmp_path):
    """The plan and transform reach DALI as they reach PyAV (DALI's CPU decoder: VP9)."""
    from egovlpv2_rt.tasks.ek100_video import read_ek100_clip
    from egovlpv2_rt.video.dali_backend import dali_available
    from egovlpv2_rt.video.planning import split_seed

    ok, why = dali_available("cpu")
    if not ok:
        pytest.skip(f"DALI is not importable here: {why}")
    v = write_video(tmp_path / "v.webm", 60, width=80, height=64, codec="libvpx-vp9")
    for train in (False, True):
        rng = split_seed(9)[0]
        plan = plan_ek100_clip(v, 0.2, 1.7, num_frames=8, train=train, rng=rng)
        raw = read_plan(plan, "dali_cpu", None)
        assert [read_frame_code(f.numpy()) for f in raw] == plan.indices.tolist()
        dali = read_ek100_clip(v, 0.2, 1.7, train=train, num_frames=8, backend="dali_cpu", seed=9)
        ref = read_ek100_clip(v, 0.2, 1.7, train=train, num_frames=8, backend="pyav", seed=9)
        assert dali.shape == ref.shape == (8, 3, 224, 224)
        tf = ek100_transform(train)
        gen = split_seed(9)[1]
        want = tf(raw, generator=gen) if train else tf(raw)
        # DALI's resampling against the torch transform of the same decoded frames: the video
        # package's TRANSFORM_MAX (its ImageNet std, 0.229 * 255, is EK-100's 58.395 to 0.1%).
        assert (dali - want).abs().max().item() <= 5e-3
        # The same clip on both backends: the same frames, so only resampling differs.
        assert (dali - ref).abs().mean().item() <= 0.04
