"""A synthetic EgoTaskQA dataset in the official preprocessed formats.

Each clip is a short :class:`~.table_video.TableVideo` of the package's table-top world (a few
actions separated by idle spells); questions are asked about what the clip shows:

- ``what did i pick up first?`` (open, ``descriptive``, answer an object, e.g. "red square");
- ``did i move the red square to the left?`` / ``did i rotate the blue triangle?`` (binary,
  ``descriptive``): for every move or rotation in a clip one question answered yes (what
  happened) and one answered no (the same object moved the other way, or a rotation of an object
  not rotated), so yes and no are exactly balanced;
- ``what did i do to the blue circle after rotating the red square?`` (open, ``predictive``,
  answer a verb: the next action of the clip).

Fields as the release: ``type`` a list (``descriptive`` or ``predictive``), ``category`` a list
(the scope, ``world``), ``semantic`` ``object``/``action``, ``structural`` (``query`` open,
``verify`` binary), ``reference`` ``direct``, and ``reasoning_type`` = type $ category $
semantic $ structural $ reference. Files: ``formatted_{train,val,test}_qas_encode.json``,
``answer_set.txt``, ``all_reasoning_types.txt``, ``videos/{interval}.mp4``. Everything is drawn from
``numpy.random.default_rng(seed)``: one seed, the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..data.synthetic import COLOURS, SHAPES, write_video
from ..files import atomic_write_text
from .egotaskqa_data import ANSWER_SET_FILE, REASONING_TYPES_FILE, SPLITS, qa_file
from .table_video import TableVideo

__all__ = ["EgoTaskQASynthConfig", "synthesize_egotaskqa", "synthetic_answers"]

VERBS = ("pick up", "put down", "move", "rotate")
GERUNDS = {
    "pick up": "picking up",
    "put down": "putting down",
    "move": "moving",
    "rotate": "rotating",
}
REASONING_TYPES = (
    "action",
    "descriptive",
    "direct",
    "object",
    "predictive",
    "query",
    "verify",
    "world",
)


@dataclass(frozen=True)
class EgoTaskQASynthConfig:
    """Size and look of a synthetic EgoTaskQA dataset.

    Attributes:
        clips: clips per split (train, val, test).
        actions_per_clip: (min, max) actions in one clip.
        colours, shapes: the object kinds (answers are colour + shape and the verbs).
        objects_per_clip: objects on the table.
        size: frame side in pixels (multiple of 16); fps: frame rate.
        action_seconds: one action's duration; idle_seconds: (min, max) idle spell before each
            action and at the end.
        codec: PyAV encoder.
    """

    clips: tuple[int, int, int] = (48, 16, 16)
    actions_per_clip: tuple[int, int] = (2, 4)
    colours: tuple[str, ...] = ("red", "blue")
    shapes: tuple[str, ...] = ("square", "circle", "triangle")
    objects_per_clip: int = 2
    size: int = 64
    fps: int = 8
    action_seconds: float = 1.5
    idle_seconds: tuple[float, float] = (0.2, 0.6)
    codec: str = "libx264"

    def __post_init__(self) -> None:
        if any(c not in COLOURS for c in self.colours) or any(s not in SHAPES for s in self.shapes):
            raise ValueError(
                f"colours must come from {list(COLOURS)} and shapes from {list(SHAPES)}, "
                f"got {list(self.colours)} and {list(self.shapes)}"
            )
        if not 1 <= self.objects_per_clip <= min(len(self.colours), len(self.shapes)):
            raise ValueError("objects_per_clip must be in 1..min(len(colours), len(shapes))")
        lo, hi = self.actions_per_clip
        if not 2 <= lo <= hi:
            raise ValueError(f"actions_per_clip must be (min, max), 2 <= min <= max, got {lo, hi}")
        if len(self.clips) != 3 or min(self.clips) < 1:
            raise ValueError(
                f"clips must be three counts >= 1 (train, val, test), got {self.clips}"
            )
        if self.size < 32 or self.size % 16 or self.fps < 1 or self.action_seconds <= 0:
            raise ValueError("size must be a multiple of 16 >= 32; fps and action_seconds > 0")


def synthetic_answers(cfg: EgoTaskQASynthConfig) -> list[str]:
    """The answer vocabulary: yes, no, the verbs, then every colour x shape."""
    return ["yes", "no", *VERBS, *(f"{c} {s}" for c in cfg.colours for s in cfg.shapes)]


def _question(
    interval: str, question: str, answer: str, answers: list[str], kind: str, category: str
) -> dict:
    """One item with the release's fields: ``type`` (a list: descriptive / predictive),
    ``category`` (a list: the scope, ``world`` here), ``semantic``, ``structural`` (``query`` /
    ``verify``), ``reference`` and their ``$``-joined ``reasoning_type``, as its ``split.py``."""
    semantic = "object" if answer not in ("yes", "no", *VERBS) else "action"
    types, scopes = [category], ["world"]
    return {
        "interval": interval,
        "question": question,
        "answer": answer,
        "answer_encode": answers.index(answer),
        "type": types,
        "category": scopes,
        "semantic": semantic,
        "structural": kind,
        "reference": "direct",
        "reasoning_type": "$".join([*types, *scopes, semantic, kind, "direct"]),
    }


def _clip_questions(
    rng: np.random.Generator,
    interval: str,
    acts: list[tuple[str, str, str]],
    names: list[str],
    answers: list[str],
) -> list[dict]:
    """Questions about one clip's actions ``[(verb, object name, direction)]``; ``names``: the
    objects on its table."""
    qs = []
    picked = [o for v, o, _ in acts if v == "pick up"]
    if picked:
        qs.append(
            _question(
                interval, "What did I pick up first?", picked[0], answers, "query", "descriptive"
            )
        )
    done = {(v, o, d) for v, o, d in acts}
    for v, o, d in acts:
        if v == "move":
            other = "right" if d == "left" else "left"
            qs.append(
                _question(
                    interval,
                    f"Did I move the {o} to the {d}?",
                    "yes",
                    answers,
                    "verify",
                    "descriptive",
                )
            )
            # The other way, unless that happened too (then a still object, else nothing).
            if ("move", o, other) not in done:
                qs.append(
                    _question(
                        interval,
                        f"Did I move the {o} to the {other}?",
                        "no",
                        answers,
                        "verify",
                        "descriptive",
                    )
                )
        elif v == "rotate":
            qs.append(
                _question(
                    interval, f"Did I rotate the {o}?", "yes", answers, "verify", "descriptive"
                )
            )
            not_rotated = [n for n in names if ("rotate", n, "") not in done and "circle" not in n]
            if not_rotated:
                n = not_rotated[int(rng.integers(len(not_rotated)))]
                qs.append(
                    _question(
                        interval, f"Did I rotate the {n}?", "no", answers, "verify", "descriptive"
                    )
                )
    for (v1, o1, _), (v2, o2, _) in pairwise(acts):
        if v1 == "pick up":  # always followed by putting it down: nothing to predict
            continue
        qs.append(
            _question(
                interval,
                f"What did I do to the {o2} after {GERUNDS[v1]} the {o1}?",
                v2,
                answers,
                "query",
                "predictive",
            )
        )
    # Balance yes/no within the clip (a yes without its no is dropped).
    yes = [q for q in qs if q["answer"] == "yes"]
    no = [q for q in qs if q["answer"] == "no"]
    keep = min(len(yes), len(no))
    drop = {id(q) for q in yes[keep:] + no[keep:]}
    return [q for q in qs if id(q) not in drop]


def synthesize_egotaskqa(
    out_dir: str | Path, seed: int, config: EgoTaskQASynthConfig | None = None
) -> dict[str, Path]:
    """Write a synthetic EgoTaskQA dataset under ``out_dir`` (created).

    Returns:
        Paths ``root``, ``videos``, ``answers``, ``reasoning_types``, ``train``, ``val``,
        ``test``. ``root`` is a valid ``data_dir`` for
        :func:`~egovlpv2_rt.tasks.egotaskqa.evaluate_egotaskqa` and ``data.root`` of a
        fine-tuning config.
    """
    cfg = config or EgoTaskQASynthConfig()
    out = Path(out_dir)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    answers = synthetic_answers(cfg)
    atomic_write_text(out / ANSWER_SET_FILE, "".join(f"{a}\n" for a in answers))
    atomic_write_text(out / REASONING_TYPES_FILE, "".join(f"{t}\n" for t in REASONING_TYPES))
    paths = {
        "root": out,
        "videos": vdir,
        "answers": out / ANSWER_SET_FILE,
        "reasoning_types": out / REASONING_TYPES_FILE,
    }
    for split, count in zip(SPLITS, cfg.clips, strict=True):
        items: list[dict] = []
        for i in range(count):
            interval = f"S{seed}_{split}_{i:03d}"
            video = TableVideo(
                rng,
                size=cfg.size,
                fps=cfg.fps,
                colours=cfg.colours,
                shapes=cfg.shapes,
                objects=cfg.objects_per_clip,
                action_seconds=cfg.action_seconds,
            )
            acts = []
            for _ in range(int(rng.integers(cfg.actions_per_clip[0], cfg.actions_per_clip[1] + 1))):
                video.idle(rng, cfg.idle_seconds)
                act, _, _ = video.act(rng)
                o = video.objs[act.obj]
                acts.append((act.verb, f"{o.colour} {o.shape}", act.direction))
            video.idle(rng, cfg.idle_seconds)
            write_video(vdir / f"{interval}.mp4", video.frames, cfg.fps, cfg.codec)
            names = [f"{o.colour} {o.shape}" for o in video.objs]
            items.extend(_clip_questions(rng, interval, acts, names, answers))
        paths[split] = qa_file(out, split)
        atomic_write_text(paths[split], json.dumps(items, indent=1) + "\n")
    return paths
