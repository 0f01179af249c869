"""EPIC-Kitchens-100 multi-instance retrieval files, read as published.

An EK-100 MIR split is four files in the annotations folder (``retrieval_annotations`` of the
``epic-kitchens-100-annotations`` repository):

- ``EPIC_100_retrieval_{split}.csv``: one row per clip with the 15 columns of the EPIC-KITCHENS-100
  annotations (:data:`CLIP_COLUMNS`, a header line first). ``all_nouns`` and
  ``all_noun_classes`` hold Python-list strings (``"['tap', 'water']"``, ``"[3, 27]"``), quoted
  because they contain commas, so the file is read with the ``csv`` module.
- ``EPIC_100_retrieval_{split}_sentence.csv``: the unique captions, a header line and then
  ``narration_id, narration`` per caption (the clip whose narration represents it, the text).
- ``relevancy/caption_relevancy_EPIC_100_retrieval_{split}.pkl``: float matrix
  ``[clips, unique captions]`` of relevancy in [0, 1] (a ``.npy`` beside it is read instead).

Videos are whole untrimmed recordings ``{video_root}/{participant_id}/{video_id}.MP4``.

Every problem raises :class:`~egovlpv2_rt.errors.InputError` on one line naming the file, the
line and the column, the value and what was expected.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InputError, UnsafeFileError

__all__ = [
    "CLIP_COLUMNS",
    "EK100Clip",
    "EK100Layout",
    "EK100Sentence",
    "EK100Split",
    "Split",
    "load_ek100_split",
    "parse_timestamp",
    "read_clip_csv",
    "read_relevancy",
    "read_sentence_csv",
    "video_path",
]

Split = Literal["train", "test"]

CLIP_COLUMNS: tuple[str, ...] = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)

_TIMESTAMP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


@dataclass(frozen=True)
class EK100Clip:
    """One row of ``EPIC_100_retrieval_{split}.csv`` (times in seconds)."""

    narration_id: str
    participant_id: str
    video_id: str
    narration_time: float
    start_sec: float
    stop_sec: float
    start_frame: int
    stop_frame: int
    narration: str
    verb: str
    verb_class: int
    noun: str
    noun_class: int
    all_nouns: tuple[str, ...]
    all_noun_classes: tuple[int, ...]


@dataclass(frozen=True)
class EK100Sentence:
    """One unique caption: the representative clip's ``narration_id`` and the text."""

    narration_id: str
    text: str


@dataclass(frozen=True)
class EK100Layout:
    """Where a dataset's files are: the annotations folder and the root of the videos."""

    annotations: Path
    videos: Path

    @classmethod
    def from_dir(
        cls,
        data_dir: str | os.PathLike,
        *,
        annotations: str | os.PathLike | None = None,
        videos: str | os.PathLike | None = None,
    ) -> EK100Layout:
        """The layout under one folder (the synthetic split's, and a convenient real one):
        annotations in ``data_dir/retrieval_annotations`` if that folder exists, else
        ``data_dir`` itself; videos in ``data_dir/videos`` if it exists, else ``data_dir``.
        Either can be given explicitly instead."""
        root = Path(data_dir)
        if annotations is None:
            a = root / "retrieval_annotations"
            annotations = a if a.is_dir() else root
        if videos is None:
            v = root / "videos"
            videos = v if v.is_dir() else root
        return cls(Path(annotations), Path(videos))

    def clip_csv(self, split: Split) -> Path:
        return self.annotations / f"EPIC_100_retrieval_{_split(split)}.csv"

    def sentence_csv(self, split: Split) -> Path:
        return self.annotations / f"EPIC_100_retrieval_{_split(split)}_sentence.csv"

    def relevancy(self, split: Split) -> Path:
        """The ``.pkl`` file, or the ``.npy`` of the same name when only that exists."""
        pkl = self.annotations / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl"
        npy = pkl.with_suffix(".npy")
        return npy if npy.is_file() and not pkl.is_file() else pkl


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise InputError(f"EK-100 split must be 'train' or 'test', got {split!r}")
    return split


def video_path(video_root: str | os.PathLike, clip: EK100Clip) -> Path:
    """``{video_root}/{participant_id}/{video_id}.MP4`` as the original; where only a
    lower-case ``.mp4`` exists (copies made on case-insensitive file systems, re-encodes) that
    file is returned. When neither exists the ``.MP4`` path is returned and the reader names it.
    """
    base = Path(video_root) / clip.participant_id
    upper = base / f"{clip.video_id}.MP4"
    if not upper.is_file():
        lower = base / f"{clip.video_id}.mp4"
        if lower.is_file():
            return lower
    return upper


