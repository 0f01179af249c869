"""Readers of the UT Egocentric query-focused video summarisation (QFVS) files.

Layout under a data root (the original's ``data/origin_data/...`` folders, flattened):

- ``Dense_per_shot_tags/P0{v}/P0{v}.txt``: one line per shot (5 s), the comma-separated
  concepts visible in it (an empty line: none).
- ``Oracle_Summaries/P0{v}/{c1}_{c2}_oracle.txt``: one query (concept pair) and its oracle
  summary, 1-based shot indices one per line.
- ``videos/P0{v}.mp4``: the video (read by :mod:`egovlpv2_rt.tasks.qfvs` at 1 frame per second;
  the original reads pre-extracted 1 fps JPEG folders).

The original evaluates with per-shot concept vectors from ``Tags.mat`` (a 1 x 4 MATLAB
struct array whose field ``Bin_Vecs`` is a shots x 1 cell of 1 x 48 uint8 rows:
``Tags[0][v][0][shot][0][0]`` is a 48-long 0/1 vector; 2783/3692/2152/3588 shots for P01..P04).
Those vectors carry no concept names, so this module derives the vectors from the dense tags
text instead (columns = the sorted vocabulary); the semantic IoU does not depend on the column
order. :func:`load_tags_mat` reads ``Tags.mat`` with ``scipy.io.loadmat`` (no code runs) for a
comparison.

Shot indices in memory are 0-based. Errors are one line naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = [
    "PROMPT_NAMES",
    "QFVSQuery",
    "QFVSVideo",
    "load_qfvs",
    "load_tags_mat",
    "prompt_name",
    "query_prompts",
    "read_dense_tags",
    "read_oracle",
]

# The original's renames of three concept names before they go into a prompt.
PROMPT_NAMES = {"Cupglass": "Glass", "Musicalinstrument": "Instrument", "Petsanimal": "Animal"}

_VIDEO_RE = re.compile(r"^P\d+$")
_ORACLE_RE = re.compile(r"^([^_]+)_([^_]+)_oracle\.txt$")


def prompt_name(concept: str) -> str:
    """The concept's name as the prompts spell it (``Cupglass`` -> ``Glass``, ...)."""
    return PROMPT_NAMES.get(concept, concept)


def query_prompts(c1: str, c2: str) -> tuple[str, str, str]:
    """The three prompts of a query: ``There is a {c1}``, ``... {c2}``, ``... {c1} and a {c2}``."""
    a, b = prompt_name(c1), prompt_name(c2)
    return f"There is a {a}", f"There is a {b}", f"There is a {a} and a {b}"


@dataclass(frozen=True)
class QFVSQuery:
    """One query of a video: the concept pair and its oracle summary (0-based shots, sorted)."""

    video: str
    concept1: str
    concept2: str
    oracle: tuple[int, ...]


@dataclass(frozen=True)
class QFVSVideo:
    """One video's tags: ``tags[shot]`` = the concepts of the shot (a frozenset of names)."""

    name: str
    tags: tuple[frozenset[str], ...]
    queries: tuple[QFVSQuery, ...]

    @property
    def num_shots(self) -> int:
        return len(self.tags)

    def concept_matrix(self, vocabulary: Sequence[str]) -> np.ndarray:
        """``[num_shots, len(vocabulary)]`` uint8 0/1 concept vectors."""
        col = {c: j for j, c in enumerate(vocabulary)}
        out = np.zeros((self.num_shots, len(vocabulary)), dtype=np.uint8)
        for i, tags in enumerate(self.tags):
            for c in tags:
                out[i, col[c]] = 1
        return out

    def concept_labels(self, concept: str) -> np.ndarray:
        """``[num_shots]`` float32: 1 where the shot is tagged ``concept``."""
        return np.array([concept in t for t in self.tags], dtype=np.float32)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return text.splitlines()


def read_dense_tags(
    path: str | Path, vocabulary: Sequence[str] | None = None
) -> tuple[frozenset[str], ...]:
    """Per-shot concept sets of ``Dense_per_shot_tags/P0{v}/P0{v}.txt`` (line i = shot i).

    With ``vocabulary``, a concept outside it is an error naming file and line."""
    path = Path(path)
    vocab = None if vocabulary is None else set(vocabulary)
    shots = []
    for lineno, line in enumerate(_read_lines(path), 1):
        names = [n.strip() for n in line.strip().split(",")]
        names = [n for n in names if n]
        if vocab is not None:
            for n in names:
                if n not in vocab:
                    raise InputError(
                        f"{path}:{lineno}: concept {n!r} is not in the tag vocabulary "
                        f"({len(vocab)} concepts)"
                    )
        shots.append(frozenset(names))
    if not shots:
        raise InputError(f"{path}: no shots (expected one line of concepts per shot)")
    return tuple(shots)


