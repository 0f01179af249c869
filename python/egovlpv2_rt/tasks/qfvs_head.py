"""The QFVS summary head, its training and the leave-one-video-out evaluation.

Head (the original's ``model/model_summary.py`` ``Transformer_Encoder``): the shot features of
one segment ``[L <= 200, D]`` plus the original's sinusoidal table
(``sin(pos / 10000^(2i/D))`` at even i, ``cos(pos / 10000^(2(i+1)/D))`` at i+1: the odd
columns use their own index in the exponent), then ``nn.TransformerEncoder(D, 2 heads, 2
layers, FFN 2048, dropout 0.1)`` with a padding mask, then ``Linear(D, 8) -> ReLU ->
Dropout(0.2) -> Linear(8, 1)``, the last layer's weights N(0, 0.1) and bias -1.91. The
original passes its padding mask as floats (added to the attention logits, so padded shots are
down-weighted by e^-1 rather than removed); here the mask is boolean and padded shots are
excluded.

Training: loss = BCE(c1 prompt scores, shots tagged c1) + BCE(c2 prompt scores, shots tagged
c2) + BCE(query prompt scores, oracle summary), each the mean over the video's shots, summed
over a batch of 4 queries; AdamW, 20 epochs, seeded. The original's schedule (base lr 1e-5,
x0.2 for weights and x0.0048 for biases, warm-up then cosine) is replaced by one AdamW lr
(``QFVSTrainConfig.lr``, the yml's optimiser value 1e-4). The original picks the epoch with the
best F1 on the test video; here the epoch (0 = untrained included) is picked on a validation
split of the training videos' queries, and the test video is scored once.

Inference: the top ``max(1, int(S * budget))`` shots by the query-prompt score (budget 2%; the
original's ``int`` gives an empty summary below 50 shots).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..eval.qfvs import qfvs_f1
from .qfvs import MAX_SEGMENT_SHOTS, QFVSShotFeatures, segment_shots
from .qfvs_data import QFVSVideo

__all__ = [
    "RANDOM_DRAWS",
    "QFVSExample",
    "QFVSHead",
    "QFVSTrainConfig",
    "QFVSTrainResult",
    "build_examples",
    "evaluate_qfvs",
    "expected_random_summary_f1",
    "mean_f1",
    "positional_table",
    "predict_summary",
    "query_swapped_f1",
    "random_summary_f1",
    "score_shots",
    "split_val_queries",
    "summarise_videos",
    "summary_size",
    "swap_queries",
    "top_shots",
    "train_qfvs",
    "video_scores",
]

PROMPT_C1, PROMPT_C2, PROMPT_QUERY = 0, 1, 2


def positional_table(max_len: int, dim: int) -> Tensor:
    """The original's sinusoidal table, float32 [max_len, dim] (dim even)."""
    if dim % 2:
        raise InputError(f"QFVS head: the feature size must be even, got {dim}")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float64)[None, :]
    table = torch.empty(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos / 10000 ** (2 * i / dim))
    table[:, 1::2] = torch.cos(pos / 10000 ** (2 * (i + 1) / dim))
    return table.float()


class QFVSHead(nn.Module):
    """Scores the shots of segments. forward: x float [B, L, D], padding bool [B, L] (True =
    padding) -> logits float [B, L]."""

    def __init__(
        self,
        dim: int,
        *,
        nhead: int = 2,
        num_layers: int = 2,
        max_len: int = MAX_SEGMENT_SHOTS,
        last_bias: float = -1.91,
    ) -> None:
        super().__init__()
        self.register_buffer("pos", positional_table(max_len, dim), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=nhead, batch_first=True)
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=num_layers, enable_nested_tensor=False
        )
        self.projector = nn.Linear(dim, 8)
        self.dropout = nn.Dropout(0.2)
        self.summ_head = nn.Linear(8, 1)
        with torch.no_grad():
            self.summ_head.weight.normal_(0.0, 0.1)
            self.summ_head.bias.fill_(last_bias)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        pos: Tensor = self.pos  # type: ignore[assignment]
        h = self.encoder(x + pos[: x.shape[1]], src_key_padding_mask=padding)
        return self.summ_head(self.dropout(torch.relu(self.projector(h)))).squeeze(-1)


