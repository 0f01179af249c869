"""A learnable in-test task for fine-tuning: ``K`` classes, each a coloured clip and one
narration; and a worker that ``torchrun`` starts (``python tests/_finetune_task.py CONFIG``).

Clip ``index`` of epoch ``e`` is class ``index % K``: its colour plus noise drawn from
``(seed, epoch, index)`` alone, so any number of ranks reads the same global batch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from egovlpv2_rt.data.synthetic import narration_words
from egovlpv2_rt.train.finetune import TrainItem, finetune_from_file

CLASSES = (
    ("pick up", "red", "square"),
    ("put down", "green", "circle"),
    ("rotate", "blue", "triangle"),
    ("move", "yellow", "bar"),
)
PALETTE = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5], [1.5, 1.5, -1.0]])
CAPTIONS = tuple(narration_words(v, c, s) for v, c, s in CLASSES)


class ColourItems:
    """``n`` items; weight 1 for even indices, 0.5 for odd ones (graded margins)."""

    def __init__(self, n: int, frames: int, size: int, seed: int) -> None:
        self.n, self.frames, self.size, self.seed = n, frames, size, seed

    def __len__(self) -> int:
        return self.n

    def clip(self, index: int, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 10_007 + index)
        base = PALETTE[index % len(CLASSES)][None, :, None, None]
        noise = torch.randn(self.frames, 3, self.size, self.size, generator=gen)
        return (base + 0.5 * noise).float()

    def item(self, index: int, epoch: int) -> TrainItem:
        return TrainItem(
            self.clip(index, epoch), CAPTIONS[index % len(CLASSES)], 1.0 if index % 2 == 0 else 0.5
        )


class ColourTask:
    """The task adapter: items of ``cfg.data`` and a class-retrieval accuracy."""

    def __init__(self, n: int = 32) -> None:
        self.n = n

    def train_items(self, cfg) -> ColourItems:
        return ColourItems(self.n, cfg.data.num_frames, cfg.data.image_size, cfg.seed)

    def evaluator(self, cfg, tokenizer):
        held = ColourItems(8, cfg.data.num_frames, cfg.data.image_size, seed=cfg.seed + 99)

        @torch.no_grad()
        def evaluate(model) -> Mapping[str, float]:
            model.eval()
            tok = tokenizer(list(CAPTIONS), max_length=cfg.data.max_text_length)
            t = model.encode_text(tok["input_ids"], tok["attention_mask"])
            video = torch.stack([held.clip(i, 0) for i in range(len(held))]).to(model.dtype)
            v = model.encode_video(video)
            pred = model.sim_matrix(v, t).argmax(1)
            truth = torch.arange(len(held)) % len(CLASSES)
            return {"accuracy": float((pred == truth).double().mean())}

        return evaluate


if __name__ == "__main__":
    args = sys.argv[1:]
    finetune_from_file(Path(args[0]), lambda cfg: ColourTask(), device="cpu")
