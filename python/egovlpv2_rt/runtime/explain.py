"""The cross-attention figure of ``egovlpv2 explain``: the clip's frames, and per chosen word
the t2i attention of its tokens over each frame's patches as a heat map on the frame (the
paper's visualisation). matplotlib is imported when a figure is drawn (extra ``explain``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .api import CrossAttention

__all__ = ["draw_cross_attention", "word_maps", "word_tokens"]

_SPECIAL = {"<s>", "</s>", "<pad>"}


def word_tokens(tokens: Sequence[str], word: str) -> list[int]:
    """The positions of the tokens that spell ``word`` (case-insensitive; a word split into
    several tokens gives all of them; the first occurrence). InputError listing the tokens when
    the caption has no such word."""
    want = word.strip().lower()
    if not want:
        raise InputError("explain: an empty word")
    for i in range(len(tokens)):
        text = ""
        for j in range(i, len(tokens)):
            if tokens[j] in _SPECIAL:
                break
            piece = tokens[j] if j > i else tokens[j].lstrip()
            if j > i and piece[:1].isspace():
                break  # the next word starts
            text += piece
            if text.lower() == want and (j + 1 == len(tokens) or not tokens[j + 1][:1].isalnum()):
                return list(range(i, j + 1))
            if not want.startswith(text.lower()):
                break
    shown = [t for t in tokens if t not in _SPECIAL]
    raise InputError(f"explain: the caption has no word {word!r} (its tokens: {shown})")


def word_maps(result: CrossAttention, words: Sequence[str], layer: int | None = None) -> np.ndarray:
    """``[W, F, grid, grid]`` float32: per word the t2i attention of its tokens (their mean)
    over each frame's patches, averaged over heads and over the fused layers (or ``layer``)."""
    maps = result.maps.word_maps(layer)[0]  # [L, F, g, g]
    out = [maps[word_tokens(result.tokens, w)].mean(0) for w in words]
    return torch.stack(out).numpy().astype(np.float32)


def draw_cross_attention(
    result: CrossAttention,
    words: Sequence[str],
    out: str | Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    layer: int | None = None,
    title: str = "",
) -> Path:
    """Write the figure to ``out`` (.png, .pdf or .svg): row 0 the frames, then one row per
    word, its heat map (upsampled bilinearly to the frame, shared colour scale per word) over
    the frame. ``mean``/``std``: the preprocessing's, to show the frames as decoded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "explain draws with matplotlib: pip install 'egovlpv2-rt[explain]'"
        ) from None
    maps = word_maps(result, words, layer)  # [W, F, g, g]
    pix = result.pixels.numpy().transpose(0, 2, 3, 1)  # [F, S, S, 3]
    frames = np.clip(pix * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
    n_frames, size = frames.shape[0], frames.shape[1]
    up = torch.nn.functional.interpolate(
        torch.from_numpy(maps), size=(size, size), mode="bilinear", align_corners=False
    ).numpy()
    fig, axes = plt.subplots(
        len(words) + 1, n_frames, figsize=(2.0 * n_frames, 2.0 * (len(words) + 1)), squeeze=False
    )
    for f in range(n_frames):
        axes[0, f].imshow(frames[f])
        axes[0, f].set_title(f"frame {f + 1}", fontsize=8)
        for r, w in enumerate(words, start=1):
            ax = axes[r, f]
            ax.imshow(frames[f])
            ax.imshow(up[r - 1, f], cmap="jet", alpha=0.5, vmin=0.0, vmax=float(up[r - 1].max()))
            if f == 0:
                ax.set_ylabel(w, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    which = "fused layers averaged" if layer is None else f"fused layer {layer}"
    fig.suptitle(f"{title}\nt2i attention per word ({which}, heads averaged)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
