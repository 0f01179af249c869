"""Video input: one frame-sampling rule, CPU (PyAV, torchcodec) and DALI backends, transforms.

Entry points: :func:`read_clip` (one clip -> ``[F, 3, 224, 224]`` float32) and
:func:`frame_indices` (the frames it decodes); :class:`VideoClipDataset` and
:class:`RobustClipLoader` for DataLoader use; :class:`DaliClipLoader` for GPU batches.
Every failure raises a :class:`VideoError` subclass naming the file. See docs/VIDEO.md.
"""

# Importing the DALI backend registers it with the reader (backend='dali' / 'dali_cpu').
from .codecs import backends_for_codec
from .dali_backend import DaliClipLoader, dali_available
from .dataset import ClipFailure, RobustClipLoader, VideoClipDataset, collate_clips
from .errors import (
    BackendUnavailableError,
    ClipRangeError,
    ClipRangeWarning,
    CorruptVideoError,
    FramePaddingWarning,
    InsufficientFramesError,
    NoVideoStreamError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
)
from .planning import frame_indices, plan_clip
from .probe import VideoInfo, clear_probe_cache, probe
from .reader import BACKENDS, decode_clip, read_clip
from .sampling import ClipPlan, ClipSpec, EgoClipLayout, segment_indices
from .torchcodec_backend import torchcodec_available
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

__all__ = [
    "BACKENDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackendUnavailableError",
    "ClipFailure",
    "ClipPlan",
    "ClipRangeError",
    "ClipRangeWarning",
    "ClipSpec",
    "CorruptVideoError",
    "DaliClipLoader",
    "EgoClipLayout",
    "EvalTransform",
    "FramePaddingWarning",
    "InsufficientFramesError",
    "NoVideoStreamError",
    "RobustClipLoader",
    "TrainTransform",
    "UnsupportedCodecError",
    "VideoClipDataset",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "backends_for_codec",
    "clear_probe_cache",
    "collate_clips",
    "dali_available",
    "decode_clip",
    "frame_indices",
    "plan_clip",
    "probe",
    "read_clip",
    "segment_indices",
    "torchcodec_available",
]
