"""The tasks ``egovlpv2 finetune --task`` trains: EK-100 MIR and Charades-Ego as
:class:`~egovlpv2_rt.train.finetune.FinetuneTask` adapters (their training pairs and their
test-split evaluation, periodic during the run and reported, never used to pick a checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from ..tokenizer import RobertaTokenizer
from ..train.finetune import Evaluator, FinetuneTask, TrainItem, TrainItems
from ..train.finetune_config import FinetuneConfig
from .charades_clips import CharadesTrainDataset
from .charades_data import read_charades_classes, read_charades_csv, training_segments
from .charades_eval import CharadesEgoFiles, evaluate_charades_ego
from .ek100_data import load_ek100_split
from .ek100_mir import EK100MIRDataset, evaluate_ek100_mir

__all__ = ["FINETUNE_TASKS", "CharadesEgoFinetune", "EK100MIRFinetune", "finetune_task"]


class _EK100Items:
    """EK-100 training pairs: clip, a caption of relevancy > 0.1 (its relevancy the weight),
    else the clip's own narration (weight 1); drawn from (seed, epoch, index) only."""

    def __init__(self, dataset: EK100MIRDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int, epoch: int) -> TrainItem:
        self.dataset.set_epoch(epoch)
        it = self.dataset[index]
        return TrainItem(it.video, it.text, float(it.weight))


class EK100MIRFinetune:
    """EK-100 multi-instance retrieval: max-margin fine-tuning, mAP/nDCG on the test split."""

    def train_items(self, cfg: FinetuneConfig) -> TrainItems:
        split = load_ek100_split(cfg.data.root, "train")
        return _EK100Items(
            EK100MIRDataset(
                split,
                train=True,
                num_frames=cfg.data.num_frames,
                size=cfg.data.image_size,
                backend=cfg.data.backend,
                seed=cfg.seed,
            )
        )

    def evaluator(self, cfg: FinetuneConfig, tokenizer: RobertaTokenizer) -> Evaluator | None:
        if not cfg.eval.enabled:
            return None
        test = load_ek100_split(cfg.data.root, "test")
        return lambda model: evaluate_ek100_mir(
            model,
            tokenizer,
            test,
            num_frames=cfg.data.num_frames,
            size=cfg.data.image_size,
            batch_size=cfg.eval.batch_size,
            backend=cfg.data.backend,
        ).as_dict()


class _CharadesItems:
    """Charades-Ego training pairs: an action segment and its bare class name (weight 1;
    the InfoNCE loss has no weights)."""

    def __init__(self, dataset: CharadesTrainDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int, epoch: int) -> TrainItem:
        self.dataset.set_epoch(epoch)
        it = self.dataset[index]
        assert isinstance(it, dict)  # on_error='raise': a bad clip raises, naming it
        return TrainItem(it["video"], it["text"], 1.0)


class CharadesEgoFinetune:
    """Charades-Ego: InfoNCE fine-tuning on action segments, class mAP on the test split."""

    def train_items(self, cfg: FinetuneConfig) -> TrainItems:
        files = CharadesEgoFiles.locate(cfg.data.root)
        classes = read_charades_classes(files.classes)
        segments = training_segments(read_charades_csv(files.train, classes), classes)
        if not segments:
            raise InputError(f"{files.train}: no action segment to train on")
        return _CharadesItems(
            CharadesTrainDataset(
                segments,
                files.video_root,
                num_frames=cfg.data.num_frames,
                size=cfg.data.image_size,
                backend=cfg.data.backend,
                seed=cfg.seed,
                on_error="raise",
            )
        )

    def evaluator(self, cfg: FinetuneConfig, tokenizer: RobertaTokenizer) -> Evaluator | None:
        if not cfg.eval.enabled:
            return None
        root = Path(cfg.data.root)
        return lambda model: {
            "mAP": evaluate_charades_ego(
                model,
                root,
                tokenizer,
                num_frames=cfg.data.num_frames,
                batch_size=cfg.eval.batch_size,
                backend=cfg.data.backend,
            ).map
        }


FINETUNE_TASKS: dict[str, Callable[[], FinetuneTask]] = {
    "ek100_mir": EK100MIRFinetune,
    "charades_ego": CharadesEgoFinetune,
}


def finetune_task(cfg: FinetuneConfig) -> FinetuneTask:
    """The adapter of ``cfg.task``."""
    if cfg.task not in FINETUNE_TASKS:
        raise InputError(f"task must be one of {sorted(FINETUNE_TASKS)}, got {cfg.task!r}")
    return FINETUNE_TASKS[cfg.task]()
