"""A synthetic QFVS dataset in the UT Egocentric layout of :mod:`egovlpv2_rt.tasks.qfvs_data`.

Each video is a sequence of scenes, a scene a new table of the package's synthetic world
(:class:`~egovlpv2_rt.tasks.table_video.TableVideo`: 1 to 3 coloured shapes, idle spells and
actions of a hand), rendered directly at 1 frame per second, so 5 frames = one shot. A shot's
concepts are the colours and shapes of the objects on its table (``red``, ``square``, ...), in
the words of the synthetic pre-training captions (lower case: the shipped model's tokenizer
learnt them so; a capitalised name or a word its captions never use, such as "hand", costs
several tokens, and "There is a {c1} and a {c2}" must fit its 18). Queries are concept pairs
that occur together in some shot; the oracle summary is up to ``oracle_cap`` of those shots,
evenly spaced.

Files: ``videos/P0{v}.mp4`` (lossless, 1 fps), ``Dense_per_shot_tags/P0{v}/P0{v}.txt``,
``Oracle_Summaries/P0{v}/{c1}_{c2}_oracle.txt`` (1-based). The same seed gives the same bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.synthetic import COLOURS, SHAPES, write_video
from ..files import atomic_write_text
from .qfvs import FRAMES_PER_SHOT
from .table_video import TableVideo

__all__ = ["QFVSSynthConfig", "synthesize_qfvs"]


@dataclass(frozen=True)
class QFVSSynthConfig:
    """videos; shots per video; scene length in shots (min, max); objects per table (min,
    max); frame size; queries per video (at most); oracle shots per query (at most)."""

    videos: int = 4
    shots: int = 100
    scene_shots: tuple[int, int] = (3, 8)
    objects: tuple[int, int] = (1, 3)
    size: int = 64
    queries: int = 12
    oracle_cap: int = 6
    codec: str = "libx264"

    def __post_init__(self) -> None:
        if not 1 <= self.videos <= 9:
            raise ValueError(f"videos must be in 1..9 (P01..P09), got {self.videos}")
        if self.shots < 1 or self.queries < 1 or self.oracle_cap < 1:
            raise ValueError("shots, queries and oracle_cap must be >= 1")
        if not 1 <= self.scene_shots[0] <= self.scene_shots[1]:
            raise ValueError(f"scene_shots must be 1 <= min <= max, got {self.scene_shots}")
        if not 1 <= self.objects[0] <= self.objects[1] <= len(SHAPES):
            raise ValueError(f"objects must be 1 <= min <= max <= {len(SHAPES)}")


def _video(
    rng: np.random.Generator, cfg: QFVSSynthConfig
) -> tuple[list[np.ndarray], list[set[str]]]:
    frames: list[np.ndarray] = []
    tags: list[set[str]] = []
    while len(tags) < cfg.shots:
        n_shots = min(
            int(rng.integers(cfg.scene_shots[0], cfg.scene_shots[1] + 1)), cfg.shots - len(tags)
        )
        k = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
        table = TableVideo(
            rng,
            size=cfg.size,
            fps=1,
            colours=tuple(COLOURS),
            shapes=SHAPES,
            objects=k,
            action_seconds=4.0,
        )
        scene = {o.colour for o in table.objs} | {o.shape for o in table.objs}
        while len(table.frames) < n_shots * FRAMES_PER_SHOT:
            if rng.random() < 0.5:
                table.idle(rng, (2.0, 6.0))
            else:
                table.act(rng)
        frames.extend(table.frames[: n_shots * FRAMES_PER_SHOT])
        tags.extend(set(scene) for _ in range(n_shots))
    return frames, tags


def _queries(
    rng: np.random.Generator, tags: list[set[str]], cfg: QFVSSynthConfig
) -> list[tuple[str, str, list[int]]]:
    pairs: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tags):
        for c1, c2 in itertools.combinations(sorted(t), 2):
            pairs.setdefault((c1, c2), []).append(i)
    keys = sorted(pairs)
    chosen = [keys[int(i)] for i in rng.permutation(len(keys))[: cfg.queries]]
    out = []
    for c1, c2 in sorted(chosen):
        shots = pairs[(c1, c2)]
        if len(shots) > cfg.oracle_cap:
            pick = np.linspace(0, len(shots) - 1, cfg.oracle_cap).round().astype(int)
            shots = [shots[int(j)] for j in pick]
        out.append((c1, c2, shots))
    return out


def synthesize_qfvs(
    out_dir: str | Path, seed: int, config: QFVSSynthConfig | None = None
) -> dict[str, Path]:
    """Write the dataset under ``out_dir`` (created). Returns paths ``root``, ``videos`` and,
    per video ``P0{v}``, its mp4 under that name."""
    cfg = config or QFVSSynthConfig()
    root = Path(out_dir)
    vdir = root / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: dict[str, Path] = {"root": root, "videos": vdir}
    for v in range(1, cfg.videos + 1):
        name = f"P0{v}"
        frames, tags = _video(rng, cfg)
        write_video(vdir / f"{name}.mp4", frames, 1, cfg.codec)
        paths[name] = vdir / f"{name}.mp4"
        tag_dir = root / "Dense_per_shot_tags" / name
        tag_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            tag_dir / f"{name}.txt", "".join(",".join(sorted(t)) + "\n" for t in tags)
        )
        q_dir = root / "Oracle_Summaries" / name
        q_dir.mkdir(parents=True, exist_ok=True)
        for c1, c2, shots in _queries(rng, tags, cfg):
            text = "".join(f"{s + 1}\n" for s in shots)
            atomic_write_text(q_dir / f"{c1}_{c2}_oracle.txt", text)
    return paths