def read_oracle(path: str | Path, num_shots: int) -> tuple[int, ...]:
    """0-based, sorted shot indices of an oracle summary file (1-based indices, one per line)."""
    path = Path(path)
    shots: set[int] = set()
    for lineno, line in enumerate(_read_lines(path), 1):
        s = line.strip()
        if not s:
            continue
        try:
            idx = int(s)
        except ValueError:
            raise InputError(
                f"{path}:{lineno}: {s!r} is not a shot index (expected a 1-based integer)"
            ) from None
        if not 1 <= idx <= num_shots:
            raise InputError(
                f"{path}:{lineno}: shot {idx} is outside the video (shots 1..{num_shots}, 1-based)"
            )
        shots.add(idx - 1)
    if not shots:
        raise InputError(f"{path}: empty oracle summary (expected 1-based shot indices)")
    return tuple(sorted(shots))


def load_qfvs(
    root: str | Path, vocabulary: Sequence[str] | None = None
) -> tuple[list[QFVSVideo], list[str]]:
    """All videos under ``root`` (sorted by name) and the concept vocabulary.

    The vocabulary is ``vocabulary`` when given (dense tags outside it are errors), else the
    sorted union of the dense tags of all videos. A query naming a concept outside the
    vocabulary is an error naming the oracle file.
    """
    root = Path(root)
    tag_dir, oracle_dir = root / "Dense_per_shot_tags", root / "Oracle_Summaries"
    for d in (tag_dir, oracle_dir):
        if not d.is_dir():
            raise InputError(f"{d}: missing (expected the QFVS folder layout under {root})")
    names = sorted(p.name for p in tag_dir.iterdir() if p.is_dir() and _VIDEO_RE.match(p.name))
    if not names:
        raise InputError(f"{tag_dir}: no video folders (expected P01, P02, ...)")
    tags = {n: read_dense_tags(tag_dir / n / f"{n}.txt", vocabulary) for n in names}
    vocab = (
        list(vocabulary)
        if vocabulary is not None
        else sorted(set().union(*(s for t in tags.values() for s in t)))
    )
    known = set(vocab)
    videos = []
    for n in names:
        qdir = oracle_dir / n
        if not qdir.is_dir():
            raise InputError(f"{qdir}: missing (the oracle summaries of video {n})")
        queries = []
        for f in sorted(qdir.iterdir()):
            m = _ORACLE_RE.match(f.name)
            if m is None:
                raise InputError(
                    f"{f}: not an oracle file name (expected {{c1}}_{{c2}}_oracle.txt)"
                )
            for c in m.groups():
                if c not in known:
                    raise InputError(
                        f"{f}: concept {c!r} is not in the tag vocabulary ({len(vocab)} concepts)"
                    )
            queries.append(QFVSQuery(n, m.group(1), m.group(2), read_oracle(f, len(tags[n]))))
        if not queries:
            raise InputError(f"{qdir}: no oracle summaries ({{c1}}_{{c2}}_oracle.txt)")
        videos.append(QFVSVideo(n, tags[n], tuple(queries)))
    return videos, vocab


def load_tags_mat(path: str | Path) -> list[np.ndarray]:
    """The original's ``Tags.mat``: per video a ``[num_shots, num_concepts]`` uint8 array.

    Read with ``scipy.io.loadmat``, which parses MATLAB data and runs no code."""
    path = Path(path)
    from scipy.io import loadmat  # optional dependency (extra "qfvs")

    try:
        mat = loadmat(str(path))
        cells = mat["Tags"][0]
        out = [np.array([shot[0][0] for shot in video[0]], dtype=np.uint8) for video in cells]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise InputError(
            f"{path}: not the QFVS Tags.mat layout (Tags[0][video][0][shot][0][0]): {e}"
        ) from None
    for v, a in enumerate(out):
        if a.ndim != 2 or not np.isin(a, (0, 1)).all():
            raise InputError(f"{path}: video {v}: expected [num_shots, num_concepts] 0/1 vectors")
    return out
