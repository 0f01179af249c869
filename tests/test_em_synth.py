"""Synthetic Ego4D episodic-memory data: the files parse with the package's readers, every
answer span lies in its clip and is exactly where the rendered action is (pixels change inside
the spans and nowhere else), the queries are unambiguous, and one seed gives the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.episodic.metadata import read_moments, read_nlq
from egovlpv2_rt.tasks.episodic.synth import (
    EM_SPLITS,
    EMSynthConfig,
    _Clip,
    _Event,
    _queries,
    synthesize_episodic,
    synthetic_moment_labels,
)

TINY = EMSynthConfig(
    train_videos=2,
    val_videos=1,
    test_videos=1,
    clips_per_video=(1, 2),
    actions_per_clip=(2, 4),
    colours=("red", "blue"),
    shapes=("square", "circle"),
    objects_per_video=2,
    size=32,
    fps=6,
    action_seconds=1.0,
    idle_seconds=(0.4, 0.8),
    gap_seconds=(0.5, 1.0),
)
QUERY = re.compile(
    r"when did I (?P<verb>pick up|put down|rotate) the (?P<obj>\w+ \w+)\?"
    r"|when did I (?P<mverb>move) the (?P<mobj>\w+ \w+) to the (?:left|right)\?"
    r"|where was the (?P<pobj>\w+ \w+) before I picked it up\?"
    r"|where did I put the (?P<dobj>\w+ \w+)\?"
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize_episodic(tmp_path_factory.mktemp("em_synth"), 3, config=TINY)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _query_label(text: str) -> str:
    """The moment label a synthetic query's answer carries."""
    m = QUERY.fullmatch(text)
    assert m is not None, text
    if m["verb"]:
        return f"{m['verb']} {m['obj']}"
    if m["mverb"]:
        return f"move {m['mobj']}"
    return f"pick up {m['pobj']}" if m["pobj"] else f"put down {m['dobj']}"


def test_paths_and_files_parse(synth):
    assert sorted(synth) == sorted(
        ["root", "videos"] + [f"{k}_{s}" for k in ("nlq", "moments") for s in EM_SPLITS]
    )
    for split, videos in zip(EM_SPLITS, (2, 1, 1), strict=True):
        nlq = read_nlq(synth[f"nlq_{split}"])
        mq = read_moments(synth[f"moments_{split}"])
        assert nlq.clips == mq.clips  # the same clips serve both tasks
        assert len({c.video_uid for c in nlq.clips}) == videos
        assert nlq.skipped_queries == 1  # the one entry without text, as the released files
        annotated = split != "test_unannotated"
        assert all(q.annotated == annotated for q in nlq.queries) and nlq.queries
        assert (len(mq.moments) > 0) == annotated
        assert set(mq.labels) <= set(synthetic_moment_labels(TINY))
        assert all(m.primary for m in mq.moments)
        raw = json.loads(synth[f"nlq_{split}"].read_text())
        assert raw["version"] == "1" and raw["manifest"].startswith("s3://")
        assert {v["split"] for v in raw["videos"]} == {"test" if not annotated else split}
    assert len(synthetic_moment_labels(TINY)) == 4 * 4 - 2


def test_answers_lie_in_clips_and_match_moments(synth):
    for split in ("train", "val"):
        nlq = read_nlq(synth[f"nlq_{split}"])
        mq = read_moments(synth[f"moments_{split}"])
        clips = {c.clip_uid: c for c in nlq.clips}
        for c in nlq.clips:
            n_frames = len(_frames(synth["videos"] / f"{c.video_uid}.mp4"))
            assert 0 < c.video_start_sec < c.video_end_sec < n_frames / TINY.fps
        by_clip: dict[str, list[str]] = {}
        for q in nlq.queries:
            by_clip.setdefault(q.clip_uid, []).append(q.query)
            assert q.start_sec is not None and q.end_sec is not None
            assert 0 < q.start_sec < q.end_sec < clips[q.clip_uid].duration
            assert round((q.end_sec - q.start_sec) * TINY.fps) == 6  # one action, 1 s at 6 fps
            label = _query_label(q.query)
            same = [m for m in mq.moments if m.clip_uid == q.clip_uid and m.label == label]
            # Asked only about an action that happens once in its clip; the answer is its span.
            assert [(m.start_sec, m.end_sec) for m in same] == [(q.start_sec, q.end_sec)]
            if q.query.startswith("where did I put the "):
                moved = f"move {label.removeprefix('put down ')}"
                assert not [m for m in mq.moments if (m.clip_uid, m.label) == (q.clip_uid, moved)]
        assert all(len(set(texts)) == len(texts) for texts in by_clip.values())
        # Every action that happens once in its clip has a query whose answer is that action.
        answered = {(q.clip_uid, q.start_sec) for q in nlq.queries}
        for m in mq.moments:
            once = [x for x in mq.moments if (x.clip_uid, x.label) == (m.clip_uid, m.label)]
            assert ((m.clip_uid, m.start_sec) in answered) == (len(once) == 1)


