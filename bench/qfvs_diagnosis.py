"""Why a QFVS head on the shipped default model does not beat a random summary: where the
concept of a prompt is lost. CPU, one JSON line, per (video, concept) AUCs of "is the concept
in this shot" (0.5 = chance), on a synthetic QFVS folder:

- ``zero_shot_dual``: cosine of the shot's video embedding and the prompt's text embedding
  (the prompt of a single concept, ``There is a {c}``), the dual encoder as a detector;
- ``zero_shot_vtm``: the fusion encoder's VTM logit (match - no match) of (shot, prompt);
- ``probe_unfused_cls``: a linear probe per concept on the shot's unfused prefix CLS (no text),
  leave-one-video-out: what the video tower knows about the concept;
- ``probe_fused`` / ``probe_no_prompt``: one linear probe for all concepts on the QFVS feature
  ``cross_modal_video_transform(fused CLS)`` of (shot, concept prompt) against the same probe
  on the prefix CLS (the same for every prompt): what the prompt adds to the feature the QFVS
  head reads. If ``probe_fused`` is near ``probe_no_prompt``, no head on those features can
  pick shots by concept.

    python -m egovlpv2_rt.cli synth --task qfvs --out /tmp/qfvs --seed 0
    python bench/qfvs_diagnosis.py /tmp/qfvs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import rankdata

from egovlpv2_rt.tasks.episodic.features import read_windows
from egovlpv2_rt.tasks.qfvs import prompt_inputs, shot_features, shot_frame_indices
from egovlpv2_rt.tasks.qfvs_data import QFVSVideo, load_qfvs
from egovlpv2_rt.tasks.qfvs_job import load_qfvs_backbone
from egovlpv2_rt.video.probe import probe


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN when one class is empty."""
    pos = labels > 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def probe_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-2
) -> np.ndarray:
    """Logits on ``x_test`` of an L2-regularised logistic regression fitted on standardised
    ``x_train`` (L-BFGS, float64)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.hstack([(x_train - mu) / sd, np.ones((len(x_train), 1))])
    b = np.hstack([(x_test - mu) / sd, np.ones((len(x_test), 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = a @ w
        p = 1.0 / (1.0 + np.exp(-z))
        nll = np.logaddexp(0.0, z) - y_train * z
        reg = 0.5 * l2 * float(w[:-1] @ w[:-1])
        grad = a.T @ (p - y_train) / len(z)
        grad[:-1] += l2 * w[:-1]
        return float(nll.mean()) + reg, grad

    w = minimize(loss, np.zeros(a.shape[1]), jac=True, method="L-BFGS-B").x
    return b @ w


def _leave_one_out(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], names: Sequence[str]
) -> list[float]:
    out = []
    for test in names:
        train = [n for n in names if n != test]
        xt, yt = np.concatenate([x[n] for n in train]), np.concatenate([y[n] for n in train])
        if yt.min() == yt.max():
            continue
        out.append(auc(y[test], probe_scores(xt, yt, x[test])))
    return out


def _mean(values: Sequence[float]) -> float:
    return round(float(np.nanmean(values)), 4)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="a QFVS folder (egovlpv2 synth --task qfvs)")
    ap.add_argument("--checkpoint", default=None, help="model file (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    backbone = load_qfvs_backbone(args.checkpoint)
    model, tok = backbone.model, backbone.tokenizer
    videos, vocab = load_qfvs(args.data)
    names = [v.name for v in videos]
    # (c, c) pairs: prompt 0 of each is "There is a {c}", the single-concept prompt.
    pairs = [(c, c) for c in vocab]
    ids, mask = prompt_inputs(model, tok, pairs)
    ids, mask = ids[0::3], mask[0::3]
    text = torch.nn.functional.normalize(model.encode_text(ids, mask), dim=-1)

    zs_dual: list[float] = []
    zs_vtm: list[float] = []
    cls: dict[str, np.ndarray] = {}
    fused: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    by_concept: dict[str, dict[str, np.ndarray]] = {c: {} for c in vocab}
    for v in videos:
        shots = _decode_shots(args.data, v, model.config.video.img_size, model.dtype)
        n = shots.shape[0]
        video = torch.nn.functional.normalize(model.encode_video(shots), dim=-1)
        dual = (video @ text.T).numpy()
        feats = shot_features(model, tok, shots, pairs)
        cls[v.name] = feats.prefix_cls.numpy()
        fused[v.name] = feats.fused[:, 0].reshape(len(vocab) * n, -1).numpy()
        labels[v.name] = np.concatenate([v.concept_labels(c) for c in vocab])
        for j, c in enumerate(vocab):
            y = v.concept_labels(c)
            logits = model.forward_fusion(
                shots, ids[j : j + 1].expand(n, -1), mask[j : j + 1].expand(n, -1)
            ).logits
            zs_dual.append(auc(y, dual[:, j]))
            zs_vtm.append(auc(y, (logits[:, 1] - logits[:, 0]).numpy()))
            by_concept[c][v.name] = y
    t1 = time.perf_counter()
    per_concept = [a for c in vocab for a in _leave_one_out(cls, by_concept[c], names)]
    no_prompt = {k: np.tile(cls[k], (len(vocab), 1)) for k in names}
    line = {
        "data": args.data,
        "videos": len(videos),
        "concepts": len(vocab),
        "positive_share": round(float(np.mean(np.concatenate(list(labels.values())))), 4),
        "zero_shot_dual": _mean(zs_dual),
        "zero_shot_vtm": _mean(zs_vtm),
        "probe_unfused_cls": _mean(per_concept),
        "probe_fused": _mean(_leave_one_out(fused, labels, names)),
        "probe_no_prompt": _mean(_leave_one_out(no_prompt, labels, names)),
        "features_seconds": round(t1 - t0, 1),
        "probe_seconds": round(time.perf_counter() - t1, 1),
    }
    print(json.dumps(line))


def _decode_shots(root: str, video: QFVSVideo, size: int, dtype: torch.dtype) -> torch.Tensor:
    path = f"{root}/videos/{video.name}.mp4"
    info = probe(path)
    return read_windows(
        path, shot_frame_indices(info.num_frames, info.average_fps), size, dtype=dtype
    )


if __name__ == "__main__":
    main()