def score_shots(head: QFVSHead, features: Tensor, segments: Sequence[int]) -> Tensor:
    """Logits [P, S] of features [P, S, D] (P prompts of one video), segment by segment."""
    p, s, d = features.shape
    if sum(segments) != s:
        raise InputError(f"segments cover {sum(segments)} shots, the features {s}")
    longest = max(segments)
    n_seg = len(segments)
    x = features.new_zeros(p, n_seg, longest, d)
    pad = torch.ones(n_seg, longest, dtype=torch.bool)
    start = 0
    for j, n in enumerate(segments):
        x[:, j, :n] = features[:, start : start + n]
        pad[j, :n] = False
        start += n
    logits = head(x.reshape(p * n_seg, longest, d), pad.repeat(p, 1).to(x.device))
    logits = logits.reshape(p, n_seg, longest)
    return torch.cat([logits[:, j, :n] for j, n in enumerate(segments)], dim=1)


@dataclass(frozen=True)
class QFVSExample:
    """One (video, query): ``features`` float32 [3, S, D] (c1, c2, query prompts), ``labels``
    float32 [3, S] (tagged c1, tagged c2, in the oracle summary), ``segments`` lengths,
    ``oracle`` 0-based shots."""

    video: str
    concept1: str
    concept2: str
    features: Tensor
    labels: Tensor
    segments: tuple[int, ...]
    oracle: tuple[int, ...]


def build_examples(video: QFVSVideo, features: QFVSShotFeatures) -> list[QFVSExample]:
    """The examples of a video's queries (``features.fused`` in ``video.queries`` order)."""
    q, _, s, _ = features.fused.shape
    if q != len(video.queries) or s != video.num_shots:
        raise InputError(
            f"video {video.name}: features for {q} queries x {s} shots, the tags have "
            f"{len(video.queries)} queries x {video.num_shots} shots"
        )
    segments = tuple(segment_shots(features.prefix_cls))
    out = []
    for i, query in enumerate(video.queries):
        oracle = np.zeros(s, dtype=np.float32)
        oracle[list(query.oracle)] = 1
        labels = np.stack(
            [video.concept_labels(query.concept1), video.concept_labels(query.concept2), oracle]
        )
        out.append(
            QFVSExample(
                video.name,
                query.concept1,
                query.concept2,
                features.fused[i].float(),
                torch.from_numpy(labels),
                segments,
                query.oracle,
            )
        )
    return out


@dataclass(frozen=True)
class QFVSTrainConfig:
    """epochs, batch (queries), AdamW lr / weight decay, summary budget (fraction of shots),
    share of the training videos' queries held out for model selection, seed."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.1
    budget: float = 0.02
    val_fraction: float = 0.25
    seed: int = 0


def summary_size(num_shots: int, budget: float) -> int:
    """Shots in a summary of ``budget`` (a share) of ``num_shots``: ``max(1, int(S * budget))``
    (the original's ``int`` alone gives an empty summary below 1 / budget shots)."""
    return max(1, int(num_shots * budget))


def top_shots(scores: Tensor, budget: float) -> list[int]:
    """The :func:`summary_size` best shots of ``scores`` [S], best first; equal scores: the
    earlier shot first (a stable order)."""
    order = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))
    return order[: summary_size(scores.shape[0], budget)]


def predict_summary(head: QFVSHead, example: QFVSExample, budget: float) -> list[int]:
    """The top ``max(1, int(S * budget))`` shots by query-prompt score, best first."""
    head.eval()
    with torch.no_grad():
        scores = score_shots(
            head, example.features[PROMPT_QUERY : PROMPT_QUERY + 1], example.segments
        )[0]
    return top_shots(scores, budget)


