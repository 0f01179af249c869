"""Lists of clips to read: a folder of videos, a text file of ``path[@START:END]`` lines, or a
``.csv``/``.tsv`` table; ``parse_clip_arg`` reads one ``path@START:END`` spelling."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "CLIP_SPEC_HELP",
    "VIDEO_SUFFIXES",
    "check_range",
    "clip_id",
    "parse_clip_arg",
    "read_clip_list",
]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")

# A time: decimal seconds, optionally with an exponent; no sign (times are >= 0), no inf/nan.
_SECONDS = re.compile(r"^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
CLIP_SPEC_HELP = "PATH or PATH@START:END (START < END, seconds >= 0, e.g. a.mp4@2.5:4)"


def _seconds(text: str, what: str, spec: str) -> float:
    """``text`` as a time in seconds (finite, >= 0); ``InputError`` naming ``spec`` if not."""
    value = float(text) if _SECONDS.match(text) else None
    if value is None or not math.isfinite(value):
        sign = " (times cannot be negative)" if text.strip().startswith("-") else ""
        raise InputError(
            f"clip {spec!r}: {what} must be a number of seconds >= 0, got {text!r}{sign}; "
            f"expected {CLIP_SPEC_HELP}"
        )
    return value


def check_range(start: float | None, end: float | None, label: str) -> None:
    """Both times given: END must be after START (``label`` names the clip in the error)."""
    if start is not None and end is not None and end <= start:
        raise InputError(
            f"{label}: END ({end:g}) must be after START ({start:g}); expected {CLIP_SPEC_HELP}"
        )


def parse_clip_arg(text: str) -> tuple[str, float | None, float | None]:
    """``path`` or ``path@START:END`` (seconds) -> (path, start, end).

    A suffix after the last ``@`` that holds a ``:`` and no path separator is a time range and
    must be valid (``a.mp4@-1:2``, ``a.mp4@x:y``, ``a.mp4@3:2`` and ``@1:2`` raise
    :class:`~egovlpv2_rt.errors.InputError` naming the spec); any other ``@`` is part of the
    file name.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"clip {text!r}: empty; expected {CLIP_SPEC_HELP}")
    path, at, suffix = text.rpartition("@")
    if not at or ":" not in suffix or "/" in suffix or os.sep in suffix:
        return text, None, None
    if not path:
        raise InputError(f"clip {text!r}: no file before '@'; expected {CLIP_SPEC_HELP}")
    start_text, _, end_text = suffix.partition(":")
    start = _seconds(start_text, "START", text)
    end = _seconds(end_text, "END", text)
    check_range(start, end, f"clip {text!r}")
    return path, start, end


def clip_id(path: str, start: float | None, end: float | None) -> str:
    """The id of a clip in messages and embedding files: ``path`` or ``path@START:END``."""
    if start is None and end is None:
        return path
    # A table may give only one end (to the end / from the start): that side stays empty.
    return f"{path}@{'' if start is None else f'{start:g}'}:{'' if end is None else f'{end:g}'}"


def read_clip_list(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Clips to embed: a folder (every video file below it, whole files, ids = relative
    paths), a ``.csv``/``.tsv`` with a header holding ``path`` (and optionally ``start``,
    ``end``, ``id``), a ``.parquet`` table with those columns (needs pyarrow), or a text
    file with one ``path`` or ``path@START:END`` per line (``#``
    comments). Relative paths are resolved against the list's folder. Returns dicts with
    ``id``, ``path``, ``start``, ``end``."""
    src = Path(source)
    if src.is_dir():
        files = sorted(
            p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
        )
        if not files:
            raise FileNotFoundError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)})")
        return [
            {"id": p.relative_to(src).as_posix(), "path": str(p), "start": None, "end": None}
            for p in files
        ]
    if not src.is_file():
        raise FileNotFoundError(f"--videos: no such file or folder: {src}")
    base = src.parent
    try:
        if src.suffix.lower() in (".csv", ".tsv"):
            clips = _read_table(src, base)
        elif src.suffix.lower() == ".parquet":
            clips = _read_parquet(src, base)
        else:
            clips = _read_lines(src, base)
    except UnicodeDecodeError as exc:
        raise InputError(f"{src}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{src}: not a readable table ({exc})") from None
    if not clips:
        raise InputError(f"{src}: lists no clips")
    return clips


def _table_time(row: dict[str, Any], column: str, src: Path, row_no: int) -> float | None:
    value = row.get(column)
    if value is None or value.strip() == "":
        return None
    try:
        return _seconds(value.strip(), column, f"{src}, row {row_no}")
    except InputError:
        raise InputError(
            f"{src}, row {row_no}: start/end must be numbers of seconds >= 0; {column} is {value!r}"
        ) from None


def _read_table(src: Path, base: Path) -> list[dict[str, Any]]:
    """Rows of a ``.csv``/``.tsv`` clip table with a ``path`` column."""
    clips: list[dict[str, Any]] = []
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if src.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise InputError(
                f"{src}: the header must have a 'path' column, got {reader.fieldnames}"
            )
        for row_no, row in enumerate(reader, start=2):
            start = _table_time(row, "start", src, row_no)
            end = _table_time(row, "end", src, row_no)
            check_range(start, end, f"{src}, row {row_no}")
            path = row["path"]
            if not path or not path.strip():
                raise InputError(f"{src}, row {row_no}: empty 'path'")
            clips.append(
                {
                    "id": row.get("id") or clip_id(path, start, end),
                    "path": str(base / path),
                    "start": start,
                    "end": end,
                }
            )
    return clips


def _read_parquet(src: Path, base: Path) -> list[dict[str, Any]]:
    """Rows of a ``.parquet`` clip table with a ``path`` column (``start``, ``end`` numbers
    of seconds or null, ``id`` optional), checked as a ``.csv`` table's."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{src}: a .parquet clip list needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(str(src))
    except (OSError, ValueError) as exc:
        raise InputError(f"{src}: not a readable parquet table ({exc})") from None
    if "path" not in table.column_names:
        raise InputError(f"{src}: the table must have a 'path' column, got {table.column_names}")
    clips: list[dict[str, Any]] = []
    for row_no, row in enumerate(table.to_pylist()):
        where = f"{src}, row {row_no}"
        times = []
        for column in ("start", "end"):
            value = row.get(column)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
            ):
                raise InputError(
                    f"{where}: {column} must be a number of seconds >= 0 or null, got {value!r}"
                )
            times.append(None if value is None else float(value))
        start, end = times
        check_range(start, end, where)
        path = row["path"]
        if not isinstance(path, str) or not path.strip():
            raise InputError(f"{where}: 'path' must be a non-empty string, got {path!r}")
        cid = row.get("id")
        clips.append(
            {
                "id": str(cid) if cid not in (None, "") else clip_id(path, start, end),
                "path": str(base / path),
                "start": start,
                "end": end,
            }
        )
    return clips


def _read_lines(src: Path, base: Path) -> list[dict[str, Any]]:
    """Lines of a text clip list: ``path`` or ``path@START:END``, ``#`` comments."""
    clips: list[dict[str, Any]] = []
    for line_no, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            path, start, end = parse_clip_arg(line)
        except InputError as exc:
            raise InputError(f"{src}, line {line_no}: {exc}") from None
        clips.append(
            {
                "id": clip_id(path, start, end),
                "path": str(base / path),
                "start": start,
                "end": end,
            }
        )
    return clips
