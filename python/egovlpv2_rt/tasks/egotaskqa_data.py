"""EgoTaskQA question files in the official baselines' preprocessed format.

A split folder (``Data/qa/direct`` or ``Data/qa/indirect`` of the release) holds:

- ``formatted_{train,val,test}_qas_encode.json``: a JSON list of objects with ``interval``
  (the clip's file name without ``.mp4``), ``question``, ``answer_encode`` (0-based line index
  into ``answer_set.txt``) and ``reasoning_type`` (the question's reasoning-type tags joined by
  ``'$'``: the release's ``type`` list + ``category`` list + ``semantic``, ``structural``,
  ``reference``); ``type`` and ``category`` (a string or a list of strings), ``semantic`` and
  ``structural`` are read when present; other keys are ignored, as the original's reader (a
  pandas frame) does. Open and Binary are the questions whose structural type (``structural``,
  else the ``query`` / ``verify`` tag) is ``query`` / ``verify``;
- ``answer_set.txt``: one answer per line (the classifier's vocabulary; yes/no are two of them);
- ``all_reasoning_types.txt``: one tag per line (every tag a question may carry).

Clips are ``{video_root}/{interval}.mp4``. Every bad value is one :class:`~egovlpv2_rt.errors.
InputError` line naming the file, the item index and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError

__all__ = [
    "ANSWER_SET_FILE",
    "REASONING_TYPES_FILE",
    "SPLITS",
    "TaskQAItem",
    "TaskQASplit",
    "load_taskqa_split",
    "qa_file",
    "read_answer_set",
    "read_qa_items",
    "read_question_list",
    "read_reasoning_types",
]

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
ANSWER_SET_FILE = "answer_set.txt"
REASONING_TYPES_FILE = "all_reasoning_types.txt"
TAG_SEPARATOR = "$"
_STR_FIELDS = ("interval", "question", "reasoning_type")
STRUCTURAL_TYPES = ("query", "verify")


def qa_file(qa_dir: str | Path, split: str) -> Path:
    """``{qa_dir}/formatted_{split}_qas_encode.json``."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return Path(qa_dir) / f"formatted_{split}_qas_encode.json"


@dataclass(frozen=True)
class TaskQAItem:
    """One question.

    Attributes:
        interval: the clip's name (``{interval}.mp4``).
        question: the question as written (the model strips and lower-cases it).
        answer: index into the answer set.
        structural: the structural type (``query`` = open answer, ``verify`` = yes/no; the
            release's others, e.g. ``logic``, as read; empty when the item gives none).
        type, category, semantic: the release's other labels, kept as read (empty if absent).
        reasoning: the reasoning-type tags (``reasoning_type.split('$')``), each in the tag list.
    """

    interval: str
    question: str
    answer: int
    structural: str
    reasoning: tuple[str, ...]
    type: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    semantic: str = ""


@dataclass(frozen=True)
class TaskQASplit:
    """A split's questions with the answer vocabulary and the tag list of its folder."""

    name: str
    items: tuple[TaskQAItem, ...]
    answers: tuple[str, ...]
    reasoning_types: tuple[str, ...]
    video_root: Path

    def __len__(self) -> int:
        return len(self.items)

    def video_path(self, item: TaskQAItem) -> Path:
        """``{video_root}/{interval}.mp4``."""
        return self.video_root / f"{item.interval}.mp4"


