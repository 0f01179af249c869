"""Turn the official EgoTaskQA release into the files :mod:`.egotaskqa_data` reads.

The release (the EgoTaskQA site's ``data/qa/{direct,indirect}/``, or the output of its
``baselines/preprocess/split.py`` on generated questions) has per split folder
``{train,val,test}_qas.json``: JSON lists of questions with ``interval``, ``question``,
``answer`` (text), ``type`` and ``category`` (lists), ``semantic``, ``structural``,
``reference`` and usually ``reasoning_type``. The EgoTaskQA baselines' ``preprocess.sh`` makes
the files EgoVLPv2 reads; this module makes the same files, without its GloVe and character
vocabularies (EgoVLPv2 tokenises the question text itself):

- ``answer_set.txt``: ``<UNK0>``, ``<UNK1>``, then the training answers lower-cased, most
  frequent first, ties in order of first appearance, at most ``answer_top`` (4000) of them
  (``preprocess_vocab.py`` + ``mode_qas2mode_qas_encode.py``);
- ``formatted_{split}_qas_encode.json``: every question as read plus ``answer_encode``, the
  answer's line in ``answer_set.txt``. As the original: a val / test answer that is not in the
  set **as written** (the set is lower-cased and the test is case-sensitive) gets ``<UNK1>``,
  which no model can predict correctly; the count is reported. A training answer outside the
  set (only when more than ``answer_top`` distinct answers) also gets ``<UNK1>`` (the original
  stops with an error);
- ``all_reasoning_types.txt``: every tag of ``reasoning_type.split('$')`` in order of first
  appearance over train, test, val (``reasoning_types.py``). A question without
  ``reasoning_type`` gets ``'$'.join(type + category + [semantic, structural, reference])``
  (``split.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_write_text
from .egotaskqa_data import (
    ANSWER_SET_FILE,
    REASONING_TYPES_FILE,
    TAG_SEPARATOR,
    qa_file,
    read_question_list,
)

__all__ = ["PreparedEgoTaskQA", "prepare_egotaskqa", "release_file"]

UNKNOWN_ANSWERS = ("<UNK0>", "<UNK1>")
# The order reasoning_types.py visits the splits in (the tag file's order follows it).
_TAG_ORDER = ("train", "test", "val")


def release_file(release: str | Path, split: str) -> Path:
    """``{release}/{split}_qas.json``."""
    return Path(release) / f"{split}_qas.json"


@dataclass
class PreparedEgoTaskQA:
    """What was written: the folder, questions per split, answers in the set (with the two
    unknowns), tags, questions per split answered ``<UNK1>``, clips missing from ``videos``."""

    out: Path
    questions: dict[str, int]
    answers: int
    reasoning_types: int
    unknown_answers: dict[str, int]
    missing_clips: list[str] = field(default_factory=list)

    def summary(self) -> str:
        unk = ", ".join(f"{k} {v}" for k, v in self.unknown_answers.items())
        text = (
            f"wrote {self.out}: {self.questions['train']} / {self.questions['val']} / "
            f"{self.questions['test']} questions (train / val / test), {self.answers} answers, "
            f"{self.reasoning_types} reasoning types; answered <UNK1> (not in the answer set as "
            f"written): {unk}"
        )
        if self.missing_clips:
            text += f"; {len(self.missing_clips)} clips missing, e.g. {self.missing_clips[0]}"
        return text


def _read_release(path: Path) -> list[dict[str, Any]]:
    data = read_question_list(path, " (the release's {train,val,test}_qas.json)")
    for i, qa in enumerate(data):
        if not isinstance(qa, dict):
            raise InputError(f"{path}: item {i}: expected an object, got {type(qa).__name__}")
        for key in ("interval", "question", "answer"):
            if not isinstance(qa.get(key), str):
                raise InputError(
                    f"{path}: item {i}: field {key!r} must be a string, got {qa.get(key)!r}"
                )
        qa["reasoning_type"] = _reasoning_type(path, i, qa)
    return data


def _reasoning_type(path: Path, i: int, qa: dict[str, Any]) -> str:
    given = qa.get("reasoning_type")
    if given is not None:
        if not isinstance(given, str) or not given:
            raise InputError(
                f"{path}: item {i}: field 'reasoning_type' must be a non-empty string, "
                f"got {given!r}"
            )
        return given
    parts: list[str] = []
    for key in ("type", "category"):
        value = qa.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(
                f"{path}: item {i}: no 'reasoning_type', and field {key!r} is not a list of "
                f"strings ({value!r}) to build it from"
            )
        parts += value
    for key in ("semantic", "structural", "reference"):
        value = qa.get(key)
        if not isinstance(value, str):
            raise InputError(
                f"{path}: item {i}: no 'reasoning_type', and field {key!r} is not a string "
                f"({value!r}) to build it from"
            )
        parts.append(value)
    return TAG_SEPARATOR.join(parts)


def _answer_set(train: list[dict[str, Any]], answer_top: int) -> list[str]:
    counts = Counter(qa["answer"] for qa in train)
    out = list(UNKNOWN_ANSWERS)
    for answer, _ in counts.most_common(answer_top):
        if answer.lower() not in out:
            out.append(answer.lower())
    return out


def prepare_egotaskqa(
    release: str | Path,
    out: str | Path,
    *,
    videos: str | Path | None = None,
    answer_top: int = 4000,
) -> PreparedEgoTaskQA:
    """Write ``answer_set.txt``, ``formatted_{train,val,test}_qas_encode.json`` and
    ``all_reasoning_types.txt`` under ``out`` from the release folder ``release``; with
    ``videos``, list the questions' clips (``{interval}.mp4``) that are not there."""
    if answer_top < 1:
        raise InputError(f"answer_top must be >= 1, got {answer_top}")
    release = Path(release)
    splits = {s: _read_release(release_file(release, s)) for s in ("train", "val", "test")}
    answers = _answer_set(splits["train"], answer_top)
    index = {a: i for i, a in enumerate(answers)}
    unk = index[UNKNOWN_ANSWERS[1]]
    unknown: dict[str, int] = {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, qas in splits.items():
        unknown[split] = 0
        for qa in qas:
            # The original looks the val/test answer up as written, the training one
            # lower-cased (mode_qas2mode_qas_encode.py).
            known = qa["answer"].lower() if split == "train" else qa["answer"]
            qa["answer_encode"] = index[qa["answer"].lower()] if known in index else unk
            unknown[split] += qa["answer_encode"] == unk
        atomic_write_text(qa_file(out, split), json.dumps(qas))
    tags: dict[str, None] = {}
    for split in _TAG_ORDER:
        for qa in splits[split]:
            tags.update(dict.fromkeys(qa["reasoning_type"].split(TAG_SEPARATOR)))
    atomic_write_text(out / ANSWER_SET_FILE, "".join(f"{a}\n" for a in answers))
    atomic_write_text(out / REASONING_TYPES_FILE, "".join(f"{t}\n" for t in tags))
    missing: list[str] = []
    if videos is not None:
        vdir = Path(videos)
        if not vdir.is_dir():
            raise InputError(f"videos: no such folder {vdir}")
        clips = sorted({qa["interval"] for qas in splits.values() for qa in qas})
        missing = [c for c in clips if not (vdir / f"{c}.mp4").is_file()]
    return PreparedEgoTaskQA(
        out,
        {s: len(q) for s, q in splits.items()},
        len(answers),
        len(tags),
        unknown,
        missing,
    )
