"""A synthetic egocentric dataset in the EgoClip / EgoMCQ formats.

Each video is a table top seen from above (a per-video background colour and a few static
specks) with three objects of distinct shapes and colours. A hand-like blob performs one action
per clip: it moves an object to the left or right, picks it up (the object grows and rises, held
by the hand), puts it down (the reverse) or rotates it. Narrations read like Ego4D's
("#C C moves the red square to the left"). Verb tags index :data:`VERB_CLASSES` (the
direction of a move is part of its verb class) and noun tags index :data:`NOUN_CLASSES` (one
class per coloured shape), so two clips are EgoNCE positives exactly when they show the same
action on the same kind of object. With ``SynthConfig.scene_share`` some moments between actions
are still clips (no hand, nothing moves) captioned by what is on the table ("There is a red
square and a circle"), with noun tags and no verb tag; off by default.

What the tasks test:
- inter-video EgoMCQ: the candidates come from other videos whose tables do not hold the
  query's object, so the object words (colour and shape) decide;
- intra-video EgoMCQ: the candidates are other clips of the query's video (same scene, same
  objects); verb, direction and which object moved decide. Whenever the query's video holds its
  temporal twin (the same object, the action reversed: picks up / puts down, moves left /
  right; :func:`is_temporal_twin`) that clip is one of the distractors, so those questions need
  the order of the frames: a model that ignores it is at chance between the two.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .egoclip import ClipRecord, write_egoclip
from .egomcq import INTER, INTRA, MCQItem, write_egomcq

__all__ = [
    "COLOURS",
    "NOUN_CLASSES",
    "SCENE_CAPTION_FORMS",
    "SHAPES",
    "VERBS",
    "VERB_CLASSES",
    "Action",
    "SceneObject",
    "SynthConfig",
    "generate_dataset",
    "is_scene_clip",
    "is_temporal_twin",
    "make_video",
    "narration_words",
    "render_frame",
    "scene_caption",
    "simulate_action",
    "write_video",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (235, 215, 30),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "bar")
VERBS: tuple[str, ...] = ("move", "pick up", "put down", "rotate")
VERB_CLASSES: tuple[str, ...] = ("move left", "move right", "pick up", "put down", "rotate")
NOUN_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
# The still clips' caption forms (:func:`scene_caption`).
SCENE_CAPTION_FORMS: tuple[str, ...] = ("glance", "inventory")
HAND_RGB = (225, 170, 130)
OBJECT_HALF = 0.11  # object half-size as a fraction of the frame


@dataclass(frozen=True)
class SynthConfig:
    """Size and look of a synthetic dataset.

    Attributes:
        num_clips: total narrated clips (videos * clips_per_video, rounded up to whole videos).
        clips_per_video: actions per video (>= 5 so intra questions have 5 distinct clips).
        objects_per_video: objects on the table (distinct shapes and colours).
        size: frame width = height in pixels.
        fps: frames per second of the written videos.
        clip_seconds: duration of one action.
        num_mcq: EgoMCQ questions (half inter, half intra).
        codec: PyAV encoder name.
        scene_share: chance, at each moment between actions when no object is held, that C
            only looks at the table for one clip first: a still clip (no hand, nothing moves)
            whose caption says what is on the table (:func:`scene_caption`), with noun tags and
            no verb tag. 0 (the default) draws nothing more, so a seed gives the same files as
            before the option existed. These clips are never EgoMCQ questions or candidates.
        scene_caption: the still clips' caption form (:func:`scene_caption`): ``"glance"``
            (one or two objects, each by colour and shape, colour alone or shape alone) or
            ``"inventory"`` (every object on the table by colour and shape).
    """

    num_clips: int = 480
    clips_per_video: int = 8
    objects_per_video: int = 3
    size: int = 64
    fps: int = 8
    clip_seconds: float = 2.0
    num_mcq: int = 100
    codec: str = "libx264"
    scene_share: float = 0.0
    scene_caption: str = "glance"

    @property
    def num_videos(self) -> int:
        """Videos written: enough for ``num_clips``, and at least 5 (inter questions)."""
        return max(5, math.ceil(self.num_clips / self.clips_per_video))

    def __post_init__(self) -> None:
        if self.clips_per_video < 5:
            raise ValueError(f"clips_per_video must be >= 5, got {self.clips_per_video}")
        if not 2 <= self.objects_per_video <= len(SHAPES):
            raise ValueError(
                f"objects_per_video must be in 2..{len(SHAPES)}, got {self.objects_per_video}"
            )
        if self.size < 32 or self.size % 16:
            raise ValueError(f"size must be a multiple of 16 and >= 32, got {self.size}")
        if self.num_clips < 1 or self.fps < 1 or self.clip_seconds <= 0 or self.num_mcq < 0:
            raise ValueError("num_clips, fps, clip_seconds must be positive and num_mcq >= 0")
        if not 0.0 <= self.scene_share <= 1.0:
            raise ValueError(f"scene_share must be in [0, 1], got {self.scene_share}")
        if self.scene_caption not in SCENE_CAPTION_FORMS:
            raise ValueError(
                f"scene_caption must be one of {', '.join(SCENE_CAPTION_FORMS)}, "
                f"got {self.scene_caption!r}"
            )


@dataclass
class SceneObject:
    """One object on the table: its kind, centre (pixels), angle (radians), scale, held."""

    shape: str
    colour: str
    x: float
    y: float
    angle: float = 0.0
    scale: float = 1.0
    held: bool = False


@dataclass
class Action:
    """One action: a verb (``VERBS``) on object ``obj`` (an index into the scene's objects)."""

    verb: str
    obj: int
    direction: str = ""  # "left" / "right" for move
    frames: list[dict] = field(default_factory=list)


def narration_words(verb: str, colour: str, shape: str, direction: str = "") -> str:
    """The narration of one action, Ego4D style."""
    third = {"move": "moves", "pick up": "picks up", "put down": "puts down", "rotate": "rotates"}[
        verb
    ]
    text = f"#C C {third} the {colour} {shape}"
    return text + (f" to the {direction}" if direction else "")


def scene_caption(
    rng: np.random.Generator, objs: Sequence[SceneObject], form: str = "glance"
) -> tuple[str, list[int]]:
    """The caption of a still clip and the objects it names (indices into ``objs``).

    ``"glance"``: one or two of the objects, each named by colour and shape, by colour alone or
    by shape alone (``There is a red square``, ``There is a red and a circle``): what a person
    says of a table at a glance. The short names tie a single colour or shape word to the
    objects that have it, which the action captions (always colour and shape together) never
    do; the QFVS prompts of the synthetic benchmark (``There is a {concept}``) use such words.
    No ``#C``: nobody acts (the QFVS prompts have none either).

    ``"inventory"``: every object on the table by colour and shape, in a random order (``the
    green triangle the red circle the white square``). A glance caption is true of many tables
    (every table with something red), and a contrastive loss that counts only a clip's own
    caption as its match then pulls all still clips to one point (bench/RESULTS.md, QFVS); an
    inventory names one table. Only words of the action narrations, so a tokenizer trained on
    those spells it in whole words.
    """
    if form == "inventory":
        order = [int(i) for i in rng.permutation(len(objs))]
        return " ".join(f"the {objs[i].colour} {objs[i].shape}" for i in order), order
    k = int(rng.integers(1, min(2, len(objs)) + 1))
    picks = [int(i) for i in rng.permutation(len(objs))[:k]]
    names = []
    for i in picks:
        form_i = int(rng.integers(3))
        o = objs[i]
        names.append((f"{o.colour} {o.shape}", o.colour, o.shape)[form_i])
    return "There is a " + " and a ".join(names), picks


# ------------------------------------------------------------------------------ rendering


def _shape_mask(xx: np.ndarray, yy: np.ndarray, o: SceneObject, half: float) -> np.ndarray:
    c, s = math.cos(o.angle), math.sin(o.angle)
    dx, dy = xx - o.x, yy - o.y
    u = c * dx + s * dy
    v = -s * dx + c * dy
    h = half * o.scale
    if o.shape == "square":
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if o.shape == "circle":
        return u * u + v * v <= h * h
    if o.shape == "bar":
        return (np.abs(u) <= 1.4 * h) & (np.abs(v) <= 0.45 * h)
    # triangle pointing "up" in its own frame: apex at v = -h, base at v = +h
    t = (v + h) / (2 * h)
    return (v >= -h) & (v <= h) & (np.abs(u) <= t * h * 1.1)


def render_frame(
    size: int,
    bg: np.ndarray,
    specks: np.ndarray,
    objs: Sequence[SceneObject],
    hand: tuple[float, float] | None,
    noise: np.ndarray,
) -> np.ndarray:
    """One frame [size, size, 3] uint8 RGB: background ``bg`` (3,), ``specks`` [k, 4] (x, y,
    radius, brightness), the objects, the hand at ``hand`` (or none) and additive ``noise``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    for sx, sy, sr, sc in specks:
        img[(xx - sx) ** 2 + (yy - sy) ** 2 <= sr * sr] = bg * sc
    half = OBJECT_HALF * size
    # Objects on the table, then the hand, then held objects (closer to the camera), so that
    # the hand never hides the object it acts on.
    for o in objs:
        if not o.held:
            img[_shape_mask(xx, yy, o, half)] = COLOURS[o.colour]
    if hand is not None:
        hx, hy = hand
        m = ((xx - hx) / (size * 0.08)) ** 2 + ((yy - hy) / (size * 0.06)) ** 2 <= 1.0
        arm = (np.abs(xx - hx) <= size * 0.04) & (yy >= hy)
        img[m | arm] = HAND_RGB
    for o in objs:
        if o.held:
            sh = SceneObject(o.shape, o.colour, o.x + 2, o.y + 4, o.angle, 1.0)
            img[_shape_mask(xx, yy, sh, half)] *= 0.7  # a soft shadow under a lifted object
            img[_shape_mask(xx, yy, o, half)] = COLOURS[o.colour]
    img += noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _plan_action(rng: np.random.Generator, objs: list[SceneObject], size: int) -> Action:
    held = [i for i, o in enumerate(objs) if o.held]
    if held:
        return Action("put down", held[0])
    i = int(rng.integers(len(objs)))
    o = objs[i]
    options = ["pick up", "move", "move"]
    if o.shape != "circle":
        options.append("rotate")
    verb = options[int(rng.integers(len(options)))]
    if verb != "move":
        return Action(verb, i)
    step = size * 0.22
    dirs = [
        d for d, dx in (("left", -step), ("right", step)) if size * 0.12 <= o.x + dx <= size * 0.88
    ]
    return Action("move", i, dirs[int(rng.integers(len(dirs)))])


def _hand_path(
    frac: float, start: tuple[float, float], at: tuple[float, float]
) -> tuple[float, float]:
    """Hand position: approach over the first 30%, then follow the object."""
    if frac < 0.3:
        a = frac / 0.3
        return start[0] + (at[0] - start[0]) * a, start[1] + (at[1] - start[1]) * a
    return at


def simulate_action(
    rng: np.random.Generator,
    cfg: SynthConfig,
    objs: list[SceneObject],
    act: Action,
    frames_per_clip: int,
) -> list[tuple[list[SceneObject], tuple[float, float] | None]]:
    """Frames (object states, hand position) of one action; updates ``objs`` to the end state."""
    size = cfg.size
    o = objs[act.obj]
    x0, y0, a0, s0 = o.x, o.y, o.angle, o.scale
    rest = (size * 0.5 + rng.uniform(-6, 6), size * 1.1)
    out: list[tuple[list[SceneObject], tuple[float, float] | None]] = []
    step = size * 0.22
    lift = size * 0.10
    for k in range(frames_per_clip):
        frac = (k + 0.5) / frames_per_clip
        a = min(max((frac - 0.3) / 0.5, 0.0), 1.0)  # action progress 0..1 over 30%..80%
        a = a * a * (3 - 2 * a)
        cur = SceneObject(o.shape, o.colour, x0, y0, a0, s0, o.held)
        if act.verb == "move":
            cur.x = x0 + (step if act.direction == "right" else -step) * a
        elif act.verb == "pick up":
            cur.scale, cur.y, cur.held = 1.0 + 0.45 * a, y0 - lift * a, a > 0
        elif act.verb == "put down":
            cur.scale, cur.y, cur.held = 1.45 - 0.45 * a, y0 + lift * a, a < 1
        elif act.verb == "rotate":
            turn = math.pi / 4 if o.shape == "square" else math.pi / 2
            cur.angle = a0 + turn * a
        grip = (cur.x, cur.y + OBJECT_HALF * size * cur.scale + size * 0.04)
        hand = _hand_path(frac, rest, grip)
        if frac > 0.85 and act.verb != "pick up":  # let go and withdraw
            r = (frac - 0.85) / 0.15
            hand = (grip[0] + (rest[0] - grip[0]) * r, grip[1] + (rest[1] - grip[1]) * r)
        frame_objs = [cur if j == act.obj else objs[j] for j in range(len(objs))]
        out.append(([SceneObject(**vars(fo)) for fo in frame_objs], hand))
    end = out[-1][0][act.obj]
    o.x, o.y, o.angle, o.scale = end.x, end.y, end.angle, end.scale
    o.held = act.verb == "pick up"
    return out


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int, codec: str) -> None:
    """Encode ``frames`` ([H, W, 3] uint8 RGB) with PyAV; ``libx264`` is written lossless."""
    import av  # PyAV: imported here so that reading metadata does not need it

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames[0].shape[1]
        stream.height = frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's threaded rate control depends on thread timing, so a
        # threaded encode of the same frames can differ from run to run.
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # Lossless: the decoded pixels then equal the (4:2:0) input whatever the encoder
            # decides, so the dataset is the same on every run and machine.
            stream.options = {"qp": "0", "threads": "1"}
        for fr in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)


# ------------------------------------------------------------------------------ dataset


def make_video(
    rng: np.random.Generator, cfg: SynthConfig, uid: str
) -> tuple[list[np.ndarray], list[ClipRecord], set[str]]:
    """One video of ``cfg.clips_per_video`` back-to-back narrated actions (and, with
    ``cfg.scene_share``, still clips between them): its frames, one EgoClip record per clip and
    the names ("red square") of its objects."""
    size = cfg.size
    shapes = list(rng.permutation(len(SHAPES))[: cfg.objects_per_video])
    colours = list(rng.permutation(len(COLOURS))[: cfg.objects_per_video])
    cnames = list(COLOURS)
    # One row of the table per object, so that a move to the left or right never collides.
    ys = np.linspace(0.25, 0.70, cfg.objects_per_video) * size
    objs = [
        SceneObject(
            SHAPES[s],
            cnames[c],
            float(size * rng.uniform(0.2, 0.8)),
            float(y + rng.uniform(-1.5, 1.5)),
            float(rng.uniform(0, 0.3)),
        )
        for s, c, y in zip(shapes, colours, rng.permutation(ys), strict=True)
    ]
    bg = rng.uniform(50, 150, size=3).astype(np.float32)
    specks = np.array(
        [
            (rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, 3), rng.uniform(0.75, 1.25))
            for _ in range(6)
        ],
        np.float32,
    )
    fpc = max(4, round(cfg.fps * cfg.clip_seconds))
    frames: list[np.ndarray] = []
    records: list[ClipRecord] = []

    def add_clip(text: str, verbs: tuple[int, ...], nouns: tuple[int, ...]) -> None:
        k = len(records)
        start, end = k * fpc / cfg.fps, (k + 1) * fpc / cfg.fps
        records.append(
            ClipRecord(
                video_uid=uid,
                video_dur=0.0,  # set below, once the number of clips is known
                narration_source="narration_pass_1",
                narration_ind=k,
                narration_time=0.5 * (start + end),
                clip_start=start,
                clip_end=end,
                clip_text=text,
                tag_verb=verbs,
                tag_noun=nouns,
            )
        )

    def render(scene: Sequence[SceneObject], hand: tuple[float, float] | None) -> None:
        noise = rng.normal(0, 2.0, size=(size, size, 3)).astype(np.float32)
        frames.append(render_frame(size, bg, specks, scene, hand, noise))

    for _ in range(cfg.clips_per_video):
        # `cfg.scene_share and ...` draws nothing when the option is off (same bytes as before).
        if cfg.scene_share and not any(o.held for o in objs) and rng.random() < cfg.scene_share:
            text, named = scene_caption(rng, objs, cfg.scene_caption)
            for _f in range(fpc):
                render(objs, None)
            nouns = sorted({NOUN_CLASSES.index(f"{objs[i].colour} {objs[i].shape}") for i in named})
            add_clip(text, (), tuple(nouns))
        act = _plan_action(rng, objs, size)
        o = objs[act.obj]
        text = narration_words(act.verb, o.colour, o.shape, act.direction)
        for fobjs, hand in simulate_action(rng, cfg, objs, act, fpc):
            render(fobjs, hand)
        add_clip(
            text,
            (VERB_CLASSES.index(f"{act.verb} {act.direction}".strip()),),
            (NOUN_CLASSES.index(f"{o.colour} {o.shape}"),),
        )
    dur = len(records) * fpc / cfg.fps
    records = [dataclasses.replace(r, video_dur=dur) for r in records]
    return frames, records, {f"{o.colour} {o.shape}" for o in objs}


def is_scene_clip(record: ClipRecord) -> bool:
    """Whether ``record`` is a still clip (``SynthConfig.scene_share``):
    the only synthetic clips without a verb tag."""
    return not record.tag_verb


# Verb classes that are each other's action played backwards.
_REVERSED_VERB = {"move left": "move right", "move right": "move left", "pick up": "put down"}
_REVERSED_VERB["put down"] = "pick up"


def is_temporal_twin(a: ClipRecord, b: ClipRecord) -> bool:
    """Whether clip ``b`` shows clip ``a``'s action on the same object in reverse (picks up /
    puts down, moves left / right): a frame-order-blind model cannot tell the two apart."""
    if a.tag_noun != b.tag_noun or len(a.tag_verb) != 1 or len(b.tag_verb) != 1:
        return False
    verb_a = VERB_CLASSES[a.tag_verb[0]]
    return _REVERSED_VERB.get(verb_a) == VERB_CLASSES[b.tag_verb[0]]


def _object_of(text: str) -> str:
    words = text.split()
    i = words.index("the")
    return " ".join(words[i + 1 : i + 3])


def _make_mcq(
    rng: np.random.Generator, videos: list[list[ClipRecord]], scenes: list[set[str]], num: int
) -> list[MCQItem]:
    items: list[MCQItem] = []
    attempts = 0
    while len(items) < num and attempts < 50 * max(num, 1):
        attempts += 1
        qtype = INTER if len(items) % 2 == 0 else INTRA
        v = int(rng.integers(len(videos)))
        clips = videos[v]
        q = clips[int(rng.integers(len(clips)))]
        if qtype == INTRA:
            others = [c for c in clips if c.clip_text != q.clip_text]
            # At most one distractor per narration, so the answer is unambiguous.
            uniq: dict[str, ClipRecord] = {}
            for c in rng.permutation(len(others)):
                uniq.setdefault(others[int(c)].clip_text, others[int(c)])
            pool = list(uniq.values())
            if len(pool) < 4:
                continue
            picks = [pool[int(i)] for i in rng.permutation(len(pool))[:4]]
            # The query's temporal twin (the same object, the action reversed), when its video
            # has one, is always among the distractors: only the order of the frames tells the
            # two apart, which is what the paper's intra-video questions test.
            twin = next((c for c in pool if is_temporal_twin(q, c)), None)
            if twin is not None and twin not in picks:
                picks[int(rng.integers(4))] = twin
        else:
            if len(videos) < 5:
                raise ValueError("inter-video questions need at least 5 videos")
            obj = _object_of(q.clip_text)
            vids = [int(i) for i in rng.permutation(len(videos)) if int(i) != v]
            picks = []
            for w in vids:
                # Another scene: a video whose table does not hold the query's object at all.
                if obj in scenes[w]:
                    continue
                picks.append(videos[w][int(rng.integers(len(videos[w])))])
                if len(picks) == 4:
                    break
            if len(picks) < 4:
                continue
        answer = int(rng.integers(5))
        choices = [*picks[:answer], q, *picks[answer:]]
        items.append(MCQItem(str(len(items)), q, tuple(choices), answer, qtype))
    if len(items) < num:
        raise ValueError(
            f"could only build {len(items)} of {num} EgoMCQ questions; generate more clips"
        )
    return items


def generate_dataset(
    out_dir: str | Path, seed: int, cfg: SynthConfig | None = None
) -> dict[str, Path]:
    """Write ``videos/<uid>.mp4``, ``egoclip.csv`` and ``egomcq.json`` under ``out_dir``.

    Args:
        out_dir: destination folder (created).
        seed: random seed; video uids carry it, so datasets of different seeds can share a
            folder of videos.
        cfg: sizes (defaults: :class:`SynthConfig`).

    Returns:
        paths of ``root``, ``videos``, ``egoclip`` and ``egomcq``.
    """
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_videos = cfg.num_videos
    all_records: list[ClipRecord] = []
    per_video: list[list[ClipRecord]] = []
    scenes: list[set[str]] = []
    for i in range(num_videos):
        uid = f"synth{seed}_{i:04d}"
        frames, records, scene = make_video(rng, cfg, uid)
        write_video(vdir / f"{uid}.mp4", frames, cfg.fps, cfg.codec)
        all_records.extend(records)
        per_video.append(records)
        scenes.append(scene)
    write_egoclip(out / "egoclip.csv", all_records)
    actions = [[r for r in recs if not is_scene_clip(r)] for recs in per_video]
    write_egomcq(out / "egomcq.json", _make_mcq(rng, actions, scenes, cfg.num_mcq))
    return {
        "root": out,
        "videos": vdir,
        "egoclip": out / "egoclip.csv",
        "egomcq": out / "egomcq.json",
    }
