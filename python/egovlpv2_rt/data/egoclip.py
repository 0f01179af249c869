"""EgoClip training metadata (``egoclip.csv``): a tab-separated file, one narrated clip per row.

Columns (the released file's header, in this order): video_uid, video_dur, narration_source,
narration_ind, narration_time, clip_start, clip_end, clip_text, tag_verb, tag_noun. Tags are
Python-style integer lists such as ``"[3, 5]"`` (indices into the verb / noun taxonomies).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import InputError
from ..files import atomic_output

__all__ = [
    "EGOCLIP_COLUMNS",
    "ClipRecord",
    "MetadataError",
    "parse_tag_list",
    "read_egoclip",
    "write_egoclip",
]

EGOCLIP_COLUMNS: tuple[str, ...] = (
    "video_uid",
    "video_dur",
    "narration_source",
    "narration_ind",
    "narration_time",
    "clip_start",
    "clip_end",
    "clip_text",
    "tag_verb",
    "tag_noun",
)

_Scalar = TypeVar("_Scalar", str, int, float)


class MetadataError(InputError):
    """A metadata file is malformed; the message names the file, the row and the field."""


@dataclass(frozen=True)
class ClipRecord:
    """One narrated clip. Times are seconds from the start of the video ``video_uid``."""

    video_uid: str
    video_dur: float
    narration_source: str
    narration_ind: int
    narration_time: float
    clip_start: float
    clip_end: float
    clip_text: str
    tag_verb: tuple[int, ...]
    tag_noun: tuple[int, ...]

    def to_row(self) -> dict[str, str]:
        """The record as EgoClip column strings (tags as ``"[a, b]"``)."""
        return {
            "video_uid": self.video_uid,
            "video_dur": repr(float(self.video_dur)),
            "narration_source": self.narration_source,
            "narration_ind": str(int(self.narration_ind)),
            "narration_time": repr(float(self.narration_time)),
            "clip_start": repr(float(self.clip_start)),
            "clip_end": repr(float(self.clip_end)),
            "clip_text": self.clip_text,
            "tag_verb": "[" + ", ".join(str(v) for v in self.tag_verb) + "]",
            "tag_noun": "[" + ", ".join(str(v) for v in self.tag_noun) + "]",
        }


def parse_tag_list(text: str, where: str) -> tuple[int, ...]:
    """Parse ``"[3, 5]"`` into ``(3, 5)``; ``where`` prefixes the error message."""
    s = str(text).strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise MetadataError(f"{where}: expected a list like '[3, 5]', got {text!r}")
    body = s[1:-1].strip()
    if not body:
        return ()
    out = []
    for part in body.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise MetadataError(f"{where}: tag {part!r} is not an integer (in {text!r})") from None
        if value < 0:
            raise MetadataError(f"{where}: tag {value} is negative (in {text!r})")
        out.append(value)
    return tuple(out)


def _field(row: dict[str, str], name: str, kind: type[_Scalar], where: str) -> _Scalar:
    raw = row.get(name)
    if raw is None or (kind is not str and raw.strip() == ""):
        raise MetadataError(f"{where}, field {name!r}: empty value")
    try:  # str(raw) is raw
        return kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise MetadataError(
            f"{where}, field {name!r}: {raw!r} is not a valid {kind.__name__}"
        ) from None


def record_from_mapping(row: dict[str, object], where: str) -> ClipRecord:
    """Build a :class:`ClipRecord` from a column->value mapping (csv row or json object).

    Only ``video_uid``, ``clip_start``, ``clip_end``, ``clip_text``, ``tag_verb`` and ``tag_noun``
    are required; the other columns default to neutral values (EgoMCQ entries may lack them).
    """
    srow = {
        k: (v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v))
        for k, v in row.items()
        if v is not None
    }
    for req in ("video_uid", "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun"):
        if req not in srow:
            raise MetadataError(f"{where}: missing field {req!r}")
    start = _field(srow, "clip_start", float, where)
    end = _field(srow, "clip_end", float, where)
    if end < start:
        raise MetadataError(f"{where}, field 'clip_end': {end} is before clip_start {start}")
    return ClipRecord(
        video_uid=str(_field(srow, "video_uid", str, where)),
        video_dur=float(_field(srow, "video_dur", float, where))
        if "video_dur" in srow
        else float(end),
        narration_source=srow.get("narration_source", ""),
        narration_ind=int(_field(srow, "narration_ind", int, where))
        if "narration_ind" in srow
        else 0,
        narration_time=float(_field(srow, "narration_time", float, where))
        if "narration_time" in srow
        else 0.5 * (start + end),
        clip_start=float(start),
        clip_end=float(end),
        clip_text=str(srow["clip_text"]),
        tag_verb=parse_tag_list(srow["tag_verb"], f"{where}, field 'tag_verb'"),
        tag_noun=parse_tag_list(srow["tag_noun"], f"{where}, field 'tag_noun'"),
    )


def read_egoclip(path: str | Path) -> list[ClipRecord]:
    """Read an EgoClip TSV file.

    Raises:
        MetadataError: missing file, missing columns (all named), or a bad value (file, line
            number and column named).
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: EgoClip metadata file not found")
    try:
        return _read_egoclip_rows(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise MetadataError(
            f"{path}: not a UTF-8 tab-separated EgoClip file ({type(e).__name__}: {e})"
        ) from None


def _read_egoclip_rows(path: Path) -> list[ClipRecord]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        missing = [c for c in EGOCLIP_COLUMNS if c not in header]
        if missing:
            raise MetadataError(
                f"{path}: missing column(s) {missing} in the header "
                f"{list(header)}; expected tab-separated {list(EGOCLIP_COLUMNS)}"
            )
        records = []
        for row in reader:
            where = f"{path}, row {reader.line_num}"
            if None in row or any(row.get(c) is None for c in EGOCLIP_COLUMNS):
                raise MetadataError(f"{where}: expected {len(header)} tab-separated fields")
            records.append(record_from_mapping(row, where))
    return records


def write_egoclip(path: str | Path, records: Iterable[ClipRecord]) -> None:
    """Write records as an EgoClip TSV (header + one row per clip), atomically: a record that
    cannot be written leaves the old file and no temporary file."""
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=list(EGOCLIP_COLUMNS),
            delimiter="\t",
            quoting=csv.QUOTE_NONE,
            escapechar="\\",
            lineterminator="\n",
        )
        writer.writeheader()
        for r in records:
            row = r.to_row()
            if any(("\t" in v or "\n" in v) for v in row.values()):
                raise MetadataError(
                    f"{path}: record {r.video_uid}/{r.narration_ind} has a tab "
                    f"or newline in a field"
                )
            writer.writerow(row)


def segment_ids(records: Sequence[ClipRecord], segment_sec: float) -> list[str]:
    """``video_uid + '_' + str(narration_time // segment_sec)`` per record (the original's
    scene-aware negative grouping, ``neg_param`` seconds)."""
    return [f"{r.video_uid}_{int(r.narration_time // segment_sec)}" for r in records]