def parse_timestamp(text: str, where: str = "timestamp") -> float:
    """``"hh:mm:ss.ff"`` (any number of fractional digits, or none) -> seconds."""
    m = _TIMESTAMP.match(text.strip())
    if m is None:
        raise InputError(f"{where}: expected a timestamp hh:mm:ss.ff, got {text!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _where(path: Path, line: int, column: str) -> str:
    return f"{path}: line {line}, column {column!r}"


def _int(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{where}: expected an integer, got {text!r}") from None


def _list(text: str, kind: type, where: str) -> tuple[Any, ...]:
    """A Python-list string of ``kind`` items, e.g. ``"['tap', 'water']"`` or ``"[3, 27]"``."""
    what = "a list of strings" if kind is str else "a list of integers"
    try:
        # literal_eval evaluates literals only (no names, calls or attributes).
        value = ast.literal_eval(text.strip()) if len(text) < 100_000 else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    ok = isinstance(value, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    )
    if not ok:
        raise InputError(f"{where}: expected {what} such as {_EXAMPLE[kind]}, got {text!r}")
    return tuple(value)  # type: ignore[arg-type]


_EXAMPLE = {str: "\"['tap', 'water']\"", int: '"[3, 27]"'}


def _open_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV file; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    try:
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
            else:
                rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise InputError(f"{path}: {what} is empty; expected a header line and rows")
    return header, rows


def read_clip_csv(path: str | os.PathLike) -> list[EK100Clip]:
    """Read ``EPIC_100_retrieval_{train,test}.csv``.

    The header must name every column of :data:`CLIP_COLUMNS` (in the official files they are in
    that order, which is what the original's positional access assumes); values are read by
    name. Raises InputError for a missing column, a row with the wrong number of fields, a
    malformed timestamp, integer or list, or an empty file.
    """
    p = Path(path)
    header, rows = _open_csv(p, "EK-100 clip CSV")
    missing = [c for c in CLIP_COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"{p}: line 1: missing column(s) {missing}; expected the EPIC-KITCHENS-100 header "
            f"{','.join(CLIP_COLUMNS)}"
        )
    col = {c: header.index(c) for c in CLIP_COLUMNS}
    clips: list[EK100Clip] = []
    seen: dict[str, int] = {}
    for line, f in rows:
        if len(f) != len(header):
            raise InputError(
                f"{p}: line {line}: expected {len(header)} fields as the header, got {len(f)}"
            )
        v = {c: f[i] for c, i in col.items()}

        def w(c: str, line: int = line) -> str:
            return _where(p, line, c)

        nid = v["narration_id"].strip()
        if not nid:
            raise InputError(f"{w('narration_id')}: empty; expected the clip's narration id")
        if nid in seen:
            raise InputError(
                f"{w('narration_id')}: {nid!r} repeats line {seen[nid]}; ids must be unique"
            )
        seen[nid] = line
        for c in ("participant_id", "video_id"):
            if not v[c].strip() or "/" in v[c] or "\\" in v[c] or v[c].strip() in (".", ".."):
                raise InputError(f"{w(c)}: expected a folder/file name, got {v[c]!r}")
        start = parse_timestamp(v["start_timestamp"], w("start_timestamp"))
        stop = parse_timestamp(v["stop_timestamp"], w("stop_timestamp"))
        if stop < start:
            raise InputError(
                f"{w('stop_timestamp')}: {v['stop_timestamp']!r} is before the start "
                f"{v['start_timestamp']!r}"
            )
        clips.append(
            EK100Clip(
                narration_id=nid,
                participant_id=v["participant_id"].strip(),
                video_id=v["video_id"].strip(),
                narration_time=parse_timestamp(v["narration_timestamp"], w("narration_timestamp")),
                start_sec=start,
                stop_sec=stop,
                start_frame=_int(v["start_frame"], w("start_frame")),
                stop_frame=_int(v["stop_frame"], w("stop_frame")),
                narration=v["narration"],
                verb=v["verb"],
                verb_class=_int(v["verb_class"], w("verb_class")),
                noun=v["noun"],
                noun_class=_int(v["noun_class"], w("noun_class")),
                all_nouns=_list(v["all_nouns"], str, w("all_nouns")),
                all_noun_classes=_list(v["all_noun_classes"], int, w("all_noun_classes")),
            )
        )
    if not clips:
        raise InputError(f"{p}: no clips; expected at least one row after the header")
    return clips


def read_sentence_csv(path: str | os.PathLike) -> list[EK100Sentence]:
    """Read ``EPIC_100_retrieval_{train,test}_sentence.csv``: a header line, then per unique
    caption its representative ``narration_id`` (column 1) and text (column 2), by position as
    the original (``iloc[i][0]``, ``iloc[i][1]``)."""
    p = Path(path)
    header, rows = _open_csv(p, "EK-100 sentence CSV")
    if len(header) < 2:
        raise InputError(
            f"{p}: line 1: {len(header)} column(s) {header}; expected 2, narration_id,narration"
        )
    out: list[EK100Sentence] = []
    for line, f in rows:
        if len(f) < 2:
            raise InputError(
                f"{p}: line {line}: {len(f)} field(s); expected 2 (narration_id, narration)"
            )
        if not f[0].strip():
            raise InputError(f"{_where(p, line, header[0])}: empty; expected a narration id")
        out.append(EK100Sentence(f[0].strip(), f[1]))
    if not out:
        raise InputError(f"{p}: no captions; expected at least one row after the header")
    return out


# What a pickled numpy array refers to, and nothing else: the array reconstructor (numpy 1 and
# numpy 2 module names), the array and dtype classes, and numpy's protocol-5 buffer constructor.
def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray as ma
        from numpy._core import numeric as nu
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
        from numpy.core import numeric as nu  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = ma._reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = vars(nu)["_frombuffer"]
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Protocols 0-2 spell the array's bytes as a latin-1 str re-encoded by _codecs.encode.
    allowed[("_codecs", "encode")] = _latin1_bytes
    return allowed


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, and no other use."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only admitted as (str, 'latin1')")
    return text.encode("latin-1")


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file)
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._allowed:
            return self._allowed[key]
        raise UnsafeFileError(
            f"{self._path}: the pickle refers to {module}.{name}; expected a pickled numpy "
            f"float array only (convert it with numpy.save to a .npy file)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self._path}: the pickle holds a persistent id; expected an array")


