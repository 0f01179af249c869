"""Charades-Ego (action recognition as video-text matching): the task's public API.

- files: :func:`read_charades_classes`, :func:`read_charades_csv`, :func:`training_segments`
  (one sample per action, as the original's ``metadata_train.csv``), :func:`read_metadata_train`
  (charades_data.py);
- clips: 32 random frames within an action for training, 32 uniform frames over the whole
  video for evaluation, the original's default transforms, on every video backend
  (charades_clips.py);
- evaluation: :func:`evaluate_charades_ego` / :func:`score_charades_ego` (charades_eval.py);
- synthetic data in the same file formats: :func:`synthesize_charades_ego` (charades_synth.py).

Zero-shot evaluation in a few lines::

    from egovlpv2_rt.checkpoint import load_model
    from egovlpv2_rt.tokenizer import RobertaTokenizer
    from egovlpv2_rt.tasks.charades_ego import evaluate_charades_ego, synthesize_charades_ego

    paths = synthesize_charades_ego("charades_synth", seed=0)
    result = evaluate_charades_ego(model, paths["root"], tokenizer)
    print(result.as_dict())
"""

from __future__ import annotations

from .charades_clips import (
    NUM_FRAMES,
    CharadesTrainDataset,
    eval_spec,
    eval_transform,
    read_test_clip,
    read_training_clip,
    segment_spec,
    train_transform,
    video_path,
)
from .charades_data import (
    CHARADES_COLUMNS,
    CLASSES_FILE,
    SPLIT_FILES,
    CharadesAction,
    CharadesClass,
    CharadesVideo,
    Segment,
    parse_actions,
    read_charades_classes,
    read_charades_csv,
    read_metadata_train,
    training_segments,
)
from .charades_eval import (
    TEXT_MAX_LENGTH,
    CharadesEgoFiles,
    CharadesEgoResult,
    CharadesEgoScores,
    Metric,
    embed_class_names,
    evaluate_charades_ego,
    multi_hot_targets,
    score_charades_ego,
)
from .charades_synth import CharadesSynthConfig, synthesize_charades_ego, synthetic_classes

__all__ = [
    "CHARADES_COLUMNS",
    "CLASSES_FILE",
    "NUM_FRAMES",
    "SPLIT_FILES",
    "TEXT_MAX_LENGTH",
    "CharadesAction",
    "CharadesClass",
    "CharadesEgoFiles",
    "CharadesEgoResult",
    "CharadesEgoScores",
    "CharadesSynthConfig",
    "CharadesTrainDataset",
    "CharadesVideo",
    "Metric",
    "Segment",
    "embed_class_names",
    "eval_spec",
    "eval_transform",
    "evaluate_charades_ego",
    "multi_hot_targets",
    "parse_actions",
    "read_charades_classes",
    "read_charades_csv",
    "read_metadata_train",
    "read_test_clip",
    "read_training_clip",
    "score_charades_ego",
    "segment_spec",
    "synthesize_charades_ego",
    "synthetic_classes",
    "train_transform",
    "training_segments",
    "video_path",
]
