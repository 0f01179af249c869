"""Lists of clips to read: a folder of videos, a text file of ``path[@START:END]`` lines, or a
``.csv``/``.tsv`` table; ``parse_clip_arg`` reads one ``path@START:END`` spelling."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["VIDEO_SUFFIXES", "clip_id", "parse_clip_arg", "read_clip_list"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")

_CLIP_RANGE = re.compile(r"^(?P<path>.+)@(?P<start>[0-9.]+):(?P<end>[0-9.]+)$")


def parse_clip_arg(text: str) -> tuple[str, float | None, float | None]:
    """``path`` or ``path@START:END`` (seconds) -> (path, start, end)."""
    m = _CLIP_RANGE.match(text)
    if m:
        start, end = float(m["start"]), float(m["end"])
        if end <= start:
            raise ValueError(f"clip {text!r}: END must be after START")
        return m["path"], start, end
    return text, None, None


def clip_id(path: str, start: float | None, end: float | None) -> str:
    """The id of a clip in messages and embedding files: ``path`` or ``path@START:END``."""
    return path if start is None else f"{path}@{start:g}:{end:g}"


def read_clip_list(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Clips to embed: a folder (every video file below it, whole files, ids = relative
    paths), a ``.csv``/``.tsv`` with a header holding ``path`` (and optionally ``start``,
    ``end``, ``id``), or a text file with one ``path`` or ``path@START:END`` per line (``#``
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
    clips: list[dict[str, Any]] = []
    if src.suffix.lower() in (".csv", ".tsv"):
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if src.suffix.lower() == ".tsv" else ",")
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(
                    f"{src}: the header must have a 'path' column, got {reader.fieldnames}"
                )
            for row_no, row in enumerate(reader, start=2):
                try:
                    start = float(row["start"]) if row.get("start") not in (None, "") else None
                    end = float(row["end"]) if row.get("end") not in (None, "") else None
                except ValueError:
                    raise ValueError(
                        f"{src}, row {row_no}: start/end must be numbers, got "
                        f"{row.get('start')!r}, {row.get('end')!r}"
                    ) from None
                path = row["path"]
                if not path:
                    raise ValueError(f"{src}, row {row_no}: empty 'path'")
                clips.append(
                    {
                        "id": row.get("id") or clip_id(path, start, end),
                        "path": str(base / path),
                        "start": start,
                        "end": end,
                    }
                )
    else:
        for line_no, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                path, start, end = parse_clip_arg(line)
            except ValueError as exc:
                raise ValueError(f"{src}, line {line_no}: {exc}") from None
            clips.append(
                {
                    "id": clip_id(path, start, end),
                    "path": str(base / path),
                    "start": start,
                    "end": end,
                }
            )
    if not clips:
        raise ValueError(f"{src}: lists no clips")
    return clips
