"""EgoMCQ (``egomcq.json``): multiple-choice video-language questions.

The released file is a JSON object keyed by the question number as a string (``"0"``, ``"1"``,
...). Each entry holds ``query`` (a clip record whose ``clip_text`` is the question), ``choices``
(an object keyed ``"0"``..``"4"``, each a clip record: ``video_uid``, ``clip_start``,
``clip_end``, ``clip_text``, ``tag_verb``, ``tag_noun``, ...), ``answer`` (index of the matching
choice) and ``types`` (1 = inter-video: the choices come from different videos; 2 = intra-video:
all choices come from the query's video).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .egoclip import ClipRecord, MetadataError, record_from_mapping

__all__ = ["INTER", "INTRA", "MCQItem", "read_egomcq", "write_egomcq"]

INTER = 1
INTRA = 2


@dataclass(frozen=True)
class MCQItem:
    """One EgoMCQ question: the query text, its candidate clips, the answer and the type."""

    key: str
    query: ClipRecord
    choices: tuple[ClipRecord, ...]
    answer: int
    type: int

    @property
    def text(self) -> str:
        return self.query.clip_text


def read_egomcq(path: str | Path, num_choices: int | None = 5) -> list[MCQItem]:
    """Read ``egomcq.json`` into questions ordered by their integer key.

    Args:
        path: the json file.
        num_choices: required number of candidates per question (None: any, at least 2).

    Raises:
        MetadataError: unreadable json or a malformed entry (file, entry key and field named),
            e.g. an ``answer`` outside ``[0, len(choices))`` or a ``types`` other than 1 or 2.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: EgoMCQ file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise MetadataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MetadataError(
            f"{path}: top level must be an object keyed by question number, "
            f"got {type(data).__name__}"
        )
    items = []
    for key in sorted(data, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)):
        entry = data[key]
        where = f"{path}, entry {key!r}"
        if not isinstance(entry, dict):
            raise MetadataError(f"{where}: must be an object, got {type(entry).__name__}")
        for field in ("query", "choices", "answer", "types"):
            if field not in entry:
                raise MetadataError(f"{where}: missing field {field!r}")
        choices_raw = entry["choices"]
        if isinstance(choices_raw, dict):
            ckeys = sorted(choices_raw, key=lambda k: int(k) if str(k).isdigit() else 1 << 30)
            choice_list = [choices_raw[k] for k in ckeys]
            cnames = ckeys
        elif isinstance(choices_raw, list):
            choice_list, cnames = choices_raw, [str(i) for i in range(len(choices_raw))]
        else:
            raise MetadataError(f"{where}, field 'choices': must be an object or a list")
        n = len(choice_list)
        if (num_choices is not None and n != num_choices) or n < 2:
            raise MetadataError(
                f"{where}, field 'choices': {n} candidates, expected "
                f"{num_choices if num_choices is not None else 'at least 2'}"
            )
        answer = entry["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise MetadataError(f"{where}, field 'answer': must be an integer, got {answer!r}")
        if not 0 <= answer < n:
            raise MetadataError(
                f"{where}, field 'answer': {answer} is out of range for "
                f"{n} choices (valid 0..{n - 1})"
            )
        qtype = entry["types"]
        if qtype not in (INTER, INTRA):
            raise MetadataError(
                f"{where}, field 'types': {qtype!r}; expected 1 (inter-video) or 2 (intra-video)"
            )
        if not isinstance(entry["query"], dict):
            raise MetadataError(f"{where}, field 'query': must be an object")
        query = _query_record(entry["query"], f"{where}, field 'query'")
        choices = tuple(
            record_from_mapping(c, f"{where}, field 'choices'[{cn!r}]")
            if isinstance(c, dict)
            else _bad_choice(where, cn)
            for c, cn in zip(choice_list, cnames, strict=True)
        )
        items.append(MCQItem(str(key), query, choices, int(answer), int(qtype)))
    if not items:
        raise MetadataError(f"{path}: no questions")
    return items


def _bad_choice(where: str, name: str) -> ClipRecord:
    raise MetadataError(f"{where}, field 'choices'[{name!r}]: must be an object")


def _query_record(q: dict, where: str) -> ClipRecord:
    # The query only needs its text; the released file also carries its clip fields.
    if "clip_text" not in q:
        raise MetadataError(f"{where}: missing field 'clip_text'")
    full = {"video_uid": "", "clip_start": 0.0, "clip_end": 0.0, "tag_verb": "[]", "tag_noun": "[]"}
    full.update(q)
    return record_from_mapping(full, where)


def write_egomcq(path: str | Path, items: Sequence[MCQItem]) -> None:
    """Write questions in the released layout (keys "0".., choices keyed "0"..)."""
    out = {}
    for i, it in enumerate(items):
        out[str(i)] = {
            "answer": int(it.answer),
            "query": it.query.to_row(),
            "choices": {str(j): c.to_row() for j, c in enumerate(it.choices)},
            "types": int(it.type),
        }
    atomic_write_text(path, json.dumps(out, indent=1))