def _load_pickled_array(path: Path, data: bytes) -> np.ndarray:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), path).load()
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a readable pickled numpy array ({msg})") from None
    if not isinstance(obj, np.ndarray):
        raise InputError(f"{path}: the pickle holds a {type(obj).__name__}; expected a numpy array")
    return obj


def read_relevancy(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a relevancy matrix: float64 ``[clips, unique captions]`` with values in [0, 1].

    ``.pkl`` files are read with a restricted unpickler that resolves only the names a pickled
    numpy array needs (``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray.
    _reconstruct``, ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``
    for protocol 5, ``numpy.ndarray``, ``numpy.dtype``, and ``_codecs.encode`` restricted to
    ``(str, "latin1")``, how protocols 0-2 write bytes): a pickle referring to anything else
    raises :class:`~egovlpv2_rt.errors.UnsafeFileError` before any of it is called, so reading
    never runs code from the file. Object arrays are refused too. ``.npy`` files are read with
    ``numpy.load(allow_pickle=False)``.

    Args:
        path: the ``.pkl`` or ``.npy`` file.
        shape: the expected ``(clips, captions)``, from the CSVs; None skips the check.

    Raises:
        InputError: unreadable file, not a 2-D numeric array, wrong shape, a value that is not
            finite or outside [0, 1].
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: relevancy matrix not found") from None
    if p.suffix.lower() == ".npy" or data[:6] == b"\x93NUMPY":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{p}: not a readable .npy array without pickles ({e})") from None
    else:
        arr = _load_pickled_array(p, data)
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{p}: relevancy has dtype {arr.dtype}; expected a float array")
    if arr.ndim != 2:
        raise InputError(
            f"{p}: relevancy has shape {tuple(arr.shape)}; expected 2-D [clips, captions]"
        )
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(
            f"{p}: relevancy has shape {tuple(arr.shape)}; expected {tuple(shape)} "
            f"[clips in the clip CSV, captions in the sentence CSV]"
        )
    out = arr.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise InputError(f"{p}: relevancy[{i}, {j}] = {out[i, j]}; expected a finite value")
    bad = (out < 0) | (out > 1)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise InputError(f"{p}: relevancy[{i}, {j}] = {out[i, j]:g}; expected a value in [0, 1]")
    return out


@dataclass(frozen=True)
class EK100Split:
    """One split read and cross-checked: clips, unique captions, relevancy ``[clips, captions]``
    float64, and ``caption_clip[j]``: the index in ``clips`` of caption j's representative
    clip (-1 where its narration_id is not a clip of this split, allowed for training only)."""

    split: Split
    layout: EK100Layout
    clips: tuple[EK100Clip, ...]
    sentences: tuple[EK100Sentence, ...]
    relevancy: np.ndarray
    caption_clip: np.ndarray

    def video_path(self, i: int) -> Path:
        """The video file of clip ``i``."""
        return video_path(self.layout.videos, self.clips[i])


def load_ek100_split(
    layout: EK100Layout | str | os.PathLike, split: Split, *, need_representatives: bool = True
) -> EK100Split:
    """Read and cross-check one split's clip CSV, sentence CSV and relevancy matrix.

    Args:
        layout: an :class:`EK100Layout`, or a folder for :meth:`EK100Layout.from_dir`.
        split: ``"train"`` or ``"test"``.
        need_representatives: require every caption's narration_id to be a clip of the split
            (evaluation embeds captions through it).
    """
    lay = layout if isinstance(layout, EK100Layout) else EK100Layout.from_dir(layout)
    _split(split)
    clips = read_clip_csv(lay.clip_csv(split))
    sentences = read_sentence_csv(lay.sentence_csv(split))
    rel = read_relevancy(lay.relevancy(split), (len(clips), len(sentences)))
    index = {c.narration_id: i for i, c in enumerate(clips)}
    rep = np.array([index.get(s.narration_id, -1) for s in sentences], dtype=np.int64)
    if need_representatives and (rep < 0).any():
        j = int(np.argmax(rep < 0))
        raise InputError(
            f"{lay.sentence_csv(split)}: caption {j + 1}, column 1: narration_id "
            f"{sentences[j].narration_id!r} is not a clip of {lay.clip_csv(split)}; expected "
            f"each caption's representative clip"
        )
    return EK100Split(split, lay, tuple(clips), tuple(sentences), rel, rep)
