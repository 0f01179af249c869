"""Charades-Ego task: file readers (good and bad files), frame sampling against a transcription
of the original's formulas, the synthetic dataset, and evaluation with a tiny random model."""

from __future__ import annotations

import csv
import filecmp
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_assets import tiny_model_dir

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.charades_ego import (
    CHARADES_COLUMNS,
    CharadesAction,
    CharadesEgoFiles,
    CharadesSynthConfig,
    CharadesTrainDataset,
    CharadesVideo,
    Segment,
    eval_spec,
    eval_transform,
    evaluate_charades_ego,
    read_charades_classes,
    read_charades_csv,
    read_metadata_train,
    read_test_clip,
    read_training_clip,
    segment_spec,
    synthesize_charades_ego,
    synthetic_classes,
    train_transform,
    training_segments,
)
from egovlpv2_rt.video import frame_indices, probe, read_clip
from egovlpv2_rt.video.synthetic import read_frame_code, write_video
from egovlpv2_rt.video.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

CLASSES = (
    "c000 Holding some clothes\n"
    "c001 Putting clothes somewhere\n"
    "c002 Taking a cup/glass/bottle from somewhere\n\n"
)
# The official column order, with free text holding commas, semicolons, quotes and a newline;
# an empty quality and an empty actions field.
MESSY_ROWS = [
    list(CHARADES_COLUMNS),
    [
        "005BU",
        "HR43",
        "Kitchen",
        "",
        "7",
        "Yes",
        'A person is "holding" clothes, then; puts them, somewhere.',
        "clothes;cup",
        'The person holds clothes,\nthen takes a cup; "quickly".',
        "c000 0.00 11.90;c002 12.10 21.20",
        "30.25",
    ],
    ["00HFP", "XJ2B", "Home Office / Study (A room, used)", "6", "", "No", "", "", "", "", ""],
    ["01ABC", "P1", "Bedroom", "5", "5", "Yes", "x", "y", "z", "c001 3 3.5", "10"],
]


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def classes(tmp_path):
    p = tmp_path / "Charades_v1_classes.txt"
    p.write_text(CLASSES)
    return read_charades_classes(p)


# ------------------------------------------------------------------------------ readers


def test_classes_file(classes):
    assert [(c.index, c.code, c.name) for c in classes] == [
        (0, "c000", "Holding some clothes"),
        (1, "c001", "Putting clothes somewhere"),
        (2, "c002", "Taking a cup/glass/bottle from somewhere"),
    ]


def test_messy_csv_is_read_as_published(tmp_path, classes):
    videos = read_charades_csv(_write_csv(tmp_path / "t.csv", MESSY_ROWS), classes)
    assert [v.id for v in videos] == ["005BU", "00HFP", "01ABC"]
    v = videos[0]
    assert v.script == 'A person is "holding" clothes, then; puts them, somewhere.'
    assert v.descriptions == 'The person holds clothes,\nthen takes a cup; "quickly".'
    assert v.objects == "clothes;cup" and v.quality == "" and v.relevance == "7"
    assert v.actions == (CharadesAction(0, 0.0, 11.9), CharadesAction(2, 12.1, 21.2))
    assert v.length == 30.25 and v.labels() == frozenset({0, 2})
    assert videos[1].actions == () and videos[1].length is None
    assert videos[1].scene == "Home Office / Study (A room, used)"
    segs = training_segments(videos, classes)
    assert [(s.video_id, s.class_index, s.t_start, s.t_end, s.text) for s in segs] == [
        ("005BU", 0, 0.0, 11.9, "Holding some clothes"),
        ("005BU", 2, 12.1, 21.2, "Taking a cup/glass/bottle from somewhere"),
        ("01ABC", 1, 3.0, 3.5, "Putting clothes somewhere"),
    ]


def test_columns_in_another_order_with_an_extra_one(tmp_path, classes):
    order = [*reversed(CHARADES_COLUMNS), "extra"]
    rows = [order] + [
        [dict(zip(CHARADES_COLUMNS, r, strict=True))[c] if c != "extra" else "e" for c in order]
        for r in MESSY_ROWS[1:]
    ]
    got = read_charades_csv(_write_csv(tmp_path / "r.csv", rows), classes)
    assert got == read_charades_csv(_write_csv(tmp_path / "t.csv", MESSY_ROWS), classes)


