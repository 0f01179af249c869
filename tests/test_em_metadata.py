"""Ego4D episodic-memory metadata readers: realistic excerpts of the released NLQ and MQ files
(the extra fields, a query without text, a null query, a repeated clip, an unannotated split)
and one test per kind of bad content, each naming file, JSON path, value and expectation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from egovlpv2_rt.data.egoclip import MetadataError
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.episodic.metadata import (
    EMClip,
    Moment,
    NLQQuery,
    read_moments,
    read_nlq,
)

V1 = "38737402-19bd-4689-9e74-3af391b15feb"
V2 = "0a01f9b9-6a2e-4c4f-8a5b-5b6a5f0f7d11"
C1 = "93231c7e-1cf4-4a20-b1f8-9cc9428915b2"
C2 = "cb3bf9d7-7f6b-4567-9446-45c6b493d721"
C3 = "5d2f8c1e-0c38-4f57-b3a3-8d5b7d2e9a40"


def _lq(s: float, e: float, vs: float, query: Any = "", **extra: Any) -> dict[str, Any]:
    """A language query as released: both time frames, frame numbers, template and slots."""
    q: dict[str, Any] = {
        "clip_start_sec": s,
        "clip_end_sec": e,
        "video_start_sec": vs + s,
        "video_end_sec": vs + e,
        "video_start_frame": 35999,
        "video_end_frame": 35999,
        "template": "Objects: What did I put in X?",
        "query": query,
        "slot_x": "black dustbin",
        "verb_x": "put",
        "raw_tags": ["Objects: What did I put in X?", query, "black dustbin", "put"],
    }
    q.update(extra)
    return q


def _clip(uid: str, vs: float, ve: float, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "clip_uid": uid,
        "video_start_sec": vs,
        "video_end_sec": ve,
        "video_start_frame": 35999,
        "video_end_frame": 35999,
        "clip_start_sec": 0,
        "clip_end_sec": ve - vs,
        "clip_start_frame": 0,
        "clip_end_frame": round((ve - vs) * 30),
        "source_clip_uid": "cb3bf9d7-0000-4567-9446-45c6b493d721",
        "annotations": annotations,
    }


def nlq_doc() -> dict[str, Any]:
    """Two videos, three clips. The second query has no ``query`` key (as one val entry), the
    third a null one; the answer of the fourth is zero-length and the last one runs 0.02 s past
    the clip end (both occur in the released val file). C2 is listed twice with the same span."""
    q_no_key = _lq(10.0, 12.0, 630.0)
    del q_no_key["query"]
    return {
        "version": "1",
        "date": "220216",
        "description": "NLQ Annotations (val)",
        "manifest": "s3://ego4d-consortium-sharing/public/v1/full_scale/manifest.csv",
        "videos": [
            {
                "video_uid": V1,
                "split": "val",
                "clips": [
                    _clip(
                        C1,
                        630.0,
                        1110.0366739908854,
                        [
                            {
                                "language_queries": [
                                    _lq(425.0, 431.0, 630.0, "what did I put in the dustbin?"),
                                    q_no_key,
                                    _lq(1.0, 2.0, 630.0, None, slot_x=None),
                                    _lq(173.9, 173.9, 630.0, "In what location did I see it?"),
                                ],
                                "annotation_uid": "ca7e11a2-cd1e-40dd-9d2f-ea810ab6a99b",
                            },
                            {
                                "language_queries": [
                                    _lq(459.2183, 480.067, 630.0, "who did I talk to?")
                                ],
                                "annotation_uid": "dac51ee2-bdec-4271-9ac9-85be440f5cf6",
                            },
                        ],
                    ),
                    _clip(C2, 1200.5, 1300.5, []),
                ],
            },
            {
                "video_uid": V2,
                "split": "val",
                "clips": [
                    _clip(
                        C3,
                        -3.999999999976245e-07,
                        480.0,
                        [
                            {
                                "language_queries": [_lq(3, 7, 0.0, "where did I put carton?")],
                                "annotation_uid": "f7e9c1c6-1381-4df2-9121-f0b1f437282d",
                            }
                        ],
                    )
                ],
            },
            {"video_uid": V1, "split": "val", "clips": [_clip(C2, 1200.5, 1300.5, [])]},
        ],
    }


def _write(tmp_path: Path, doc: Any, name: str = "nlq_val.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return p


def test_nlq_realistic_excerpt(tmp_path):
    meta = read_nlq(_write(tmp_path, nlq_doc()))
    assert meta.clips == (
        EMClip(V1, C1, 630.0, 1110.0366739908854),
        EMClip(V1, C2, 1200.5, 1300.5),
        EMClip(V2, C3, -3.999999999976245e-07, 480.0),
    )
    assert meta.clips[0].duration == pytest.approx(480.0366739908854, abs=1e-12)
    a1, a2 = "ca7e11a2-cd1e-40dd-9d2f-ea810ab6a99b", "dac51ee2-bdec-4271-9ac9-85be440f5cf6"
    assert meta.queries == (
        NLQQuery(C1, V1, a1, 0, "what did I put in the dustbin?", 425.0, 431.0),
        NLQQuery(C1, V1, a1, 3, "In what location did I see it?", 173.9, 173.9),
        NLQQuery(C1, V1, a2, 0, "who did I talk to?", 459.2183, 480.067),
        NLQQuery(
            C3, V2, "f7e9c1c6-1381-4df2-9121-f0b1f437282d", 0, "where did I put carton?", 3.0, 7.0
        ),
    )
    assert meta.skipped_queries == 2 and meta.path == tmp_path / "nlq_val.json"
    assert all(q.annotated for q in meta.queries)
    assert isinstance(meta.queries[3].start_sec, float)


def test_nlq_test_unannotated(tmp_path):
    doc = {
        "version": "1",
        "date": "220216",
        "description": "NLQ Annotations (test unannotated)",
        "manifest": "s3://ego4d-consortium-sharing/public/v1/full_scale/manifest.csv",
        "videos": [
            {
                "video_uid": V1,
                "split": "test",
                "clips": [
                    {
                        **_clip(C1, 1489.09, 1969.13, []),
                        "annotations": [
                            {
                                "language_queries": [
                                    {"query": "What did in put in the sack?"},
                                    {"query": ""},
                                    {"query": "Where is the camera?", "clip_start_sec": None},
                                ],
                                "annotation_uid": "f7e9c1c6-1381-4df2-9121-f0b1f437282d",
                            }
                        ],
                    },
                    {k: v for k, v in _clip(C2, 10.0, 20.0, []).items() if k != "annotations"},
                ],
            }
        ],
    }
    meta = read_nlq(_write(tmp_path, doc, "nlq_test_unannotated.json"))
    assert [c.clip_uid for c in meta.clips] == [C1, C2]
    assert [(q.query, q.query_idx, q.start_sec, q.end_sec) for q in meta.queries] == [
        ("What did in put in the sack?", 0, None, None),
        ("Where is the camera?", 2, None, None),
    ]
    assert meta.skipped_queries == 1 and not any(q.annotated for q in meta.queries)


def moments_doc() -> dict[str, Any]:
    def label(s: float, e: float, name: str, primary: bool) -> dict[str, Any]:
        return {
            "start_time": s,
            "end_time": e,
            "label": name,
            "video_start_time": 630.0 + s,
            "video_end_time": 630.0 + e,
            "video_start_frame": round((630.0 + s) * 30),
            "video_end_frame": round((630.0 + e) * 30),
            "primary": primary,
        }

    return {
        "version": "v1",
        "date": "211214",
        "description": "Moment Annotations (train)",
        "manifest": "s3://ego4d-consortium-sharing/public/v1/full_scale/manifest.csv",
        "videos": [
            {
                "video_uid": V1,
                "split": "train",
                "clips": [
                    {
                        **_clip(C1, 630.0, 1110.0, []),
                        "annotations": [
                            {
                                "annotator_uid": "a1b2",
                                "labels": [
                                    label(12.5, 30.25, "use_phone", True),
                                    label(12.5, 40.0, '"browse_through_clothing_items"', False),
                                ],
                            },
                            {
                                "annotator_uid": "c3d4",
                                "labels": [
                                    label(100, 100, "converse_/_interact_with_someone", True)
                                ],
                            },
                        ],
                    },
                    {k: v for k, v in _clip(C2, 0.0, 480.0, []).items() if k != "annotations"},
                ],
            }
        ],
    }


def test_moments_realistic_excerpt(tmp_path):
    meta = read_moments(_write(tmp_path, moments_doc(), "moments_train.json"))
    assert meta.clips == (EMClip(V1, C1, 630.0, 1110.0), EMClip(V1, C2, 0.0, 480.0))
    assert meta.moments == (
        Moment(C1, "use_phone", 12.5, 30.25, True),
        Moment(C1, '"browse_through_clothing_items"', 12.5, 40.0, False),
        Moment(C1, "converse_/_interact_with_someone", 100.0, 100.0, True),
    )
    assert meta.labels == (
        '"browse_through_clothing_items"',
        "converse_/_interact_with_someone",
        "use_phone",
    )


# ------------------------------------------------------------------------------ bad content


def _nlq_with(edit) -> dict[str, Any]:
    doc = copy.deepcopy(nlq_doc())
    edit(doc)
    return doc


def _q(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0]


NLQ_BAD = [
    (lambda d: d.pop("videos"), "videos: missing field"),
    (lambda d: d.update(videos={}), "videos: expected a JSON list, got {}"),
    (lambda d: d["videos"].__setitem__(1, 7), "videos[1]: expected a JSON object, got 7"),
    (lambda d: d["videos"][1].pop("video_uid"), "videos[1].video_uid: missing field"),
    (
        lambda d: d["videos"][1].update(video_uid=""),
        "videos[1].video_uid: expected a non-empty string, got ''",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].pop("video_end_sec"),
        "videos[0].clips[1].video_end_sec: missing field",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].update(video_start_sec="1200.5"),
        "videos[0].clips[1].video_start_sec: expected a number, got '1200.5'",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].update(video_end_sec=True),
        "videos[0].clips[1].video_end_sec: expected a number, got True",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].update(video_end_sec=float("nan")),
        "videos[0].clips[1].video_end_sec: expected a finite number, got nan",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].update(video_end_sec=float("inf")),
        "videos[0].clips[1].video_end_sec: expected a finite number, got inf",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].update(video_end_sec=1100.0),
        "videos[0].clips[1].video_end_sec: expected > video_start_sec (1200.5), got 1100.0",
    ),
    (
        lambda d: d["videos"][0]["clips"][1].update(video_end_sec=1200.5),
        "videos[0].clips[1].video_end_sec: expected > video_start_sec (1200.5), got 1200.5",
    ),
    (
        lambda d: d["videos"][2]["clips"][0].update(video_end_sec=1300.75),
        f"videos[2].clips[0]: clip_uid '{C2}' is listed again with video '{V1}' span "
        f"[1200.5, 1300.75], but videos[0].clips[1] has video '{V1}' span [1200.5, 1300.5]; "
        "expected the same",
    ),
    (
        lambda d: d["videos"][2].update(video_uid=V2),
        f"videos[2].clips[0]: clip_uid '{C2}' is listed again with video '{V2}' span "
        f"[1200.5, 1300.5], but videos[0].clips[1] has video '{V1}' span [1200.5, 1300.5]; "
        "expected the same",
    ),
    (
        lambda d: d["videos"][0]["clips"][0]["annotations"][1].pop("annotation_uid"),
        "videos[0].clips[0].annotations[1].annotation_uid: missing field",
    ),
    (
        lambda d: d["videos"][0]["clips"][0]["annotations"][1].pop("language_queries"),
        "videos[0].clips[0].annotations[1].language_queries: missing field",
    ),
    (
        lambda d: _q(d).update(query=["what", "did", "I", "put"]),
        "videos[0].clips[0].annotations[0].language_queries[0].query: expected a string, "
        "got ['what', 'did', 'I', 'put']",
    ),
    (
        lambda d: _q(d).update(clip_end_sec=420.5),
        "videos[0].clips[0].annotations[0].language_queries[0].clip_end_sec: expected >= "
        "clip_start_sec (425.0), got 420.5",
    ),
    (
        lambda d: _q(d).pop("clip_start_sec"),
        "videos[0].clips[0].annotations[0].language_queries[0].clip_start_sec: missing while "
        "clip_end_sec is 431.0; expected both bounds of the answer or neither",
    ),
    (
        lambda d: _q(d).update(clip_end_sec="431"),
        "videos[0].clips[0].annotations[0].language_queries[0].clip_end_sec: expected a "
        "number, got '431'",
    ),
]


@pytest.mark.parametrize(("edit", "message"), NLQ_BAD)
def test_nlq_errors_name_file_path_value_and_expectation(tmp_path, edit, message):
    path = _write(tmp_path, _nlq_with(edit))
    with pytest.raises(MetadataError) as info:
        read_nlq(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value) and isinstance(info.value, InputError)


def _label(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["videos"][0]["clips"][0]["annotations"][0]["labels"][0]


MQ_BAD = [
    (lambda d: _label(d).pop("label"), "labels[0].label: missing field"),
    (lambda d: _label(d).update(primary=1), "labels[0].primary: expected true or false, got 1"),
    (
        lambda d: _label(d).update(end_time=12.0),
        "labels[0].end_time: expected >= start_time (12.5), got 12.0",
    ),
    (
        lambda d: _label(d).update(start_time=None),
        "labels[0].start_time: expected a number, got None",
    ),
    (
        lambda d: d["videos"][0]["clips"][0]["annotations"][1].update(labels={"a": 1}),
        "annotations[1].labels: expected a JSON list, got {'a': 1}",
    ),
]


@pytest.mark.parametrize(("edit", "message"), MQ_BAD)
def test_moments_errors_name_file_path_value_and_expectation(tmp_path, edit, message):
    doc = moments_doc()
    edit(doc)
    path = _write(tmp_path, doc, "moments_train.json")
    with pytest.raises(MetadataError) as info:
        read_moments(path)
    assert str(info.value).startswith(f"{path}: videos[0].clips[0].")
    assert str(info.value).endswith(message)


def test_unreadable_files(tmp_path):
    missing = tmp_path / "nlq_train.json"
    with pytest.raises(MetadataError, match=r"nlq_train\.json: no such metadata file"):
        read_nlq(missing)
    with pytest.raises(MetadataError, match=r"nlq_val.json: not valid JSON \(line 1, column 13"):
        read_nlq(_write(tmp_path, '{"videos": [,]}'))
    with pytest.raises(MetadataError, match=r"moments_val.json: top level: expected a JSON object"):
        read_moments(_write(tmp_path, "[1, 2]", "moments_val.json"))
    bad = tmp_path / "moments_test_unannotated.json"
    bad.write_bytes(b'{"videos": "\xff"}')
    with pytest.raises(MetadataError, match="cannot be read as UTF-8 text"):
        read_moments(bad)


def test_long_values_are_shortened_in_messages(tmp_path):
    path = _write(tmp_path, _nlq_with(lambda d: _q(d).update(query=list(range(100)))))
    with pytest.raises(MetadataError) as info:
        read_nlq(path)
    assert str(info.value).endswith(
        "got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21..."
    )