def test_pixels_change_inside_the_action_spans_only(synth):
    """Between two frames of a still spell only the sensor noise changes (no pixel moves by
    more than 40 levels); inside each labelled span the hand and the object move, and the
    object's state differs before and after."""
    checked = 0
    for split in ("train", "val"):
        mq = read_moments(synth[f"moments_{split}"])
        clips = {c.clip_uid: c for c in mq.clips}
        for video_uid in sorted({c.video_uid for c in mq.clips}):
            frames = _frames(synth["videos"] / f"{video_uid}.mp4").astype(np.int16)
            spans = [
                (
                    round((clips[m.clip_uid].video_start_sec + m.start_sec) * TINY.fps),
                    round((clips[m.clip_uid].video_start_sec + m.end_sec) * TINY.fps),
                )
                for m in mq.moments
                if clips[m.clip_uid].video_uid == video_uid
            ]
            moving = np.abs(np.diff(frames, axis=0)).max(axis=3) > 40  # [T-1, H, W]
            inside = np.zeros(len(frames), bool)
            for s, e in spans:
                inside[s:e] = True
                assert moving[s : e - 1].sum() >= 5  # pairs within the span
                before, after = frames[s - 1], frames[e]
                assert (np.abs(after - before).max(axis=2) > 40).sum() >= 3
                checked += 1
            still_pairs = ~inside[:-1] & ~inside[1:]
            assert still_pairs.sum() >= 10
            assert moving[still_pairs].sum() == 0
    assert checked >= 6


def test_same_seed_same_bytes(synth, tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    again = synthesize_episodic(tmp_path / "again", 3, config=TINY)
    first = digest(synth["root"])
    assert digest(again["root"]) == first and len(first) == 6 + 4
    other = synthesize_episodic(tmp_path / "other", 4, config=TINY)
    assert other["nlq_train"].read_bytes() != synth["nlq_train"].read_bytes()


def test_a_repeated_action_gets_no_query():
    rng = np.random.default_rng(0)
    events = (
        _Event("pick up", "", "red square", 10, 16),
        _Event("put down", "", "red square", 20, 26),
        _Event("pick up", "", "red square", 30, 36),
        _Event("move", "left", "red square", 40, 46),
        _Event("move", "right", "red square", 50, 56),
    )
    clip = _Clip("c", "s", 4, 60, events)
    got = _queries(rng, clip, 6, annotated=True)
    assert [(q["clip_start_sec"], q["clip_end_sec"]) for q in got] == [
        (16 / 6, 22 / 6),
        (36 / 6, 42 / 6),
        (46 / 6, 52 / 6),
    ]
    assert [q["query"] for q in got][1:] == [
        "when did I move the red square to the left?",
        "when did I move the red square to the right?",
    ]
    # The red square is also moved in this clip: "where did I put it?" is not asked.
    assert got[0]["query"] == "when did I put down the red square?"
    assert [q["video_start_frame"] for q in got] == [20, 40, 50]
    assert _queries(rng, clip, 6, annotated=False)[1] == {
        "query": "when did I move the red square to the left?"
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_videos": 0}, "EMSynthConfig.train_videos: expected an integer >= 1, got 0"),
        ({"clips_per_video": (2, 1)}, "EMSynthConfig.clips_per_video: expected (min, max)"),
        ({"colours": ("red", "mauve")}, "EMSynthConfig.colours: expected a non-empty tuple of"),
        ({"objects_per_video": 3}, "EMSynthConfig.objects_per_video: expected <= 2"),
        ({"size": 40}, "EMSynthConfig.size: expected a multiple of 16, >= 32, got 40"),
        ({"action_seconds": 0.5}, "EMSynthConfig.action_seconds: expected >= 0.666"),
        ({"idle_seconds": (0.8, 0.4)}, "EMSynthConfig.idle_seconds: expected (min, max)"),
        ({"idle_seconds": ("0.4", 0.8)}, "EMSynthConfig.idle_seconds: expected (min, max)"),
        ({"gap_seconds": (0.0, 1.0)}, "EMSynthConfig.gap_seconds: expected (min, max), one frame"),
        ({"codec": "libvpx-vp9"}, "EMSynthConfig.codec: expected 'libx264', got 'libvpx-vp9'"),
    ],
)
def test_config_is_checked(change, message):
    with pytest.raises(InputError) as info:
        dataclasses.replace(TINY, **change)
    assert str(info.value).startswith(message)
