"""Does a word's t2i cross-attention land on its object? Synthetic scenes of 3 objects (known
positions, one per 16-px patch), caption "#C C rotates the {colour} {shape}" naming the first
one; for the colour word, the shape word and <s>, the share of the word's patch attention (heads,
fused layers and frames averaged) inside the named object's patch, inside each other object's
patch (mean), against the patch's area share (1/16). One JSON line.

    python bench/explain_localization.py --scenes 40 --seed 0
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from egovlpv2_rt.data.synthetic import COLOURS, OBJECT_HALF, SceneObject, render_frame
from egovlpv2_rt.data.synthetic import _shape_mask as shape_mask
from egovlpv2_rt.runtime import load

SHAPES = ("square", "circle", "triangle", "bar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    args = ap.parse_args()
    rt = load(args.checkpoint, device="cpu")
    size, grid = rt.config.video.img_size, rt.config.video.img_size // rt.config.video.patch_size
    cell = size // grid
    rng = np.random.default_rng(args.seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    rows: dict[str, list[tuple[float, float]]] = {"colour": [], "shape": [], "<s>": []}
    colours = list(COLOURS)
    for _ in range(args.scenes):
        cells = rng.choice(grid * grid, 3, replace=False)
        cs = rng.choice(len(colours), 3, replace=False)
        ss = rng.choice(len(SHAPES), 3, replace=False)
        objs = [
            SceneObject(SHAPES[s], colours[c], (k % grid + 0.5) * cell, (k // grid + 0.5) * cell)
            for k, c, s in zip(cells, cs, ss, strict=True)
        ]
        frame = render_frame(
            size,
            np.array([90.0, 110.0, 100.0], np.float32),
            np.zeros((0, 4), np.float32),
            objs,
            None,
            np.zeros((size, size, 3), np.float32),
        )
        pixels = torch.from_numpy(np.stack([frame] * rt.num_frames)).permute(0, 3, 1, 2) / 255.0
        p = rt.preprocessing
        pixels = (pixels - torch.tensor(p.mean)[:, None, None]) / torch.tensor(p.std)[:, None, None]
        target = objs[0]
        res = rt.cross_attention(pixels, f"#C C rotates the {target.colour} {target.shape}")
        maps = res.maps.word_maps()[0].mean(1).numpy()  # [L, grid, grid], frames averaged
        masks = [
            shape_mask(xx, yy, o, OBJECT_HALF * size).reshape(grid, cell, grid, cell).mean((1, 3))
            > 0.25
            for o in objs
        ]
        for name, tok in (
            ("colour", " " + target.colour),
            ("shape", " " + target.shape),
            ("<s>", "<s>"),
        ):
            w = maps[res.tokens.index(tok)]
            w = w / w.sum()
            rows[name].append(
                (float((w * masks[0]).sum()), float(np.mean([(w * m).sum() for m in masks[1:]])))
            )
    out = {"scenes": args.scenes, "seed": args.seed, "area_share": 1.0 / (grid * grid)}
    for name, vals in rows.items():
        a = np.array(vals)
        out[name] = {
            "named_object": float(a[:, 0].mean()),
            "other_objects": float(a[:, 1].mean()),
            "named_above_others": int((a[:, 0] > a[:, 1]).sum()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
