"""Readers of the Ego4D episodic-memory metadata files (v1 schemas).

NLQ (``nlq_{train,val,test_unannotated}.json``)::

    {"version", "date", "description", "manifest",
     "videos": [{"video_uid", "split", "clips": [{
         "clip_uid", "video_start_sec", "video_end_sec", "clip_start_sec", ...,
         "annotations": [{"annotation_uid", "language_queries": [{
             "clip_start_sec", "clip_end_sec", "video_start_sec", ..., "query", "template",
             "slot_x", ...}]}]}]}]}

MQ (``moments_{train,val,test_unannotated}.json``): the same videos -> clips levels, then
``annotations: [{"annotator_uid", "labels": [{"start_time", "end_time", "label", "primary",
"video_start_time", ...}]}]``.

What is read (the fields the original's data preparation reads) and how:

- A clip's span in its canonical video is ``video_start_sec`` .. ``video_end_sec`` (the
  feature extractors cut the video there); a clip must have end > start.
- An NLQ answer is ``clip_start_sec`` .. ``clip_end_sec`` of the query (clip-relative; the
  query's ``video_*`` fields are not read: in the released files they disagree with the clip
  offset for about 6% of the queries). Zero-length answers (end == start, ~9% of val) are kept,
  and so are answers that run up to a fraction of a second past the clip end (as released).
- ``query_idx`` is the query's index in its ``language_queries`` list, skipped entries counted,
  as the Ego4D VSLNet preparation numbers them.
- A query with no ``query`` key, a null or a blank one is skipped and counted in
  ``NLQMetadata.skipped_queries`` (the released val file has one without the key, the test file a
  blank one).
- ``test_unannotated`` files: a query without both ``clip_start_sec`` and ``clip_end_sec`` (absent
  or null) is read with ``start_sec = end_sec = None``; a clip without ``annotations`` has no
  queries / moments. A query with one bound and not the other is an error.
- MQ moments: every label is read, with its ``primary`` flag (the original's conversion keeps the
  primary ones only; filter on ``Moment.primary``); ``start_time`` / ``end_time`` are clip-relative.
- A clip_uid listed twice (under one video or two) with the same video and span is read once
  (its queries / moments are all kept); with a different video or span it is an error.
- Unknown fields are ignored. Numbers must be finite JSON numbers (booleans are refused).

Every error is a one-line :class:`~egovlpv2_rt.data.egoclip.MetadataError` naming the file,
the JSON path (``videos[3].clips[0].video_end_sec``), the value and what was expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...data.egoclip import MetadataError

__all__ = [
    "EMClip",
    "MQMetadata",
    "Moment",
    "NLQMetadata",
    "NLQQuery",
    "read_moments",
    "read_nlq",
]


@dataclass(frozen=True)
class EMClip:
    """One clip of an Ego4D episodic-memory file: a span (seconds) of canonical video
    ``video_uid``."""

    video_uid: str
    clip_uid: str
    video_start_sec: float
    video_end_sec: float

    @property
    def duration(self) -> float:
        """Clip length in seconds."""
        return self.video_end_sec - self.video_start_sec


@dataclass(frozen=True)
class NLQQuery:
    """One natural-language query; ``start_sec`` / ``end_sec`` are the clip-relative answer
    span, both None in unannotated (test) files."""

    clip_uid: str
    video_uid: str
    annotation_uid: str
    query_idx: int
    query: str
    start_sec: float | None
    end_sec: float | None

    @property
    def annotated(self) -> bool:
        """Whether the query has an answer span."""
        return self.start_sec is not None


@dataclass(frozen=True)
class Moment:
    """One labelled moment of a clip, clip-relative seconds."""

    clip_uid: str
    label: str
    start_sec: float
    end_sec: float
    primary: bool


@dataclass(frozen=True)
class NLQMetadata:
    """An NLQ file: its clips (file order, each once), readable queries (file order) and how
    many entries were skipped for a missing / null / blank query text."""

    clips: tuple[EMClip, ...]
    queries: tuple[NLQQuery, ...]
    skipped_queries: int
    path: Path


@dataclass(frozen=True)
class MQMetadata:
    """An MQ file: its clips (file order, each once), moments (file order) and the sorted
    unique labels of all its moments (primary or not)."""

    clips: tuple[EMClip, ...]
    moments: tuple[Moment, ...]
    labels: tuple[str, ...]
    path: Path


# ------------------------------------------------------------------------------ field access


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _Doc:
    """Typed access to a parsed JSON document; errors name the file and the JSON path
    (``""`` is the top level)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, msg: str) -> MetadataError:
        return MetadataError(f"{self.path}: {where or 'top level'}: {msg}")

    @staticmethod
    def show(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    def field(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise self.fail(_join(where, key), "missing field")
        return obj[key]

    def dict_(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a JSON object, got {self.show(value)}")
        return value

    def list_(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a JSON list, got {self.show(value)}")
        return value

    def items(self, obj: dict[str, Any], key: str, where: str) -> Iterator[tuple[str, Any]]:
        """``(path, element)`` of the list ``obj[key]`` (required)."""
        seq = self.list_(self.field(obj, key, where), _join(where, key))
        for i, item in enumerate(seq):
            yield f"{_join(where, key)}[{i}]", item

    def string(self, obj: dict[str, Any], key: str, where: str) -> str:
        value = self.field(obj, key, where)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                f"{where}.{key}", f"expected a non-empty string, got {self.show(value)}"
            )
        return value

    def number(self, obj: dict[str, Any], key: str, where: str) -> float:
        value = self.field(obj, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{where}.{key}", f"expected a number, got {self.show(value)}")
        if not math.isfinite(value):
            raise self.fail(f"{where}.{key}", f"expected a finite number, got {value}")
        return float(value)

    def span(
        self, obj: dict[str, Any], keys: tuple[str, str], where: str, *, strict: bool
    ) -> tuple[float, float]:
        """Two numbers (start, end) with end > start (``strict``) or end >= start. A start
        below 0 is kept: the released val file has a clip starting at -4e-7 s."""
        start = self.number(obj, keys[0], where)
        end = self.number(obj, keys[1], where)
        if end < start or (strict and end == start):
            rel = ">" if strict else ">="
            raise self.fail(f"{where}.{keys[1]}", f"expected {rel} {keys[0]} ({start}), got {end}")
        return start, end


def _load(path: str | Path) -> tuple[_Doc, dict[str, Any]]:
    p = Path(path)
    doc = _Doc(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetadataError(f"{p}: no such metadata file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataError(f"{p}: cannot be read as UTF-8 text ({e})") from None
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(
            f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    return doc, doc.dict_(root, "")


def _clips(doc: _Doc, root: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], EMClip, bool]]:
    """``(path, clip object, clip, first time seen)`` for every clip entry of the file."""
    seen: dict[str, tuple[EMClip, str]] = {}
    for vwhere, video in doc.items(root, "videos", ""):
        video = doc.dict_(video, vwhere)
        video_uid = doc.string(video, "video_uid", vwhere)
        for cwhere, obj in doc.items(video, "clips", vwhere):
            obj = doc.dict_(obj, cwhere)
            clip_uid = doc.string(obj, "clip_uid", cwhere)
            start, end = doc.span(obj, ("video_start_sec", "video_end_sec"), cwhere, strict=True)
            clip = EMClip(video_uid, clip_uid, start, end)
            first = seen.get(clip_uid)
            if first is not None and first[0] != clip:
                old = first[0]
                raise doc.fail(
                    cwhere,
                    f"clip_uid {clip_uid!r} is listed again with video {video_uid!r} span "
                    f"[{start}, {end}], but {first[1]} has video {old.video_uid!r} span "
                    f"[{old.video_start_sec}, {old.video_end_sec}]; expected the same",
                )
            if first is None:
                seen[clip_uid] = (clip, cwhere)
            yield cwhere, obj, clip, first is None


def _annotations(doc: _Doc, obj: dict[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    # Unannotated (test) clips may have no annotations at all.
    if "annotations" not in obj or obj["annotations"] is None:
        return iter(())
    return doc.items(obj, "annotations", where)


def _query(
    doc: _Doc, q: dict[str, Any], where: str, clip: EMClip, annotation_uid: str, idx: int
) -> NLQQuery | None:
    text = q.get("query")
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise doc.fail(f"{where}.query", f"expected a string, got {doc.show(text)}")
    keys = ("clip_start_sec", "clip_end_sec")
    present = [q.get(k) is not None for k in keys]
    if not any(present):
        start: float | None = None
        end: float | None = None
    elif not all(present):
        missing = keys[present.index(False)]
        have = keys[present.index(True)]
        raise doc.fail(
            f"{where}.{missing}",
            f"missing while {have} is {q[have]!r}; expected both bounds of the answer or neither",
        )
    else:
        start, end = doc.span(q, keys, where, strict=False)
    return NLQQuery(clip.clip_uid, clip.video_uid, annotation_uid, idx, text, start, end)


def read_nlq(path: str | Path) -> NLQMetadata:
    """Read an Ego4D ``nlq_*.json`` file (see the module docstring for the rules).

    Raises:
        MetadataError: unreadable file, invalid JSON, a missing field, a wrong type, a
            non-finite number, end before start, a clip_uid listed with two spans.
    """
    doc, root = _load(path)
    clips: list[EMClip] = []
    queries: list[NLQQuery] = []
    skipped = 0
    for cwhere, obj, clip, first in _clips(doc, root):
        if first:
            clips.append(clip)
        for awhere, ann in _annotations(doc, obj, cwhere):
            ann = doc.dict_(ann, awhere)
            annotation_uid = doc.string(ann, "annotation_uid", awhere)
            for idx, (qwhere, q) in enumerate(doc.items(ann, "language_queries", awhere)):
                parsed = _query(doc, doc.dict_(q, qwhere), qwhere, clip, annotation_uid, idx)
                if parsed is None:
                    skipped += 1
                else:
                    queries.append(parsed)
    return NLQMetadata(tuple(clips), tuple(queries), skipped, doc.path)


def read_moments(path: str | Path) -> MQMetadata:
    """Read an Ego4D ``moments_*.json`` file (see the module docstring for the rules).

    Raises:
        MetadataError: unreadable file, invalid JSON, a missing field, a wrong type, a
            non-finite number, end before start, a clip_uid listed with two spans.
    """
    doc, root = _load(path)
    clips: list[EMClip] = []
    moments: list[Moment] = []
    for cwhere, obj, clip, first in _clips(doc, root):
        if first:
            clips.append(clip)
        for awhere, ann in _annotations(doc, obj, cwhere):
            ann = doc.dict_(ann, awhere)
            for lwhere, lab in doc.items(ann, "labels", awhere):
                lab = doc.dict_(lab, lwhere)
                label = doc.string(lab, "label", lwhere)
                start, end = doc.span(lab, ("start_time", "end_time"), lwhere, strict=False)
                primary = doc.field(lab, "primary", lwhere)
                if not isinstance(primary, bool):
                    raise doc.fail(
                        f"{lwhere}.primary", f"expected true or false, got {doc.show(primary)}"
                    )
                moments.append(Moment(clip.clip_uid, label, start, end, primary))
    labels = tuple(sorted({m.label for m in moments}))
    return MQMetadata(tuple(clips), tuple(moments), labels, doc.path)
