"""A synthetic Ego4D episodic-memory dataset (EgoNLQ and EgoMQ) in the Ego4D v1 file formats.

Each canonical video is a long synthetic table top (:class:`~..table_video.TableVideo`): a
still lead-in, then one or more clips separated by still gaps, then a still tail. A clip holds
a few actions (pick up, put down, move left / right, rotate) on the table's objects, each
preceded by an idle spell, and ends with one; clips are spans of the video that start after 0, so
clip-relative and video-relative times differ. Times are whole frames: ``frame / fps`` seconds.

Files (what :mod:`~.metadata`'s readers read; the realistic extra fields are written too):

- ``videos/{video_uid}.mp4``: the canonical videos (``fps`` frames per second, not the 30 the
  original's extraction assumes: give the planner the real rate);
- ``moments_{train,val,test_unannotated}.json``: one primary label per action, named verb and
  object (``"pick up red square"``, ``"move blue circle"``: left and right moves share a class),
  with its clip-relative span; the test file's clips have no ``annotations``;
- ``nlq_{train,val,test_unannotated}.json``: one query per action that happens once in its
  clip (its verb, direction and object); an action repeated within a clip gets no query, so
  every answer is unambiguous. Templates: "when did I pick up / put down / rotate the red
  square?", "when did I move the red square to the left?", "where was the red square before I
  picked it up?" (answer: the pick-up), "where did I put the red square?" (answer: the
  put-down; not asked when that object is also moved in the clip). The answer span is the
  action's span, clip-relative. Queries are split over one or two annotations per clip. With
  ``blank_queries`` each file has one entry without query text, as the released files do (val:
  no ``query`` key; test: ``""``), which readers skip. The test file's queries carry the text
  only.

The same clips and videos serve both tasks. Everything is drawn from
``numpy.random.default_rng(seed)``: one seed, the same files (videos are written lossless with
one encoder thread); uids are UUID-shaped strings drawn from the same generator.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...data.synthetic import COLOURS, SHAPES, write_video
from ...errors import InputError
from ...files import atomic_write_text
from ..table_video import TableVideo

__all__ = ["EM_SPLITS", "EMSynthConfig", "synthesize_episodic", "synthetic_moment_labels"]

EM_SPLITS: tuple[str, ...] = ("train", "val", "test_unannotated")
_VIDEO_SPLIT = {"train": "train", "val": "val", "test_unannotated": "test"}
_MANIFEST = "s3://ego4d-consortium-sharing/public/v1/full_scale/manifest.csv"
_VERBS = ("pick up", "put down", "move", "rotate")
_QUERY_TIMES = ("clip_start_sec", "clip_end_sec", "video_start_sec", "video_end_sec")
_LABEL_TIMES = ("start_time", "end_time", "video_start_time", "video_end_time")
# verb -> [(template name, question)]; {o} = "red square", {d} = "left" / "right".
_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "pick up": [
        ("Synthetic: When did I Y X?", "when did I pick up the {o}?"),
        (
            "Objects: Where is object X before / after event Y?",
            "where was the {o} before I picked it up?",
        ),
    ],
    "put down": [
        ("Synthetic: When did I Y X?", "when did I put down the {o}?"),
        ("Place: Where did I put X?", "where did I put the {o}?"),
    ],
    "move": [("Synthetic: When did I Y X?", "when did I move the {o} to the {d}?")],
    "rotate": [("Synthetic: When did I Y X?", "when did I rotate the {o}?")],
}


@dataclass(frozen=True)
class EMSynthConfig:
    """Size and look of a synthetic episodic-memory dataset.

    Attributes:
        train_videos, val_videos, test_videos: canonical videos per split (>= 1 each).
        clips_per_video: (min, max) clips in one video.
        actions_per_clip: (min, max) actions in one clip.
        colours, shapes: the object kinds (moment classes are verb x colour x shape).
        objects_per_video: objects on the table (distinct colours and shapes).
        size: frame width = height in pixels (multiple of 16, >= 32).
        fps: frame rate of the written videos.
        action_seconds: duration of one action (>= 4 frames).
        idle_seconds: (min, max) still spell before each action and at the end of a clip.
        gap_seconds: (min, max) still video outside the clips: before the first clip, between
            clips and after the last (min > 0, so every clip starts after 0 s).
        blank_queries: write one entry without query text in each NLQ file.
        codec: PyAV encoder ('libx264' is lossless here).
    """

    train_videos: int = 36
    val_videos: int = 12
    test_videos: int = 2
    clips_per_video: tuple[int, int] = (1, 2)
    actions_per_clip: tuple[int, int] = (3, 5)
    colours: tuple[str, ...] = ("red", "blue", "green")
    shapes: tuple[str, ...] = ("square", "circle", "triangle")
    objects_per_video: int = 3
    size: int = 64
    fps: int = 10
    action_seconds: float = 2.0
    idle_seconds: tuple[float, float] = (0.5, 2.0)
    gap_seconds: tuple[float, float] = (1.0, 3.0)
    blank_queries: bool = True
    codec: str = "libx264"

    def __post_init__(self) -> None:
        def bad(field: str, value: object, expected: str) -> InputError:
            return InputError(f"EMSynthConfig.{field}: expected {expected}, got {value!r}")

        for name in ("train_videos", "val_videos", "test_videos", "objects_per_video"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, v, "an integer >= 1")
        for name in ("clips_per_video", "actions_per_clip"):
            v = getattr(self, name)
            if (
                not isinstance(v, tuple)
                or len(v) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                or not 1 <= v[0] <= v[1]
            ):
                raise bad(name, v, "(min, max) integers with 1 <= min <= max")
        if not self.colours or any(c not in COLOURS for c in self.colours):
            raise bad("colours", self.colours, f"a non-empty tuple of {list(COLOURS)}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise bad("shapes", self.shapes, f"a non-empty tuple of {list(SHAPES)}")
        if len(set(self.colours)) != len(self.colours) or len(set(self.shapes)) != len(self.shapes):
            raise bad("colours/shapes", (self.colours, self.shapes), "no repeated kind")
        most = min(len(self.colours), len(self.shapes))
        if self.objects_per_video > most:
            raise bad("objects_per_video", self.objects_per_video, f"<= {most} (distinct kinds)")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise bad("size", self.size, "an integer multiple of 16, >= 32")
        if self.size < 32 or self.size % 16:
            raise bad("size", self.size, "a multiple of 16, >= 32")
        if isinstance(self.fps, bool) or not isinstance(self.fps, int) or self.fps < 1:
            raise bad("fps", self.fps, "an integer >= 1")
        a = self.action_seconds
        if isinstance(a, bool) or not isinstance(a, int | float) or not 4 <= a * self.fps < 1e6:
            raise bad("action_seconds", self.action_seconds, f">= {4 / self.fps} (4 frames)")
        if not _seconds_pair(self.idle_seconds) or self.idle_seconds[0] < 0:
            raise bad("idle_seconds", self.idle_seconds, "(min, max) with 0 <= min <= max")
        if not _seconds_pair(self.gap_seconds) or round(self.gap_seconds[0] * self.fps) < 1:
            raise bad("gap_seconds", self.gap_seconds, "(min, max), one frame <= min <= max")
        if self.codec != "libx264":
            # Other encoders are lossy or thread-timing dependent: not the same files per seed.
            raise bad("codec", self.codec, "'libx264'")


def _seconds_pair(v: object) -> bool:
    """A (min, max) tuple of finite real numbers with min <= max."""
    return (
        isinstance(v, tuple)
        and len(v) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        and all(math.isfinite(x) for x in v)
        and v[0] <= v[1]
    )


def synthetic_moment_labels(cfg: EMSynthConfig) -> list[str]:
    """Every moment class the config can produce, sorted (rotations of circles excluded)."""
    return sorted(
        f"{v} {c} {s}"
        for v in _VERBS
        for c in cfg.colours
        for s in cfg.shapes
        if not (v == "rotate" and s == "circle")
    )


@dataclass(frozen=True)
class _Event:
    verb: str
    direction: str
    obj: str  # "red square"
    start: int  # frames of the video, [start, end)
    end: int


@dataclass(frozen=True)
class _Clip:
    uid: str
    source_uid: str
    start: int  # frames of the video, [start, end)
    end: int
    events: tuple[_Event, ...]


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _video(rng: np.random.Generator, cfg: EMSynthConfig) -> tuple[list[np.ndarray], list[_Clip]]:
    video = TableVideo(
        rng,
        size=cfg.size,
        fps=cfg.fps,
        colours=cfg.colours,
        shapes=cfg.shapes,
        objects=cfg.objects_per_video,
        action_seconds=cfg.action_seconds,
    )
    clips: list[_Clip] = []
    for _ in range(int(rng.integers(cfg.clips_per_video[0], cfg.clips_per_video[1] + 1))):
        video.idle(rng, cfg.gap_seconds)
        start = len(video.frames)
        events: list[_Event] = []
        for _ in range(int(rng.integers(cfg.actions_per_clip[0], cfg.actions_per_clip[1] + 1))):
            video.idle(rng, cfg.idle_seconds)
            act, s, e = video.act(rng)
            o = video.objs[act.obj]
            events.append(_Event(act.verb, act.direction, f"{o.colour} {o.shape}", s, e))
        video.idle(rng, cfg.idle_seconds)
        clips.append(_Clip(_uid(rng), _uid(rng), start, len(video.frames), tuple(events)))
    video.idle(rng, cfg.gap_seconds)
    return video.frames, clips


def _clip_fields(clip: _Clip, fps: int) -> dict[str, Any]:
    n = clip.end - clip.start
    return {
        "clip_uid": clip.uid,
        "video_start_sec": clip.start / fps,
        "video_end_sec": clip.end / fps,
        "video_start_frame": clip.start,
        "video_end_frame": clip.end,
        "clip_start_sec": 0,
        "clip_end_sec": n / fps,
        "clip_start_frame": 0,
        "clip_end_frame": n,
        "source_clip_uid": clip.source_uid,
    }


def _times(ev: _Event, clip: _Clip, fps: int, names: tuple[str, str, str, str]) -> dict[str, Any]:
    """The event's clip-relative and video-relative times and video frames, under ``names``
    (clip start, clip end, video start, video end); frames under video_{start,end}_frame."""
    return {
        names[0]: (ev.start - clip.start) / fps,
        names[1]: (ev.end - clip.start) / fps,
        names[2]: ev.start / fps,
        names[3]: ev.end / fps,
        "video_start_frame": ev.start,
        "video_end_frame": ev.end,
    }


def _queries(
    rng: np.random.Generator, clip: _Clip, fps: int, annotated: bool
) -> list[dict[str, Any]]:
    """One query per event that happens once in the clip, in event order."""
    keys = [(ev.verb, ev.direction, ev.obj) for ev in clip.events]
    out: list[dict[str, Any]] = []
    for ev, key in zip(clip.events, keys, strict=True):
        if keys.count(key) > 1:
            continue  # ambiguous: "when did I pick up the red square?" would have two answers
        options = _TEMPLATES[ev.verb]
        if ev.verb == "put down" and any(k[0] == "move" and k[2] == ev.obj for k in keys):
            options = options[:1]  # "where did I put it?" could also mean where it was moved
        template, text = options[int(rng.integers(len(options)))]
        query = text.format(o=ev.obj, d=ev.direction)
        if not annotated:
            out.append({"query": query})
            continue
        verb_x = ev.verb.split()[0]
        out.append(
            {
                **_times(ev, clip, fps, _QUERY_TIMES),
                "template": template,
                "query": query,
                "slot_x": ev.obj,
                "verb_x": verb_x,
                "raw_tags": [template, query, ev.obj, verb_x],
            }
        )
    return out


def _nlq_clip(
    rng: np.random.Generator, clip: _Clip, fps: int, annotated: bool, blank: bool
) -> dict[str, Any]:
    queries = _queries(rng, clip, fps, annotated)
    queries = [queries[int(i)] for i in rng.permutation(len(queries))]
    if blank:
        # As the released files: val has an entry with times but no query key, test a "".
        entry: dict[str, Any] = {"query": ""}
        if annotated:
            entry = {**_times(clip.events[0], clip, fps, _QUERY_TIMES), "raw_tags": []}
        queries.insert(int(rng.integers(len(queries) + 1)), entry)
    cut = int(rng.integers(1, len(queries))) if len(queries) >= 2 and rng.random() < 0.5 else 0
    groups = [queries[:cut], queries[cut:]] if cut else [queries]
    anns = [{"language_queries": g, "annotation_uid": _uid(rng)} for g in groups if g]
    return {**_clip_fields(clip, fps), "annotations": anns}


def _moments_clip(
    rng: np.random.Generator, clip: _Clip, fps: int, annotated: bool
) -> dict[str, Any]:
    fields = _clip_fields(clip, fps)
    if not annotated:
        return fields
    labels = [
        {**_times(ev, clip, fps, _LABEL_TIMES), "label": f"{ev.verb} {ev.obj}", "primary": True}
        for ev in clip.events
    ]
    return {**fields, "annotations": [{"annotator_uid": _uid(rng), "labels": labels}]}


def _document(kind: str, split: str, videos: list[dict[str, Any]]) -> str:
    title = {"nlq": "NLQ Annotations", "moments": "Moment Annotations"}[kind]
    doc = {
        "version": "1",
        "date": "220216",
        "description": f"{title} ({split.replace('_', ' ')}), synthetic",
        "manifest": _MANIFEST,
        "videos": videos,
    }
    return json.dumps(doc, indent=None) + "\n"


def synthesize_episodic(
    out_dir: str | Path, seed: int, *, config: EMSynthConfig | None = None
) -> dict[str, Path]:
    """Write a synthetic Ego4D episodic-memory dataset under ``out_dir`` (created).

    Returns:
        Paths ``root``, ``videos`` (the ``{video_uid}.mp4`` folder) and, for each split of
        :data:`EM_SPLITS`, ``nlq_{split}`` and ``moments_{split}`` (the JSON files).
    """
    cfg = config or EMSynthConfig()
    out = Path(out_dir)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: dict[str, Path] = {"root": out, "videos": vdir}
    counts = dict(zip(EM_SPLITS, (cfg.train_videos, cfg.val_videos, cfg.test_videos), strict=True))
    for split in EM_SPLITS:
        annotated = split != "test_unannotated"
        nlq_videos: list[dict[str, Any]] = []
        mq_videos: list[dict[str, Any]] = []
        for i in range(counts[split]):
            video_uid = _uid(rng)
            frames, clips = _video(rng, cfg)
            write_video(vdir / f"{video_uid}.mp4", frames, cfg.fps, cfg.codec)
            blank = cfg.blank_queries and i == 0
            head = {"video_uid": video_uid, "split": _VIDEO_SPLIT[split]}
            nlq_videos.append(
                {
                    **head,
                    "clips": [
                        _nlq_clip(rng, c, cfg.fps, annotated, blank and k == 0)
                        for k, c in enumerate(clips)
                    ],
                }
            )
            mq_videos.append(
                {**head, "clips": [_moments_clip(rng, c, cfg.fps, annotated) for c in clips]}
            )
        for kind, videos in (("nlq", nlq_videos), ("moments", mq_videos)):
            path = out / f"{kind}_{split}.json"
            atomic_write_text(path, _document(kind, split, videos))
            paths[f"{kind}_{split}"] = path
    return paths
