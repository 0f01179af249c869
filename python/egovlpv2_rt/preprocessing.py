"""What a model expects of its input: frames per clip, image size and normalisation, caption
length and padding. Shared by the runtime (which prepares inputs) and the export (which records
it beside each graph), so it sits below both."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .config import ModelConfig
from .video.sampling import Sampling
from .video.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How clips and captions become model inputs.

    Video: ``num_frames`` frames sampled per clip (``sampling``: ``"uniform"`` = the midpoint of
    each of F equal segments), resized so the short side is ``resize``, center-cropped to
    ``crop``, resized to ``size`` x ``size``, scaled to [0, 1] and normalised with ``mean`` /
    ``std`` (RGB): ``[B, F, 3, size, size]`` float. This is the eval transform the training
    and EgoMCQ evaluation code (``data.clips.ClipReader``) use.
    Text: RoBERTa BPE (``tokenizer`` file), ``<s> ... </s>``, padded with ``pad_token_id``,
    at most ``max_text_length`` tokens.
    """

    num_frames: int
    size: int
    resize: int
    crop: int
    sampling: Sampling = "uniform"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_text_length: int = 32
    pad_token_id: int = 1
    tokenizer: str = "tokenizer.json"

    @classmethod
    def for_config(
        cls,
        config: ModelConfig,
        *,
        num_frames: int | None = None,
        max_text_length: int | None = None,
    ) -> Preprocessing:
        """Defaults for ``config``: F = ``video.num_frames``, resize = crop = size =
        ``video.img_size``, text length = the position table's limit."""
        s = config.video.img_size
        return cls(
            num_frames=num_frames or config.video.num_frames,
            size=s,
            resize=s,
            crop=s,
            max_text_length=max_text_length or config.text.max_text_length,
            pad_token_id=config.text.pad_token_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"preprocessing: unknown key(s) {unknown}")
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(x) for x in data[key])
        return cls(**data)
