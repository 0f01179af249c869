"""A synthetic Charades-Ego dataset in the official file formats.

The world is the package's synthetic table top (``data/synthetic.py``: coloured shapes, a hand,
the same renderer and action simulation); each video is a :class:`~.table_video.TableVideo`
showing a few actions separated by idle spells. An action class is a verb and an object, named
like Charades' classes ("Picking up a red circle"). Verbs: picking up, putting down, moving
(left or right: one class, since the Charades-Ego train transform flips frames horizontally),
rotating (not for circles, which look the same rotated).

Files (what :func:`~egovlpv2_rt.tasks.charades_data.read_charades_csv` and friends read):

- ``Charades_v1_classes.txt``: ``c000 Picking up a red square`` ...;
- ``CharadesEgo_v1_{train,test}_only1st.csv``: the 11 Charades columns; ``script`` and
  ``descriptions`` hold commas, semicolons and double quotes, ``objects`` is ``;``-separated,
  ``quality``/``relevance`` are sometimes empty, and the last ``unlabelled`` videos of each
  split have an empty ``actions`` field (as real Charades rows do);
- ``videos/{id}.mp4``.

Everything is drawn from ``numpy.random.default_rng(seed)``: one seed, the same files.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.synthetic import COLOURS, SHAPES, SceneObject, write_video
from ..files import atomic_write_text
from .charades_data import CHARADES_COLUMNS, CLASSES_FILE, SPLIT_FILES
from .table_video import TableVideo

__all__ = ["CharadesSynthConfig", "synthesize_charades_ego", "synthetic_classes"]

# Simulator verb -> class-name verb.
VERB_NAMES: dict[str, str] = {
    "pick up": "Picking up",
    "put down": "Putting down",
    "move": "Moving",
    "rotate": "Rotating",
}
SCENES = (
    "Kitchen",
    "Living room",
    "Home Office / Study (A room in a house used for work)",
    'Dining room, "the big table"',
)


@dataclass(frozen=True)
class CharadesSynthConfig:
    """Size and look of a synthetic Charades-Ego dataset.

    Attributes:
        train_videos, test_videos: videos per split (each >= ``unlabelled`` + 1).
        actions_per_video: (min, max) actions in one video.
        colours, shapes: the object kinds (classes are verb x colour x shape).
        objects_per_video: objects on the table (distinct colours and shapes).
        size: frame width = height in pixels (multiple of 16).
        fps: frame rate of the written videos.
        action_seconds: duration of one action.
        idle_seconds: (min, max) idle spell before each action and at the end.
        unlabelled: videos per split written with an empty ``actions`` field.
        codec: PyAV encoder ('libx264' is lossless here; 'libvpx-vp9' for the DALI CPU decoder).
    """

    train_videos: int = 48
    test_videos: int = 40
    actions_per_video: tuple[int, int] = (2, 4)
    colours: tuple[str, ...] = ("red", "blue")
    shapes: tuple[str, ...] = ("square", "circle", "triangle")
    objects_per_video: int = 2
    size: int = 64
    fps: int = 10
    action_seconds: float = 2.0
    idle_seconds: tuple[float, float] = (0.3, 1.0)
    unlabelled: int = 1
    codec: str = "libx264"

    def __post_init__(self) -> None:
        bad_c = [c for c in self.colours if c not in COLOURS]
        bad_s = [s for s in self.shapes if s not in SHAPES]
        if bad_c or bad_s or not self.colours or not self.shapes:
            raise ValueError(
                f"colours must come from {list(COLOURS)} and shapes from {list(SHAPES)}, "
                f"got {list(self.colours)} and {list(self.shapes)}"
            )
        if not 1 <= self.objects_per_video <= min(len(self.colours), len(self.shapes)):
            raise ValueError(
                "objects_per_video must be in 1..min(len(colours), len(shapes)), got "
                f"{self.objects_per_video}"
            )
        lo, hi = self.actions_per_video
        if not 1 <= lo <= hi:
            raise ValueError(f"actions_per_video must be (min, max), 1 <= min <= max, got {lo, hi}")
        if min(self.train_videos, self.test_videos) < self.unlabelled + 1 or self.unlabelled < 0:
            raise ValueError("each split needs at least unlabelled + 1 videos, unlabelled >= 0")
        if self.size < 32 or self.size % 16 or self.fps < 1 or self.action_seconds <= 0:
            raise ValueError("size must be a multiple of 16 >= 32; fps and action_seconds > 0")
        if not 0 <= self.idle_seconds[0] <= self.idle_seconds[1]:
            raise ValueError(
                f"idle_seconds must be (min, max), 0 <= min <= max, got {self.idle_seconds}"
            )


def synthetic_classes(cfg: CharadesSynthConfig) -> list[str]:
    """Class names in class-index order: verb-major, then colour, then shape."""
    return [
        f"{VERB_NAMES[v]} a {c} {s}"
        for v in VERB_NAMES
        for c in cfg.colours
        for s in cfg.shapes
        if not (v == "rotate" and s == "circle")
    ]


def _video(
    rng: np.random.Generator, cfg: CharadesSynthConfig, classes: list[str]
) -> tuple[list[np.ndarray], list[tuple[int, float, float]], list[SceneObject]]:
    """(frames, [(class index, start s, end s)], objects) of one video."""
    video = TableVideo(
        rng,
        size=cfg.size,
        fps=cfg.fps,
        colours=cfg.colours,
        shapes=cfg.shapes,
        objects=cfg.objects_per_video,
        action_seconds=cfg.action_seconds,
    )
    labels: list[tuple[int, float, float]] = []
    for _ in range(int(rng.integers(cfg.actions_per_video[0], cfg.actions_per_video[1] + 1))):
        video.idle(rng, cfg.idle_seconds)
        act, start, end = video.act(rng)
        o = video.objs[act.obj]
        cls = classes.index(f"{VERB_NAMES[act.verb]} a {o.colour} {o.shape}")
        labels.append((cls, start / cfg.fps, end / cfg.fps))
    video.idle(rng, cfg.idle_seconds)
    return video.frames, labels, video.objs


def _row(
    rng: np.random.Generator,
    vid: str,
    labels: list[tuple[int, float, float]],
    classes: list[str],
    objs: list[SceneObject],
    length: float,
    labelled: bool,
) -> list[str]:
    names = [classes[c].lower() for c, _, _ in labels]
    script = 'A person sits at the table, "plays" with the objects: ' + ", then ".join(names) + "."
    desc = (
        f'The person, seen from above, does {len(names)} things; first "{names[0]}", '
        f"and at last {names[-1]}. Nothing else happens, I think."
    )
    maybe = lambda: "" if rng.random() < 0.25 else str(int(rng.integers(1, 8)))  # noqa: E731
    fields = {
        "id": vid,
        "subject": f"P{int(rng.integers(100)):02d}",
        "scene": SCENES[int(rng.integers(len(SCENES)))],
        "quality": maybe(),
        "relevance": maybe(),
        "verified": "Yes" if rng.random() < 0.8 else "No",
        "script": script,
        "objects": ";".join(f"{o.colour} {o.shape}" for o in objs),
        "descriptions": desc,
        "actions": ";".join(f"c{c:03d} {t0:.2f} {t1:.2f}" for c, t0, t1 in labels)
        if labelled
        else "",
        "length": f"{length:.2f}",
    }
    return [fields[c] for c in CHARADES_COLUMNS]


def synthesize_charades_ego(
    out_dir: str | Path, seed: int, *, config: CharadesSynthConfig | None = None
) -> dict[str, Path]:
    """Write a synthetic Charades-Ego dataset under ``out_dir`` (created).

    Returns:
        Paths ``root``, ``videos``, ``classes``, ``train``, ``test``. The folder is a valid
        ``data_dir`` for :func:`~egovlpv2_rt.tasks.charades_eval.evaluate_charades_ego`.
    """
    cfg = config or CharadesSynthConfig()
    out = Path(out_dir)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = synthetic_classes(cfg)
    atomic_write_text(
        out / CLASSES_FILE, "".join(f"c{i:03d} {name}\n" for i, name in enumerate(classes))
    )
    paths = {"root": out, "videos": vdir, "classes": out / CLASSES_FILE}
    for split, count in (("train", cfg.train_videos), ("test", cfg.test_videos)):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CHARADES_COLUMNS)
        for i in range(count):
            vid = f"S{seed}{split[:2].upper()}{i:03d}"
            frames, labels, objs = _video(rng, cfg, classes)
            write_video(vdir / f"{vid}.mp4", frames, cfg.fps, cfg.codec)
            labelled = i < count - cfg.unlabelled
            length = len(frames) / cfg.fps
            writer.writerow(_row(rng, vid, labels, classes, objs, length, labelled))
        paths[split] = out / SPLIT_FILES[split]
        atomic_write_text(paths[split], buf.getvalue())
    return paths
