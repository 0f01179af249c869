"""Charades-Ego files: the class list, the official split CSVs and the training segments.

Files, as published (``CharadesEgo.tgz`` of the original, or the official Charades-Ego release):

- ``Charades_v1_classes.txt``: one class per line, ``"c000 Holding some clothes"``; the code's
  number is the class index and must equal the line's position (the original looks a class up by
  ``int(code[1:])`` as a row of this file).
- ``CharadesEgo_v1_{train,test}_only1st.csv``: the Charades columns ``id, subject, scene,
  quality, relevance, verified, script, objects, descriptions, actions, length`` with a header.
  ``script`` and ``descriptions`` are free text with commas, semicolons and quotes, so the file
  is read with the ``csv`` module. ``actions`` is ``"c092 11.90 21.20;c147 0.00 12.60"`` (class
  code, start and end in seconds) and may be empty.
- videos ``{video_root}/{id}.mp4``.

Training samples are one per action segment (:func:`training_segments`). The original builds
them once into a tab-separated ``metadata_train.csv`` (``utils/charades_meta.py``: the train
CSV's rows in order, each row's actions in order, rows without actions skipped, the text being
the class name); :func:`training_segments` builds the same list from the official CSV directly,
and :func:`read_metadata_train` reads such a file when one is at hand.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = [
    "CHARADES_COLUMNS",
    "CLASSES_FILE",
    "METADATA_TRAIN_COLUMNS",
    "SPLIT_FILES",
    "CharadesAction",
    "CharadesClass",
    "CharadesVideo",
    "Segment",
    "parse_actions",
    "read_charades_classes",
    "read_charades_csv",
    "read_metadata_train",
    "training_segments",
]

CHARADES_COLUMNS: tuple[str, ...] = (
    "id",
    "subject",
    "scene",
    "quality",
    "relevance",
    "verified",
    "script",
    "objects",
    "descriptions",
    "actions",
    "length",
)
METADATA_TRAIN_COLUMNS: tuple[str, ...] = ("id", "cls", "t_start", "t_end", "narration")
CLASSES_FILE = "Charades_v1_classes.txt"
SPLIT_FILES: dict[str, str] = {
    "train": "CharadesEgo_v1_train_only1st.csv",
    "test": "CharadesEgo_v1_test_only1st.csv",
}

_CLASS_LINE = re.compile(r"c(\d{3,}) (\S.*)")


@dataclass(frozen=True)
class CharadesClass:
    """One action class: ``index`` (0-based), ``code`` ("c000") and ``name`` (the text)."""

    index: int
    code: str
    name: str


@dataclass(frozen=True)
class CharadesAction:
    """One labelled action of a video: class index and its time range in seconds."""

    class_index: int
    start: float
    end: float


@dataclass(frozen=True)
class CharadesVideo:
    """One row of a split CSV. Text columns are kept verbatim; ``actions`` is parsed and
    ``length`` (seconds) is None when the field is empty."""

    id: str
    subject: str
    scene: str
    quality: str
    relevance: str
    verified: str
    script: str
    objects: str
    descriptions: str
    actions: tuple[CharadesAction, ...]
    length: float | None

    def labels(self) -> frozenset[int]:
        """The class indices this video is labelled with (its evaluation target)."""
        return frozenset(a.class_index for a in self.actions)


@dataclass(frozen=True)
class Segment:
    """A training sample: the action ``class_index`` of video ``video_id`` in
    ``[t_start, t_end]`` seconds; ``text`` is the bare class name (no prompt)."""

    video_id: str
    class_index: int
    t_start: float
    t_end: float
    text: str


def read_charades_classes(path: str | Path) -> list[CharadesClass]:
    """Read ``Charades_v1_classes.txt``.

    Raises:
        InputError: missing or undecodable file, a line not of the form ``"c### name"`` or
            whose code is not its line position (file, line and the expectation named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Charades class file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from None
    out: list[CharadesClass] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        m = _CLASS_LINE.fullmatch(line)
        if m is None:
            raise InputError(
                f"{path}, line {lineno}: expected 'c### class name' "
                f"(e.g. 'c000 Holding some clothes'), got {raw!r}"
            )
        index = len(out)
        if int(m.group(1)) != index:
            raise InputError(
                f"{path}, line {lineno}: expected class code c{index:03d} (codes number the "
                f"classes in order from c000), got {line.split()[0]!r}"
            )
        out.append(CharadesClass(index, line.split()[0], m.group(2).strip()))
    if not out:
        raise InputError(f"{path}: no class lines; expected lines like 'c000 Holding some clothes'")
    return out


def _float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{where}: {what} {text!r} must be a finite number >= 0")
    return value


def parse_actions(
    text: str, classes: Sequence[CharadesClass], where: str
) -> tuple[CharadesAction, ...]:
    """Parse an ``actions`` field ``"c### start end;..."`` (empty: no action).

    ``where`` names the file, row and column in error messages.
    """
    body = text.strip()
    if not body:
        return ()
    codes = {c.code: c.index for c in classes}
    out = []
    for k, item in enumerate(body.split(";"), start=1):
        parts = item.split()
        at = f"{where}, action {k} {item.strip()!r}"
        if len(parts) != 3:
            raise InputError(f"{at}: expected 'c### start end' (class code, two times in s)")
        code, t0, t1 = parts
        if code not in codes:
            raise InputError(
                f"{at}: unknown class {code!r}; expected one of c000..c{len(classes) - 1:03d} "
                "of the class file"
            )
        start = _float(t0, at, "start")
        end = _float(t1, at, "end")
        if end < start:
            raise InputError(f"{at}: end {end:g} is before start {start:g}; expected start <= end")
        out.append(CharadesAction(codes[code], start, end))
    return tuple(out)


def _open_csv(path: Path, what: str) -> list[list[str]]:
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a UTF-8 CSV file ({type(e).__name__}: {e})") from None


def _columns(path: Path, header: list[str], expected: Sequence[str], how: str) -> dict[str, int]:
    names = [h.strip() for h in header]
    missing = [c for c in expected if c not in names]
    if missing:
        raise InputError(
            f"{path}, row 1 (header): missing column(s) {missing}; expected {how} columns "
            f"{list(expected)}, got {names}"
        )
    return {c: names.index(c) for c in expected}


def read_charades_csv(path: str | Path, classes: Sequence[CharadesClass]) -> list[CharadesVideo]:
    """Read ``CharadesEgo_v1_{train,test}_only1st.csv`` (header row, the 11 Charades columns in
    any order; extra columns are ignored).

    Row numbers in errors count the file's CSV records from 1 (the header).

    Raises:
        InputError: missing file, missing column, short row, duplicate id, bad ``actions`` or
            ``length`` value (file, row, column and the expectation named).
    """
    path = Path(path)
    rows = _open_csv(path, "Charades-Ego split file")
    if not rows:
        raise InputError(f"{path}: empty file; expected a header {list(CHARADES_COLUMNS)}")
    col = _columns(path, rows[0], CHARADES_COLUMNS, "the Charades")
    width = len(rows[0])
    out: list[CharadesVideo] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path}, row {n}"
        if len(row) < width:
            raise InputError(f"{where}: {len(row)} field(s), expected {width} as in the header")
        vid = row[col["id"]].strip()
        if not vid:
            raise InputError(f"{where}, column 'id': empty; expected a video id")
        if vid in seen:
            raise InputError(f"{where}, column 'id': {vid!r} repeats row {seen[vid]}")
        seen[vid] = n
        actions = parse_actions(row[col["actions"]], classes, f"{where}, column 'actions'")
        raw_len = row[col["length"]].strip()
        length = _float(raw_len, f"{where}, column 'length'", "length") if raw_len else None
        out.append(
            CharadesVideo(
                id=vid,
                subject=row[col["subject"]],
                scene=row[col["scene"]],
                quality=row[col["quality"]],
                relevance=row[col["relevance"]],
                verified=row[col["verified"]],
                script=row[col["script"]],
                objects=row[col["objects"]],
                descriptions=row[col["descriptions"]],
                actions=actions,
                length=length,
            )
        )
    return out