def _read_lines(path: Path, what: str) -> tuple[str, ...]:
    if not path.is_file():
        raise InputError(f"{path}: no {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    # Stripped lines (the baselines read them with .strip()); trailing blank lines dropped.
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, ln in enumerate(lines):
        if not ln:
            raise InputError(f"{path}: line {i + 1}: empty {what} entry")
    seen: dict[str, int] = {}
    for i, ln in enumerate(lines):
        if ln in seen:
            raise InputError(f"{path}: line {i + 1}: {what} {ln!r} repeats line {seen[ln] + 1}")
        seen[ln] = i
    if not lines:
        raise InputError(f"{path}: empty {what} file")
    return tuple(lines)


def read_answer_set(path: str | Path) -> tuple[str, ...]:
    """The answers of ``answer_set.txt``, in index order."""
    return _read_lines(Path(path), "answer")


def read_reasoning_types(path: str | Path) -> tuple[str, ...]:
    """The tags of ``all_reasoning_types.txt``, in file order."""
    return _read_lines(Path(path), "reasoning type")


def _item(path: Path, i: int, raw: Any, num_answers: int, tags: frozenset[str]) -> TaskQAItem:
    if not isinstance(raw, dict):
        raise InputError(f"{path}: item {i}: expected an object, got {type(raw).__name__}")
    for key in (*_STR_FIELDS, "answer_encode"):
        if key not in raw:
            raise InputError(f"{path}: item {i}: missing field {key!r}")
    for key in _STR_FIELDS:
        if not isinstance(raw[key], str):
            raise InputError(f"{path}: item {i}: field {key!r} must be a string, got {raw[key]!r}")
    if not raw["interval"] or "/" in raw["interval"] or raw["interval"] in (".", ".."):
        raise InputError(
            f"{path}: item {i}: field 'interval' must be a clip file name, got {raw['interval']!r}"
        )
    ans = raw["answer_encode"]
    if isinstance(ans, bool) or not isinstance(ans, int):
        raise InputError(f"{path}: item {i}: field 'answer_encode' must be an integer, got {ans!r}")
    if not 0 <= ans < num_answers:
        raise InputError(
            f"{path}: item {i}: field 'answer_encode' {ans} is outside the answer set "
            f"(0..{num_answers - 1})"
        )
    reasoning = tuple(raw["reasoning_type"].split(TAG_SEPARATOR))
    for tag in reasoning:
        if tag not in tags:
            raise InputError(
                f"{path}: item {i}: field 'reasoning_type' has the unknown reasoning type "
                f"{tag!r} (not in {REASONING_TYPES_FILE})"
            )
    semantic = raw.get("semantic", "")
    structural = raw.get("structural")
    for key, value in (("semantic", semantic), ("structural", structural)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{path}: item {i}: field {key!r} must be a string, got {value!r}")
    if structural is None:  # the structural type is one of the tags (split.py joins it in)
        structural = next((t for t in STRUCTURAL_TYPES if t in reasoning), "")
    return TaskQAItem(
        interval=raw["interval"],
        question=raw["question"],
        answer=ans,
        structural=structural,
        reasoning=reasoning,
        type=_labels(path, i, raw, "type"),
        category=_labels(path, i, raw, "category"),
        semantic=semantic,
    )


def _labels(path: Path, i: int, raw: dict, key: str) -> tuple[str, ...]:
    """A release label that is a list of strings (or one string); () when absent."""
    value = raw.get(key, [])
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(
            f"{path}: item {i}: field {key!r} must be a string or a list of strings, got {value!r}"
        )
    return tuple(value)


def read_question_list(path: Path, hint: str = "") -> list[Any]:
    """The JSON list of questions in ``path``; a missing, unreadable or non-list file is an
    InputError naming it (``hint``: what the file should be, added to a missing one's)."""
    if not path.is_file():
        raise InputError(f"{path}: no question file{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    return data


def read_qa_items(
    path: str | Path, num_answers: int, reasoning_types: Sequence[str]
) -> tuple[TaskQAItem, ...]:
    """The questions of one ``formatted_*_qas_encode.json`` file, checked against an answer
    vocabulary of ``num_answers`` entries and the tag list ``reasoning_types``."""
    p = Path(path)
    data = read_question_list(p)
    tags = frozenset(reasoning_types)
    return tuple(_item(p, i, raw, num_answers, tags) for i, raw in enumerate(data))


def load_taskqa_split(
    qa_dir: str | Path, split: str, video_root: str | Path | None = None
) -> TaskQASplit:
    """Read split ``split`` (``train``/``val``/``test``) of ``qa_dir``.

    ``video_root``: the clip folder (default ``{qa_dir}/videos``, the synthetic layout).
    """
    d = Path(qa_dir)
    questions = qa_file(d, split)
    answers = read_answer_set(d / ANSWER_SET_FILE)
    tags = read_reasoning_types(d / REASONING_TYPES_FILE)
    items = read_qa_items(questions, len(answers), tags)
    root = Path(video_root) if video_root is not None else d / "videos"
    return TaskQASplit(split, items, answers, tags, root)
