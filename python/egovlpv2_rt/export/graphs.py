"""The exportable graphs: thin ``nn.Module`` wrappers around one EgoVLPv2 path each, with their
input/output names, example inputs and dynamic-shape specs.

=============  ==============================================  ===========================
graph          inputs                                          output
=============  ==============================================  ===========================
video_encoder  video [B, F, 3, H, W] float                      video_embeds [B, P]
text_encoder   input_ids [B, L] int64, attention_mask [B, L]    text_embeds [B, P]
vtm            video, input_ids, attention_mask                 vtm_logits [B, 2]
mlm            video, input_ids (masked), attention_mask        mlm_logits [B, L, V]
=============  ==============================================  ===========================

B and L are dynamic (``torch.export.Dim``); F, H and W are fixed per export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..modeling.model import EgoVLPv2

__all__ = [
    "DUAL_GRAPHS",
    "FUSION_GRAPHS",
    "GRAPHS",
    "GraphSpec",
    "build_graph",
    "example_inputs",
]


class VideoEncoderGraph(nn.Module):
    """video [B, F, 3, H, W] -> video_embeds [B, P] (dual mode, not normalised)."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> Tensor:
        return self.model.encode_video(video)


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask [B, L] int64 -> text_embeds [B, P] (dual mode)."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class VTMGraph(nn.Module):
    """(video [B, F, 3, H, W], input_ids [B, L], attention_mask [B, L]) -> vtm_logits [B, 2]
    for the pairs (video[i], text[i]) (fusion mode; index 1 = match)."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.vtm_logits(video, input_ids, attention_mask)


class MLMGraph(nn.Module):
    """(video, masked input_ids [B, L], attention_mask [B, L]) -> mlm_logits [B, L, V]."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.mlm_logits(video, input_ids, attention_mask)


@dataclass(frozen=True)
class GraphSpec:
    """One exportable graph: file stem, wrapper, input and output names, which inputs it
    takes (``video``, ``text``) and the model head it needs (or None)."""

    name: str
    wrapper: type[nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    head: str | None = None

    @property
    def takes_video(self) -> bool:
        return "video" in self.inputs

    @property
    def takes_text(self) -> bool:
        return "input_ids" in self.inputs


GRAPHS: dict[str, GraphSpec] = {
    "video_encoder": GraphSpec("video_encoder", VideoEncoderGraph, ("video",), ("video_embeds",)),
    "text_encoder": GraphSpec(
        "text_encoder", TextEncoderGraph, ("input_ids", "attention_mask"), ("text_embeds",)
    ),
    "vtm": GraphSpec(
        "vtm", VTMGraph, ("video", "input_ids", "attention_mask"), ("vtm_logits",), head="itm_score"
    ),
    "mlm": GraphSpec(
        "mlm", MLMGraph, ("video", "input_ids", "attention_mask"), ("mlm_logits",), head="mlm_score"
    ),
}
DUAL_GRAPHS = ("video_encoder", "text_encoder")
FUSION_GRAPHS = ("vtm",)


def build_graph(model: EgoVLPv2, name: str) -> nn.Module:
    """The wrapper module of graph ``name`` around ``model`` (eval mode)."""
    if name not in GRAPHS:
        raise ValueError(f"graph must be one of {sorted(GRAPHS)}, got {name!r}")
    spec = GRAPHS[name]
    if spec.head is not None and not hasattr(model, spec.head):
        raise ValueError(
            f"graph {name!r} needs the model's {spec.head} head, which this "
            f"checkpoint does not have (task_names={model.config.task_names!r})"
        )
    return spec.wrapper(model).eval()


def example_inputs(
    model: EgoVLPv2,
    name: str,
    *,
    num_frames: int,
    batch: int = 2,
    text_length: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, ...]:
    """Example inputs of graph ``name`` (also used as the trace inputs of the export).

    video: [batch, num_frames, 3, S, S] standard-normal pixels in the model's dtype; text:
    ids in ``[3, vocab)`` (no special ids, so no accidental pads) with a first ``<s>``-like
    token, the last row padded to half its length (so the mask path is traced with zeros).
    Batch and text length must be >= 2: torch.export specialises dims of size 0 and 1.
    """
    cfg = model.config
    if batch < 2:
        raise ValueError(
            f"example batch must be >= 2 (dims of size 1 are specialised), got {batch}"
        )
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    spec = GRAPHS[name]
    dev = next(model.parameters()).device
    if spec.takes_video:
        s = cfg.video.img_size
        video = torch.randn(batch, num_frames, cfg.video.in_chans, s, s, generator=gen)
        out.append(video.to(device=dev, dtype=model.dtype))
    if spec.takes_text:
        length = text_length or min(8, cfg.text.max_text_length)
        if length < 2:
            raise ValueError(f"example text length must be >= 2, got {length}")
        low = max(cfg.text.bos_token_id, cfg.text.pad_token_id, cfg.text.eos_token_id) + 1
        ids = torch.randint(low, cfg.text.vocab_size, (batch, length), generator=gen)
        ids[:, 0] = cfg.text.bos_token_id
        mask = torch.ones(batch, length, dtype=torch.int64)
        keep = max(2, length // 2)
        ids[-1, keep:] = cfg.text.pad_token_id
        mask[-1, keep:] = 0
        out += [ids.to(dev), mask.to(dev)]
    return tuple(out)


def dynamic_shapes(name: str, *, max_batch: int, max_text_length: int) -> tuple[dict, ...]:
    """``dynamic_shapes`` for ``torch.onnx.export``: batch dynamic in every input, text length
    dynamic in the text inputs; frames and image size static."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    length = torch.export.Dim("text_length", min=1, max=max_text_length)
    spec = GRAPHS[name]
    shapes: list[dict] = []
    for input_name in spec.inputs:
        if input_name == "video":
            shapes.append({0: batch})
        else:
            shapes.append({0: batch, 1: length})
    return tuple(shapes)