def test_metadata_train_matches_the_segments(tmp_path, classes):
    """The original's ``utils/charades_meta.py`` output, transcribed: header, then
    ``id, int(code[1:]), float(start), float(end), classes_line[5:]`` per action."""
    videos = read_charades_csv(_write_csv(tmp_path / "t.csv", MESSY_ROWS), classes)
    lines = ["id\tcls\tt_start\tt_end\tnarration"]
    for row in MESSY_ROWS[1:]:
        if row[9].split(";") == [""]:
            continue
        for action in row[9].split(";"):
            seg = action.split(" ")
            cls = int(seg[0][1:])
            name = CLASSES.splitlines()[cls][5:]
            lines.append(f"{row[0]}\t{cls}\t{float(seg[1])}\t{float(seg[2])}\t{name}")
    meta = tmp_path / "metadata_train.csv"
    meta.write_text("\n".join(lines) + "\n")
    assert read_metadata_train(meta, classes) == training_segments(videos, classes)


def _one_line_error(fn, *needles):
    with pytest.raises(InputError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_bad_files_give_one_line_errors(tmp_path, classes):
    # A CSV without the 'actions' column.
    rows = [[c for c in r if c != "actions"] for r in [MESSY_ROWS[0]]] + [
        r[:9] + r[10:] for r in MESSY_ROWS[1:]
    ]
    p = _write_csv(tmp_path / "missing.csv", rows)
    _one_line_error(
        lambda: read_charades_csv(p, classes), str(p), "row 1", "['actions']", "expected"
    )
    # A malformed class line.
    bad_cls = tmp_path / "classes.txt"
    bad_cls.write_text("c000 Holding some clothes\nc001Putting clothes somewhere\n")
    _one_line_error(
        lambda: read_charades_classes(bad_cls), str(bad_cls), "line 2", "c### class name"
    )
    skipped = tmp_path / "skip.txt"
    skipped.write_text("c000 Holding some clothes\nc002 Putting clothes somewhere\n")
    _one_line_error(lambda: read_charades_classes(skipped), "line 2", "expected class code c001")
    # An action naming an unknown class (row 3 = the second data row).
    rows = [list(r) for r in MESSY_ROWS]
    rows[2][9] = "c001 1.0 2.0;c157 3.0 4.0"
    p = _write_csv(tmp_path / "unknown.csv", rows)
    _one_line_error(
        lambda: read_charades_csv(p, classes),
        str(p),
        "row 3",
        "column 'actions'",
        "'c157'",
        "c000..c002",
    )
    # An action ending before it starts.
    rows[2][9] = "c001 5.0 2.5"
    p = _write_csv(tmp_path / "backwards.csv", rows)
    _one_line_error(
        lambda: read_charades_csv(p, classes),
        str(p),
        "row 3",
        "column 'actions'",
        "end 2.5 is before start 5",
    )
    rows[2][9] = "c001 5.0"
    p = _write_csv(tmp_path / "short_action.csv", rows)
    _one_line_error(lambda: read_charades_csv(p, classes), "row 3", "expected 'c### start end'")
    rows[2][9] = ""
    rows[2][10] = "long"
    p = _write_csv(tmp_path / "length.csv", rows)
    _one_line_error(lambda: read_charades_csv(p, classes), "row 3", "column 'length'", "'long'")


# ------------------------------------------------------------------------------ sampling


def _original_sample_frames_start_end(num_frames, start, end, sample):
    """``sample_frames_start_end`` of the original (``data_loader/transforms``), transcribed;
    'rand' returns the range each frame is drawn from (``random.choice(range(lo, hi))``)."""
    acc_samples = min(num_frames, end)
    intervals = np.linspace(start=start, stop=end, num=acc_samples + 1).astype(int)
    ranges = []
    for idx, interv in enumerate(intervals[:-1]):
        ranges.append((interv, intervals[idx + 1] - 1))
    if sample == "rand":
        return [range(x[0], x[1]) for x in ranges]
    return [(x[0] + x[1]) // 2 for x in ranges]


@pytest.fixture(scope="module")
def coded_video(tmp_path_factory):
    d = tmp_path_factory.mktemp("charades_coded")
    return write_video(d / "V1.mp4", 150, fps=10)  # 15 s, frames carry their index


def test_eval_frames_are_the_originals_uniform_midpoints(coded_video):
    video = CharadesVideo("V1", "", "", "", "", "", "", "", "", (), None)
    spec = eval_spec(video, Path(coded_video).parent)
    vlen = probe(coded_video).num_frames
    expected = _original_sample_frames_start_end(32, 0, vlen, "uniform")
    assert frame_indices(spec.path, spec.start_sec, spec.end_sec, 32, "uniform") == expected
    raw = read_clip(spec.path, num_frames=32, sampling="uniform", transform=None)
    assert [read_frame_code(f.numpy()) for f in raw] == expected
    # The eval clip is the original's test transform of exactly those frames.
    clip = read_test_clip(video, Path(coded_video).parent, size=224)
    assert torch.equal(clip, EvalTransform(256, 256, 224)(raw))


def test_training_frames_lie_where_the_original_draws_them(coded_video):
    seg = Segment("V1", 0, 3.37, 9.81, "x")
    spec = segment_spec(seg, Path(coded_video).parent)
    fps, vlen = 10, probe(coded_video).num_frames
    start_f, end_f = max(0, int(3.37 * fps)), min(int(9.81 * fps), vlen)
    ranges = _original_sample_frames_start_end(32, start_f, end_f, "rand")
    for seed in range(5):
        idx = frame_indices(spec.path, spec.start_sec, spec.end_sec, 32, "rand", seed=seed)
        assert all(i in r for i, r in zip(idx, ranges, strict=True)), (idx, ranges)
        raw = read_clip(spec.path, 3.37, 9.81, 32, "rand", transform=None, seed=seed)
        assert [read_frame_code(f.numpy()) for f in raw] == idx
    # Seeded: the same seed gives the same clip, crop and flip included.
    a = read_training_clip(seg, Path(coded_video).parent, size=64, seed=3)
    b = read_training_clip(seg, Path(coded_video).parent, size=64, seed=3)
    c = read_training_clip(seg, Path(coded_video).parent, size=64, seed=4)
    assert a.shape == (32, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)


def test_default_transforms_are_the_originals():
    tt, et = train_transform(), eval_transform()
    assert (tt.size, tt.scale, tt.flip_p) == (224, (0.5, 1.0), 0.5)
    assert (et.resize, et.crop, et.size) == (256, 256, 224)
    assert tt.mean == et.mean == IMAGENET_MEAN and tt.std == et.std == IMAGENET_STD
    assert (eval_transform(112).resize, eval_transform(112).size) == (128, 112)


def test_dali_cpu_reads_the_same_eval_clip(tmp_path):
    from egovlpv2_rt.video import dali_available

    ok, why = dali_available("cpu")
    if not ok:
        pytest.skip(f"DALI is not importable here: {why}")
    write_video(tmp_path / "V2.mp4", 90, codec="libvpx-vp9")
    video = CharadesVideo("V2", "", "", "", "", "", "", "", "", (), None)
    ref = read_test_clip(video, tmp_path, num_frames=8, size=64)
    got = read_test_clip(video, tmp_path, num_frames=8, size=64, backend="dali_cpu")
    d = (got.float().cpu() - ref).abs()
    assert got.shape == ref.shape == (8, 3, 64, 64)
    assert d.mean().item() <= 0.04 and d.max().item() <= 0.40  # test_video_dali's E2E bounds


# ------------------------------------------------------------------------------ synthetic


SMALL = CharadesSynthConfig(
    train_videos=3, test_videos=5, size=32, fps=6, action_seconds=1.0, idle_seconds=(0.3, 0.6)
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize_charades_ego(tmp_path_factory.mktemp("charades_synth"), 5, config=SMALL)


def test_synthetic_files_read_back(synth):
    classes = read_charades_classes(synth["classes"])
    assert [c.name for c in classes] == synthetic_classes(SMALL)
    assert len(classes) == 4 * 2 * 3 - 2 and classes[0].name == "Picking up a red square"
    train = read_charades_csv(synth["train"], classes)
    test = read_charades_csv(synth["test"], classes)
    assert [v.id for v in test] == [f"S5TE{i:03d}" for i in range(5)]
    assert [len(v.actions) > 0 for v in test] == [True] * 4 + [False]
    for v in train + test:
        info = probe(synth["videos"] / f"{v.id}.mp4")
        assert v.length == pytest.approx(info.num_frames / SMALL.fps, abs=0.005)
        assert all(0 <= a.start < a.end <= v.length for a in v.actions)
        assert all(round(a.end - a.start, 6) == 1.0 for a in v.actions)
        assert '"' in v.script and "," in v.descriptions and ";" in v.descriptions
    segs = training_segments(train, classes)
    assert len(segs) == sum(len(v.actions) for v in train[:-1])
    # 'putting down' follows every 'picking up' of a video (the simulator's rule).
    for v in train + test:
        names = [classes[a.class_index].name for a in v.actions]
        for k, n in enumerate(names[:-1]):
            if n.startswith("Picking up"):
                assert names[k + 1] == "Putting down" + n[len("Picking up") :]


def test_synthetic_is_deterministic_per_seed(tmp_path, synth):
    again = synthesize_charades_ego(tmp_path / "again", 5, config=SMALL)
    for key in ("classes", "train", "test"):
        assert again[key].read_bytes() == synth[key].read_bytes()
    names = sorted(p.name for p in synth["videos"].iterdir())
    assert names == sorted(p.name for p in again["videos"].iterdir()) and len(names) == 8
    match, mismatch, errors = filecmp.cmpfiles(
        synth["videos"], again["videos"], names, shallow=False
    )
    assert (len(match), mismatch, errors) == (8, [], [])
    other = synthesize_charades_ego(tmp_path / "other", 6, config=SMALL)
    assert other["train"].read_bytes() != synth["train"].read_bytes()


def test_training_dataset_items(synth):
    classes = read_charades_classes(synth["classes"])
    segs = training_segments(read_charades_csv(synth["train"], classes), classes)
    ds = CharadesTrainDataset(segs, synth["videos"], num_frames=4, size=32, seed=1)
    batch = CharadesTrainDataset.collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 4, 3, 32, 32)
    assert batch["text"] == [segs[0].text, segs[1].text]
    assert batch["class_index"].tolist() == [segs[0].class_index, segs[1].class_index]
    direct = read_training_clip(segs[1], synth["videos"], num_frames=4, size=32, seed=ds._seed(1))
    assert torch.equal(batch["video"][1], direct)


# ------------------------------------------------------------------------------ evaluation


def _map_reference(scores: np.ndarray, targets: np.ndarray) -> float:
    """Brute force: drop videos without labels; per class with a positive, rank videos by
    score and average precision@k over the positives' ranks; mean over classes, percent."""
    keep = [i for i in range(targets.shape[0]) if targets[i].sum() > 0]
    aps = []
    for c in range(targets.shape[1]):
        pos = [i for i in keep if targets[i, c] == 1]
        if not pos:
            continue
        ranked = sorted(keep, key=lambda i: -scores[i, c])
        hits, total = 0, 0.0
        for k, i in enumerate(ranked, start=1):
            if targets[i, c] == 1:
                hits += 1
                total += hits / k
        aps.append(total / len(pos))
    return 100.0 * sum(aps) / len(aps)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from egovlpv2_rt.checkpoint import load_model
    from egovlpv2_rt.tokenizer import RobertaTokenizer

    d = tiny_model_dir(tmp_path_factory)
    return load_model(d / "model.safetensors"), RobertaTokenizer.from_tokenizer_json(
        d / "tokenizer.json"
    )


def test_evaluation_on_the_synthetic_split(tiny, synth):
    from egovlpv2_rt.modeling.model import sim_matrix

    model, tok = tiny
    seen = []

    def metric(scores, targets):
        seen.append((scores, targets))
        return _map_reference(scores, targets)

    res = evaluate_charades_ego(model, synth["root"], tok, batch_size=2, metric=metric)
    classes = read_charades_classes(synth["classes"])
    test = read_charades_csv(synth["test"], classes)
    raw = res.raw
    assert raw.video_ids == [v.id for v in test] and raw.scores.shape == (5, len(classes))
    assert seen[0][0] is raw.scores and seen[0][1] is raw.targets
    for i, v in enumerate(test):
        assert set(np.flatnonzero(raw.targets[i]).tolist()) == set(v.labels())
    # The score matrix, recomputed directly from the model (4 uniform frames, 32 px).
    names = [c.name for c in classes]
    enc = tok(names, max_length=30, padding="max_length")
    with torch.no_grad():
        t = model.encode_text(enc["input_ids"], enc["attention_mask"])
        clips = torch.stack(
            [read_test_clip(v, synth["videos"], num_frames=4, size=32) for v in test]
        )
        direct = sim_matrix(t, model.encode_video(clips)).T.double().numpy()
    assert np.allclose(raw.scores, direct, rtol=0, atol=1e-5)
    brute = _map_reference(direct, raw.targets)
    assert math.isclose(res.map, brute, rel_tol=0, abs_tol=1e-9)
    labelled = raw.targets.sum(1) > 0
    assert res.num_videos == 4 == int(labelled.sum())
    assert res.num_classes == int((raw.targets[labelled].sum(0) > 0).sum()) >= 2
    assert res.as_dict()["num_videos_total"] == 5 and 0.0 < res.map <= 100.0


def test_evaluation_with_the_package_metric(tiny, synth):
    from egovlpv2_rt.eval import metrics

    if not hasattr(metrics, "charades_map"):
        pytest.skip("eval.metrics.charades_map arrives with the metrics branch of issue 15")
    model, tok = tiny
    res = evaluate_charades_ego(model, synth["root"], tok)
    assert math.isclose(res.map, _map_reference(res.raw.scores, res.raw.targets), abs_tol=1e-9)


def test_missing_video_folder_is_named(tmp_path):
    _one_line_error(
        lambda: CharadesEgoFiles.locate(tmp_path), str(tmp_path), "CharadesEgo_v1_480", "videos"
    )


def test_more_frames_than_the_model_holds_is_refused_before_reading(tiny, synth):
    model, tok = tiny
    _one_line_error(
        lambda: evaluate_charades_ego(model, synth["root"], tok, num_frames=32, metric=len),
        "num_frames=32",
        "video.num_frames=4",
    )
