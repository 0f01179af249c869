"""A synthetic EK-100 MIR dataset in exactly the files of the real one.

Videos come from the package's synthetic world (:mod:`egovlpv2_rt.data.synthetic`: a table top
with coloured shapes and a hand performing one action per clip), written whole and untrimmed
as ``videos/{participant}/{video_id}.MP4`` with several narrated actions each. Narrations are
EPIC-style imperatives (``"move red square left"``, ``"pick up blue bar from table"``); the
verb classes are :data:`~egovlpv2_rt.data.synthetic.VERB_CLASSES` and the noun classes
:data:`~egovlpv2_rt.data.synthetic.NOUN_CLASSES` plus ``"table"`` (:data:`NOUN_CLASSES`), which
picking up and putting down also name, so captions share verbs and nouns in part.

Relevancy is the rule the EK-100 organisers used: the mean of the IoU of the verb classes and
the IoU of the noun classes of the clip and of the caption (:func:`semantic_relevancy`), so
values 0, 1/6, 1/4, 1/2, 2/3, 3/4 and 1 can appear.

Layout under ``out_dir`` (read back by ``EK100Layout.from_dir(out_dir)``)::

    retrieval_annotations/EPIC_100_retrieval_{train,test}.csv
    retrieval_annotations/EPIC_100_retrieval_{train,test}_sentence.csv
    retrieval_annotations/relevancy/caption_relevancy_EPIC_100_retrieval_{train,test}.pkl
    videos/P01/P01_01.MP4 ...

Everything is drawn from ``numpy.random.default_rng(seed)``: one seed, the same files.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.synthetic import NOUN_CLASSES as _SHAPE_NOUNS
from ..data.synthetic import VERB_CLASSES, SynthConfig
from ..data.synthetic import make_video as _world_video  # the world's renderer, one video
from ..data.synthetic import write_video as _world_write  # its deterministic lossless writer
from ..files import atomic_write_bytes, atomic_write_text
from .ek100_data import CLIP_COLUMNS

__all__ = [
    "NOUN_CLASSES",
    "EK100SynthConfig",
    "semantic_relevancy",
    "synthesize_ek100_mir",
]

NOUN_CLASSES: tuple[str, ...] = (*_SHAPE_NOUNS, "table")
_TABLE = len(_SHAPE_NOUNS)


@dataclass(frozen=True)
class EK100SynthConfig:
    """Size of a synthetic EK-100 MIR dataset (defaults: 24 training and 12 test clips, a few
    seconds to write).

    Attributes:
        train_videos, test_videos: whole videos per split.
        clips_per_video: narrated actions per video (>= 5, the world's minimum).
        participants: participant folders P01.. the videos are spread over.
        size: frame side in pixels (multiple of 16, >= 32).
        fps: frame rate of the videos.
        clip_seconds: duration of one action.
        codec: PyAV encoder.
    """

    train_videos: int = 4
    test_videos: int = 2
    clips_per_video: int = 6
    participants: int = 2
    size: int = 64
    fps: int = 8
    clip_seconds: float = 2.0
    codec: str = "libx264"

    def __post_init__(self) -> None:
        if self.train_videos < 1 or self.test_videos < 1 or self.participants < 1:
            raise ValueError("train_videos, test_videos and participants must be >= 1")

    def world(self) -> SynthConfig:
        return SynthConfig(
            num_clips=self.clips_per_video,
            clips_per_video=self.clips_per_video,
            size=self.size,
            fps=self.fps,
            clip_seconds=self.clip_seconds,
            num_mcq=0,
            codec=self.codec,
        )


def semantic_relevancy(
    verbs_a: Sequence[int], nouns_a: Sequence[int], verbs_b: Sequence[int], nouns_b: Sequence[int]
) -> float:
    """EK-100's relevancy of two (verb classes, noun classes): the mean of the two IoUs."""

    def iou(a: Sequence[int], b: Sequence[int]) -> float:
        sa, sb = set(a), set(b)
        return len(sa & sb) / len(sa | sb) if sa | sb else 0.0

    return 0.5 * (iou(verbs_a, verbs_b) + iou(nouns_a, nouns_b))


def _narration(verb_class: int, noun_class: int) -> tuple[str, str, tuple[str, ...]]:
    """(narration, verb word, nouns) of one action."""
    verb = VERB_CLASSES[verb_class]
    noun = NOUN_CLASSES[noun_class]
    if verb.startswith("move "):
        return f"move {noun} {verb.split()[1]}", "move", (noun,)
    if verb == "pick up":
        return f"pick up {noun} from table", verb, (noun, "table")
    if verb == "put down":
        return f"put down {noun} on table", verb, (noun, "table")
    return f"{verb} {noun}", verb, (noun,)


def _stamp(t: float) -> str:
    h, rest = divmod(t, 3600.0)
    m, s = divmod(rest, 60.0)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


def _split_files(
    rng: np.random.Generator,
    cfg: EK100SynthConfig,
    video_ids: Sequence[tuple[str, str]],
    videos: Path,
) -> tuple[str, str, np.ndarray]:
    """Write the split's videos; return (clip CSV text, sentence CSV text, relevancy)."""
    world = cfg.world()
    rows: list[list[str]] = []
    classes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for participant, vid in video_ids:
        frames, records, _ = _world_video(rng, world, vid)
        (videos / participant).mkdir(parents=True, exist_ok=True)
        _world_write(videos / participant / f"{vid}.MP4", frames, cfg.fps, cfg.codec)
        for k, r in enumerate(records):
            vc, nc = r.tag_verb[0], r.tag_noun[0]
            text, verb, nouns = _narration(vc, nc)
            noun_ids = tuple(NOUN_CLASSES.index(n) for n in nouns)
            classes.append(((vc,), noun_ids))
            rows.append(
                [
                    f"{vid}_{k}",
                    participant,
                    vid,
                    _stamp(r.narration_time),
                    _stamp(r.clip_start),
                    _stamp(r.clip_end),
                    str(round(r.clip_start * cfg.fps)),
                    str(round(r.clip_end * cfg.fps)),
                    text,
                    verb,
                    str(vc),
                    nouns[0],
                    str(nc),
                    repr(list(nouns)),
                    repr(list(noun_ids)),
                ]
            )
    reps: dict[str, int] = {}
    for i, row in enumerate(rows):
        reps.setdefault(row[8], i)
    rel = np.array(
        [
            [semantic_relevancy(*classes[i], *classes[j]) for j in reps.values()]
            for i in range(len(rows))
        ]
    )
    clip_csv = io.StringIO(newline="")
    w = csv.writer(clip_csv, lineterminator="\n")
    w.writerow(CLIP_COLUMNS)
    w.writerows(rows)
    sentence_csv = io.StringIO(newline="")
    w = csv.writer(sentence_csv, lineterminator="\n")
    w.writerow(["narration_id", "narration"])
    w.writerows([[rows[i][0], text] for text, i in reps.items()])
    return clip_csv.getvalue(), sentence_csv.getvalue(), rel


def synthesize_ek100_mir(
    out_dir: str | os.PathLike, seed: int, *, config: EK100SynthConfig | None = None
) -> dict[str, Path]:
    """Write a synthetic EK-100 MIR dataset under ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: destination folder (created; existing files of the same names are replaced).
        seed: random seed; the same seed writes the same annotations and frames.
        config: sizes (default :class:`EK100SynthConfig`).

    Returns:
        Paths: ``root``, ``annotations``, ``videos``, and per split ``{split}_csv``,
        ``{split}_sentence``, ``{split}_relevancy``.
    """
    cfg = config or EK100SynthConfig()
    root = Path(out_dir)
    ann = root / "retrieval_annotations"
    videos = root / "videos"
    (ann / "relevancy").mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = cfg.train_videos + cfg.test_videos
    ids: list[tuple[str, str]] = []
    per_participant: dict[str, int] = {}
    for v in range(total):
        p = f"P{v % cfg.participants + 1:02d}"
        per_participant[p] = per_participant.get(p, 0) + 1
        ids.append((p, f"{p}_{per_participant[p]:02d}"))
    out: dict[str, Path] = {"root": root, "annotations": ann, "videos": videos}
    for split, part in (("train", ids[: cfg.train_videos]), ("test", ids[cfg.train_videos :])):
        clip_text, sentence_text, rel = _split_files(rng, cfg, part, videos)
        paths = {
            f"{split}_csv": ann / f"EPIC_100_retrieval_{split}.csv",
            f"{split}_sentence": ann / f"EPIC_100_retrieval_{split}_sentence.csv",
            f"{split}_relevancy": ann
            / "relevancy"
            / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl",
        }
        atomic_write_text(paths[f"{split}_csv"], clip_text)
        atomic_write_text(paths[f"{split}_sentence"], sentence_text)
        atomic_write_bytes(paths[f"{split}_relevancy"], pickle.dumps(rel, protocol=4))
        out.update(paths)
    return out
