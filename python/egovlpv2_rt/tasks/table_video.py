"""Long synthetic table-top videos: several actions separated by idle spells.

The world is the package's synthetic table top (``data/synthetic.py``: coloured shapes seen from
above, a hand, the same renderer and action simulation). A :class:`TableVideo` draws one table
(background, specks, objects of distinct colours and shapes), then grows frame by frame: an idle
spell renders the still table with sensor noise and no hand; an action is planned (whatever is
held is put down first) and simulated, and the frame span it occupies is returned, so labels are
exact frame counts. Shared by the synthetic Charades-Ego and Ego4D episodic-memory datasets; the
random draws happen in a fixed order, so one generator state gives the same frames.
"""

from __future__ import annotations

import numpy as np

from ..data.synthetic import Action, SceneObject, SynthConfig, render_frame, simulate_action

__all__ = ["TableVideo", "plan_action"]


def plan_action(rng: np.random.Generator, objs: list[SceneObject], size: int) -> Action:
    """The next action: put down a held object, else pick up, move (left or right, when it
    stays on the table) or rotate (not a circle, which looks the same) a random object."""
    held = [i for i, o in enumerate(objs) if o.held]
    if held:
        return Action("put down", held[0])
    i = int(rng.integers(len(objs)))
    o = objs[i]
    step = size * 0.22
    dirs = [
        d for d, dx in (("left", -step), ("right", step)) if size * 0.12 <= o.x + dx <= size * 0.88
    ]
    options = ["pick up"] + (["move"] if dirs else []) + ([] if o.shape == "circle" else ["rotate"])
    verb = options[int(rng.integers(len(options)))]
    direction = dirs[int(rng.integers(len(dirs)))] if verb == "move" else ""
    return Action(verb, i, direction)


class TableVideo:
    """One table and the frames rendered so far (``frames``: [size, size, 3] uint8 RGB each).

    Args:
        rng: the generator every draw comes from.
        size: frame width = height (pixels, multiple of 16, >= 32).
        fps: frame rate the durations are converted with.
        colours, shapes: the kinds the objects are drawn from (distinct per table).
        objects: objects on the table (<= min(len(colours), len(shapes))).
        action_seconds: duration of one action (at least 4 frames).
    """

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        size: int,
        fps: int,
        colours: tuple[str, ...],
        shapes: tuple[str, ...],
        objects: int,
        action_seconds: float,
    ) -> None:
        self.size, self.fps = size, fps
        k = objects
        cols = [colours[int(i)] for i in rng.permutation(len(colours))[:k]]
        shps = [shapes[int(i)] for i in rng.permutation(len(shapes))[:k]]
        # One row of the table per object, so that moves never collide.
        ys = rng.permutation(np.linspace(0.3, 0.7, k) * size) if k > 1 else np.array([0.5 * size])
        self.objs = [
            SceneObject(
                s, c, float(size * rng.uniform(0.3, 0.7)), float(y), float(rng.uniform(0, 0.3))
            )
            for s, c, y in zip(shps, cols, ys, strict=True)
        ]
        self.bg = rng.uniform(50, 150, size=3).astype(np.float32)
        self.specks = np.array(
            [
                (
                    rng.uniform(0, size),
                    rng.uniform(0, size),
                    rng.uniform(1, 3),
                    rng.uniform(0.75, 1.25),
                )
                for _ in range(6)
            ],
            np.float32,
        )
        self._sim = SynthConfig(size=size, fps=fps, clip_seconds=action_seconds)
        self._per_action = max(4, round(fps * action_seconds))
        self.frames: list[np.ndarray] = []

    def _noise(self, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0, 2.0, size=(self.size, self.size, 3)).astype(np.float32)

    def idle(self, rng: np.random.Generator, seconds: tuple[float, float]) -> int:
        """Append a still spell of ``uniform(*seconds)`` seconds (rounded to frames); returns
        the number of frames added."""
        n = round(self.fps * float(rng.uniform(*seconds)))
        still = [SceneObject(**vars(o)) for o in self.objs]
        for _ in range(n):
            self.frames.append(
                render_frame(self.size, self.bg, self.specks, still, None, self._noise(rng))
            )
        return n

    def act(self, rng: np.random.Generator) -> tuple[Action, int, int]:
        """Plan, simulate and render the next action; returns it with its frame span
        ``[start, end)`` (``end - start`` = the per-action frame count)."""
        act = plan_action(rng, self.objs, self.size)
        start = len(self.frames)
        for fobjs, hand in simulate_action(rng, self._sim, self.objs, act, self._per_action):
            self.frames.append(
                render_frame(self.size, self.bg, self.specks, fobjs, hand, self._noise(rng))
            )
        return act, start, len(self.frames)