def training_segments(
    videos: Sequence[CharadesVideo], classes: Sequence[CharadesClass]
) -> list[Segment]:
    """One sample per action segment, in the order of ``utils/charades_meta.py``: videos in
    file order, each video's actions in field order; videos without actions give none."""
    return [
        Segment(v.id, a.class_index, a.start, a.end, classes[a.class_index].name)
        for v in videos
        for a in v.actions
    ]


def read_metadata_train(path: str | Path, classes: Sequence[CharadesClass]) -> list[Segment]:
    """Read the original's ``metadata_train.csv`` (tab-separated ``id, cls, t_start, t_end,
    narration`` with a header; ``cls`` is the class index).

    Raises:
        InputError: missing column, bad number, class out of range, ``t_end < t_start``, or a
            narration that is not the class's name (file, row and column named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metadata_train file not found")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(
            f"{path}: not a UTF-8 tab-separated file ({type(e).__name__}: {e})"
        ) from None
    if not rows:
        raise InputError(f"{path}: empty file; expected a header {list(METADATA_TRAIN_COLUMNS)}")
    col = _columns(path, rows[0], METADATA_TRAIN_COLUMNS, "tab-separated")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path}, row {n}"
        if len(row) < len(rows[0]):
            raise InputError(f"{where}: {len(row)} field(s), expected {len(rows[0])}")
        raw_cls = row[col["cls"]].strip()
        if not raw_cls.isdigit() or int(raw_cls) >= len(classes):
            raise InputError(
                f"{where}, column 'cls': {raw_cls!r}; expected a class index in "
                f"0..{len(classes) - 1}"
            )
        cls = int(raw_cls)
        t0 = _float(row[col["t_start"]].strip(), f"{where}, column 't_start'", "t_start")
        t1 = _float(row[col["t_end"]].strip(), f"{where}, column 't_end'", "t_end")
        if t1 < t0:
            raise InputError(f"{where}, column 't_end': {t1:g} is before t_start {t0:g}")
        text = row[col["narration"]]
        if text != classes[cls].name:
            raise InputError(
                f"{where}, column 'narration': {text!r}; expected the name of class {cls}, "
                f"{classes[cls].name!r}"
            )
        out.append(Segment(row[col["id"]].strip(), cls, t0, t1, text))
    return out