def mean_f1(
    head: QFVSHead,
    examples: Sequence[QFVSExample],
    concepts: Mapping[str, np.ndarray],
    budget: float,
) -> tuple[float, float, float]:
    """Mean precision, recall and F1 (percent) of the head's summaries over ``examples``."""
    rows = [
        qfvs_f1(predict_summary(head, e, budget), e.oracle, concepts[e.video]) for e in examples
    ]
    return tuple(float(np.mean([r[k] for r in rows])) for k in range(3))  # type: ignore[return-value]


def _loss(head: QFVSHead, e: QFVSExample) -> Tensor:
    logits = score_shots(head, e.features, e.segments)
    return (
        nn.functional.binary_cross_entropy_with_logits(logits, e.labels, reduction="none")
        .mean(1)
        .sum()
    )


@dataclass
class QFVSTrainResult:
    """The head of the selected epoch, that epoch (0 = untrained) and the val F1 per epoch."""

    head: QFVSHead
    best_epoch: int
    val_f1: list[float] = field(default_factory=list)


def train_qfvs(
    train: Sequence[QFVSExample],
    val: Sequence[QFVSExample],
    concepts: Mapping[str, np.ndarray],
    cfg: QFVSTrainConfig,
) -> QFVSTrainResult:
    """Train a head on ``train``, keep the epoch (0 = before training) with the best mean F1 on
    ``val``. Seeded: the same inputs and config give the same head. ``concepts``: per video
    ``[S, C]`` 0/1 for the F1."""
    if not train or not val:
        raise InputError(f"QFVS training needs train and val queries, got {len(train)}, {len(val)}")
    dim = train[0].features.shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = QFVSHead(dim)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order_rng = random.Random(cfg.seed)
        best_state = {k: v.clone() for k, v in head.state_dict().items()}
        val_f1 = [mean_f1(head, val, concepts, cfg.budget)[2]]
        best_epoch = 0
        for epoch in range(1, cfg.epochs + 1):
            head.train()
            order = list(range(len(train)))
            order_rng.shuffle(order)
            for s in range(0, len(order), cfg.batch_size):
                loss = sum(
                    (_loss(head, train[i]) for i in order[s : s + cfg.batch_size]), torch.zeros(())
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            val_f1.append(mean_f1(head, val, concepts, cfg.budget)[2])
            if val_f1[-1] > val_f1[best_epoch]:
                best_epoch = epoch
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
        head.load_state_dict(best_state)
        head.eval()
    return QFVSTrainResult(head, best_epoch, val_f1)


def split_val_queries(
    examples: Sequence[QFVSExample], fraction: float, seed: int
) -> tuple[list[QFVSExample], list[QFVSExample]]:
    """(train, val): a seeded ``fraction`` of the queries held out for model selection."""
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_val = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
    if n_val < 1:
        raise InputError(f"QFVS: {len(idx)} training queries cannot be split into train and val")
    val_set = set(idx[:n_val])
    return (
        [e for i, e in enumerate(examples) if i not in val_set],
        [e for i, e in enumerate(examples) if i in val_set],
    )


def random_summary_f1(
    examples: Sequence[QFVSExample], concepts: Mapping[str, np.ndarray], budget: float, seed: int
) -> float:
    """Mean F1 of seeded random summaries of the same size as :func:`predict_summary`'s."""
    rng = random.Random(seed)
    f1 = []
    for e in examples:
        s = e.features.shape[1]
        pick = rng.sample(range(s), summary_size(s, budget))
        f1.append(qfvs_f1(pick, e.oracle, concepts[e.video])[2])
    return float(np.mean(f1))


def swap_queries(examples: Sequence[QFVSExample]) -> list[QFVSExample]:
    """The control "does the head read the query?": example ``i`` keeps its oracle and labels
    but takes the prompt features of example ``i + 1`` (cyclically; one video's queries share
    its shots and segments). Needs at least 2 examples."""
    n = len(examples)
    if n < 2:
        where = f"video {examples[0].video}: " if examples else ""
        raise InputError(f"{where}swapping queries needs at least 2 queries, got {n}")
    return [replace(e, features=examples[(i + 1) % n].features) for i, e in enumerate(examples)]


# Draws behind the expected random-summary F1: its sampling sd is then ~1/14 of one draw's.
RANDOM_DRAWS = 200


def expected_random_summary_f1(
    examples: Sequence[QFVSExample],
    concepts: Mapping[str, np.ndarray],
    budget: float,
    draws: int = RANDOM_DRAWS,
) -> float:
    """The random summary's F1 averaged over ``draws`` seeded draws (seeds ``0..draws-1`` of
    :func:`random_summary_f1`): the baseline's expectation, without one draw's luck."""
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    return float(np.mean([random_summary_f1(examples, concepts, budget, s) for s in range(draws)]))


def evaluate_qfvs(
    examples: Mapping[str, Sequence[QFVSExample]],
    concepts: Mapping[str, np.ndarray],
    cfg: QFVSTrainConfig | None = None,
    *,
    query_swap_control: bool = False,
) -> dict[str, object]:
    """Leave-one-video-out over the videos present: per test video, a head trained on the other
    videos (epoch chosen on a query split of them), then the mean precision / recall / F1 over
    the test video's queries; ``f1`` is the mean over test videos. A seeded random summary of
    the same size is scored beside it (``random_f1``). ``query_swap_control``: the same heads
    also score each test query with another query's prompt features (:func:`swap_queries`;
    ``f1_query_swapped`` per video and averaged): near ``f1`` means the head ranks shots
    without reading the query."""
    cfg = cfg or QFVSTrainConfig()
    videos = sorted(examples)
    if len(videos) < 2:
        raise InputError(f"leave-one-video-out needs at least 2 videos, got {videos}")
    per_video: dict[str, dict[str, float]] = {}
    for test in videos:
        pool = [e for v in videos if v != test for e in examples[v]]
        train, val = split_val_queries(pool, cfg.val_fraction, cfg.seed)
        result = train_qfvs(train, val, concepts, cfg)
        per_video[test] = video_scores(result.head, examples[test], concepts, cfg)
        per_video[test]["best_epoch"] = float(result.best_epoch)
        if query_swap_control:
            per_video[test]["f1_query_swapped"] = query_swapped_f1(
                result.head, examples[test], concepts, cfg.budget
            )
    return summarise_videos(per_video)


def query_swapped_f1(
    head: QFVSHead,
    examples: Sequence[QFVSExample],
    concepts: Mapping[str, np.ndarray],
    budget: float,
) -> float:
    """Mean F1 of ``head``'s summaries of one video's queries, each scored with another query's
    prompt features (:func:`swap_queries`) against its own oracle."""
    return mean_f1(head, swap_queries(examples), concepts, budget)[2]


def video_scores(
    head: QFVSHead,
    examples: Sequence[QFVSExample],
    concepts: Mapping[str, np.ndarray],
    cfg: QFVSTrainConfig,
) -> dict[str, float]:
    """One video's mean precision / recall / F1 over its queries, the seeded random summary's
    F1 beside it (``random_f1``, one draw) and that F1's expectation (``random_f1_expected``,
    :data:`RANDOM_DRAWS` draws: the baseline to compare with)."""
    p, r, f1 = mean_f1(head, examples, concepts, cfg.budget)
    rand = random_summary_f1(examples, concepts, cfg.budget, cfg.seed)
    expected = expected_random_summary_f1(examples, concepts, cfg.budget, RANDOM_DRAWS)
    return {
        "precision": p,
        "recall": r,
        "f1": f1,
        "random_f1": rand,
        "random_f1_expected": expected,
    }


def summarise_videos(per_video: dict[str, dict[str, float]]) -> dict[str, object]:
    """``{per_video, f1, random_f1, random_f1_expected[, f1_query_swapped]}``: the F1s averaged
    over the videos (the control's when every video has it)."""
    keys = ["f1", "random_f1", "random_f1_expected"]
    if all("f1_query_swapped" in v for v in per_video.values()):
        keys.append("f1_query_swapped")
    return {
        "per_video": per_video,
        **{k: float(np.mean([v[k] for v in per_video.values()])) for k in keys},
    }
