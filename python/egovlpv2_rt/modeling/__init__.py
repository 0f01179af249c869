"""EgoVLPv2 model: video backbone, text backbone, heads and the dual/fusion model."""

from .model import EgoVLPv2, FusionOutput, TextOutput, VideoOutput, sim_matrix
from .text import RobertaTextModel
from .video import SpaceTimeTransformer

__all__ = [
    "EgoVLPv2",
    "FusionOutput",
    "RobertaTextModel",
    "SpaceTimeTransformer",
    "TextOutput",
    "VideoOutput",
    "sim_matrix",
]
