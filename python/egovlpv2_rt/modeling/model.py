"""EgoVLPv2 (the original ``FrozenInTime`` with fusion in the backbone).

Dual mode (gates off): ``encode_video`` and ``encode_text`` are independent towers followed by
the retrieval projections, so text embeddings can be cached and searched with ``sim_matrix``.
Fusion mode (gates on): the top ``num_fuse_block`` video blocks and text layers run in pairs,
each reading the other tower's states from before the pair; ``vtm_logits`` and ``mlm_logits``
read the result.

State-dict keys are exactly the original's, so released checkpoints load directly
(``egovlpv2_rt.checkpoint``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import _extension
from ..config import ModelConfig, preset
from ..ops import IMPLS
from .heads import ITMHead, MLMHead, Pooler, text_projection, video_projection
from .text import RobertaTextModel, TextLayer, additive_key_mask
from .validation import check_batch_match, check_text, check_video
from .video import DividedAttention, SpaceTimeBlock, SpaceTimeTransformer

__all__ = [
    "EgoVLPv2",
    "FusionOutput",
    "TextOutput",
    "VideoFusionCache",
    "VideoOutput",
    "sim_matrix",
]

Traces = dict[str, Tensor]


@dataclass
class VideoOutput:
    """``embeds``: [B, P] retrieval embedding (``vid_proj``); ``features``: [B, D] CLS after the
    final video LayerNorm; ``traces``: filled when requested (``vtokens_in``, ``vblockNN``)."""

    embeds: Tensor
    features: Tensor
    traces: Traces = field(default_factory=dict)


@dataclass
class TextOutput:
    """``embeds``: [B, P] (``txt_proj``); ``features``: [B, H] CLS of the last layer;
    ``last_hidden_state``: [B, L, H]; ``traces``: ``tembed``, ``tlayerNN`` when requested."""

    embeds: Tensor
    features: Tensor
    last_hidden_state: Tensor
    traces: Traces = field(default_factory=dict)


@dataclass
class FusionOutput:
    """``logits``: [B, 2] (itm) or [B, L, V] (mlm); ``text_states``: [B, L, H] last fused text
    layer; ``video_cls``: [B, D] CLS of the fusion ``norm`` of the last video block (itm only,
    else None); ``traces``: ``vtokens_in``, ``vblockNN``, ``tembed``, ``tlayerNN`` when
    requested."""

    logits: Tensor
    text_states: Tensor
    video_cls: Tensor | None
    traces: Traces = field(default_factory=dict)


@dataclass(frozen=True)
class VideoFusionCache:
    """The query-independent work of the fusion path for B videos (inference).

    ``tokens``: [B, 1+F*N, D] entering the first fused block; ``space`` and ``i2t_query``:
    that block's space-attention output and i2t queries (``text_free_part``); ``t2i_key``,
    ``t2i_value``: [B, 1+F*N, H] the first fused text layer's keys and values of ``tokens``;
    ``num_frames``: F.
    """

    tokens: Tensor
    space: Tensor
    i2t_query: Tensor
    t2i_key: Tensor
    t2i_value: Tensor
    num_frames: int

    def tile(self, times: int) -> VideoFusionCache:
        """The B rows repeated ``times`` times (row ``r * B + b`` = row b), to pair every video
        with ``times`` texts."""

        def rep(t: Tensor) -> Tensor:
            return t.repeat(times, 1, 1)

        return VideoFusionCache(
            rep(self.tokens),
            rep(self.space),
            rep(self.i2t_query),
            rep(self.t2i_key),
            rep(self.t2i_value),
            self.num_frames,
        )


def sim_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarities ``[Na, Nb]`` of rows of ``a`` [Na, P] and ``b`` [Nb, P]; row norms are
    clamped below at ``eps`` as in the original."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"sim_matrix: expected a [Na, P] and b [Nb, P], got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    a_n, b_n = a.norm(dim=1)[:, None], b.norm(dim=1)[:, None]
    a_norm = a / torch.max(a_n, eps * torch.ones_like(a_n))
    b_norm = b / torch.max(b_n, eps * torch.ones_like(b_n))
    return torch.mm(a_norm, b_norm.transpose(0, 1))


def _record(traces: Traces | None, name: str, x: Tensor) -> None:
    if traces is not None:
        traces[name] = x


class EgoVLPv2(nn.Module):
    """The EgoVLPv2 model. Build with ``EgoVLPv2(config)`` or ``EgoVLPv2.from_preset("tiny")``.

    Parameters start from the original's initialisation rules (RoBERTa/BERT normal(0.02) for the
    text tower and heads, ViT-style for the video tower, zero gates, "zeros" time attention);
    load real weights with ``egovlpv2_rt.checkpoint``.

    ``config`` says what the model is (it is saved with the weights). How it runs is chosen
    here and never saved:

    - ``attention_impl``: ``"auto"`` (the fused C++/CUDA ops where they run for the inputs'
      device and dtype, else plain PyTorch; a warning when the extension is not built at all),
      ``"fused"`` or ``"reference"``; switch later with :meth:`set_attention_impl`;
    - ``gradient_checkpointing``: recompute each block/layer in the backward pass (training);
    - ``check_finite_pixels``: reject NaN/Inf pixels with an ``InputError`` naming the batch
      rows (one fused reduction and one host read per call; a sync on GPU, so callers that
      check their pixels elsewhere, like the runtime, or run hot loops switch it off).

    Token ids (in the vocabulary) and attention masks (only 0 and 1) are always checked in
    eager mode, with one host read per call for both.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        attention_impl: str = "auto",
        gradient_checkpointing: bool = False,
        check_finite_pixels: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
        _check_attention_impl(attention_impl)
        self.config = config
        v, t, f = config.video, config.text, config.fusion
        impl = attention_impl
        self.attention_impl = attention_impl
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.check_finite_pixels = bool(check_finite_pixels)
        tasks = config.tasks
        self.has_fusion = "ITM" in tasks or "MLM" in tasks
        if self.has_fusion:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.text_model = RobertaTextModel(
            t, num_fuse_block=f.num_fuse_block, video_dim=f.input_image_embed_size, impl=impl
        )
        self.video_model = SpaceTimeTransformer(
            v, num_fuse_block=f.num_fuse_block, text_dim=f.input_text_embed_size, impl=impl
        )
        self.txt_proj = text_projection(config.projection, t.hidden_size, config.projection_dim)
        self.vid_proj = video_projection(config.projection, v.embed_dim, config.projection_dim)
        if self.has_fusion:
            self.cross_modal_text_transform = nn.Linear(f.input_text_embed_size, f.hidden_size)
            self.cross_modal_video_transform = nn.Linear(f.input_image_embed_size, f.hidden_size)
            self.norm = nn.LayerNorm(config.embed_dim, eps=f.norm_eps)
            self.cross_modal_video_pooler = Pooler(f.hidden_size)
            self.cross_modal_text_pooler = Pooler(f.hidden_size)
        if "MLM" in tasks:
            self.mlm_score = MLMHead(f.hidden_size, f.vocab_size, f.mlm_layer_norm_eps)
        if "ITM" in tasks:
            self.itm_score = ITMHead(2 * f.hidden_size)
        self.reset_parameters()

    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        attention_impl: str = "auto",
        gradient_checkpointing: bool = False,
        check_finite_pixels: bool = True,
        **overrides: Any,
    ) -> EgoVLPv2:
        """``EgoVLPv2(preset(name, **overrides), ...)``; names: see ``config.PRESETS``."""
        return cls(
            preset(name, **overrides),
            attention_impl=attention_impl,
            gradient_checkpointing=gradient_checkpointing,
            check_finite_pixels=check_finite_pixels,
        )

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as the original does before loading pretrained towers."""
        std = 0.02
        for module in self.text_model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        # nn.ModuleList yields nn.Module to the type checker; these hold TextLayer.
        for layer in cast("Iterable[TextLayer]", self.text_model.encoder.layer):
            if layer.has_cross:
                layer.alpha_t2i.zero_()

        vm = self.video_model
        for module in vm.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        nn.init.trunc_normal_(vm.pos_embed, std=std)
        nn.init.trunc_normal_(vm.cls_token, std=std)
        vm.temporal_embed.zero_()
        for blk in cast("Iterable[SpaceTimeBlock]", vm.blocks):
            if self.config.video.time_init == "zeros":
                init_time_attention_zeros(blk.timeattn)
            if blk.attn.has_cross:
                blk.attn.alpha_i2t.zero_()

        if self.has_fusion:
            self.cls_token.zero_()
            heads = [
                self.cross_modal_text_transform,
                self.cross_modal_video_transform,
                self.cross_modal_video_pooler,
                self.cross_modal_text_pooler,
            ]
            heads += [getattr(self, n) for n in ("mlm_score", "itm_score") if hasattr(self, n)]
            for head in heads:
                for module in head.modules():
                    if isinstance(module, nn.Linear):
                        module.weight.normal_(0.0, std)
                        if module.bias is not None:
                            module.bias.zero_()
                    elif isinstance(module, nn.LayerNorm):
                        module.weight.fill_(1.0)
                        module.bias.zero_()
            if hasattr(self, "mlm_score"):
                self.mlm_score.bias.zero_()

    # -- switches ------------------------------------------------------------------------------
    def set_attention_impl(self, impl: Literal["auto", "reference", "fused"]) -> None:
        """Switch every attention module to ``"auto"``, ``"reference"`` or ``"fused"``."""
        _check_attention_impl(impl)
        for module in self.modules():
            if isinstance(module, (TextLayer, DividedAttention)):  # the modules with an impl
                module.impl = impl
        self.attention_impl = impl

    @property
    def dtype(self) -> torch.dtype:
        return self.video_model.cls_token.dtype

    def _call(self, module: nn.Module, *args: Any) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _check_video(self, video: Tensor) -> Tensor:
        return check_video(
            video, self.config.video, model_dtype=self.dtype, check_finite=self.check_finite_pixels
        )

    # -- dual mode -----------------------------------------------------------------------------
    def forward_video(self, video: Tensor, *, return_traces: bool = False) -> VideoOutput:
        """Video tower alone. video: [B, F, 3, H, W] float (F <= video.num_frames, H = W =
        img_size), normalised pixels, the model's dtype. Returns ``VideoOutput``."""
        self._check_video(video)
        traces: Traces | None = {} if return_traces else None
        num_frames = video.shape[1]
        x = self.video_model.embed(video)
        _record(traces, "vtokens_in", x)
        for i, blk in enumerate(self.video_model.blocks):
            x = self._call(blk, x, num_frames)
            _record(traces, f"vblock{i:02d}", x)
        feat = self.video_model.norm(x)[:, 0]
        return VideoOutput(self.vid_proj(feat), feat, traces or {})

    def forward_text(
        self, input_ids: Tensor, attention_mask: Tensor, *, return_traces: bool = False
    ) -> TextOutput:
        """Text tower alone. input_ids: [B, L] int64 in [0, vocab); attention_mask: [B, L] 0/1.
        Returns ``TextOutput``."""
        check_text(input_ids, attention_mask, self.config.text)
        traces: Traces | None = {} if return_traces else None
        h = self.text_model.embeddings(input_ids)
        key_mask = additive_key_mask(attention_mask, h.dtype)
        _record(traces, "tembed", h)
        for i, layer in enumerate(self.text_model.encoder.layer):
            h = self._call(layer, h, key_mask)
            _record(traces, f"tlayer{i:02d}", h)
        feat = h[:, 0]
        return TextOutput(self.txt_proj(feat), feat, h, traces or {})

    def encode_video(self, video: Tensor) -> Tensor:
        """video: [B, F, 3, H, W] float -> retrieval embeddings [B, P] (not normalised)."""
        return self.forward_video(video).embeds

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: [B, L] -> retrieval embeddings [B, P] (not normalised)."""
        return self.forward_text(input_ids, attention_mask).embeds

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Dual-mode similarity: ``sim_matrix(encode_text(...), encode_video(video))`` [Bt, Bv]
        (rows are captions, as in the original)."""
        return sim_matrix(self.encode_text(input_ids, attention_mask), self.encode_video(video))

    sim_matrix = staticmethod(sim_matrix)

    # -- fusion mode ---------------------------------------------------------------------------
    def forward_fusion(
        self,
        video: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        task: Literal["itm", "mlm"] = "itm",
        return_traces: bool = False,
    ) -> FusionOutput:
        """Fusion forward on pairs (video[i], text[i]).

        video: [B, F, 3, H, W] float; input_ids (for MLM the masked ids): [B, L] int64;
        attention_mask: [B, L] 0/1. ``task="itm"`` gives [B, 2] VTM logits, ``"mlm"`` gives
        [B, L, V] vocabulary logits on every position.
        """
        if task not in ("itm", "mlm"):
            raise ValueError(f"task must be 'itm' or 'mlm', got {task!r}")
        head = "itm_score" if task == "itm" else "mlm_score"
        if not hasattr(self, head):
            raise RuntimeError(
                f"this model has no {task.upper()} head (task_names={self.config.task_names!r})"
            )
        self._check_video(video)
        check_text(input_ids, attention_mask, self.config.text)
        check_batch_match(video, input_ids)
        traces: Traces | None = {} if return_traces else None
        blocks, layers = self.video_model.blocks, self.text_model.encoder.layer
        unfused, depth = self.config.num_unfused_layers, len(blocks)
        num_frames = video.shape[1]

        x = self.video_model.embed(video, cls_token=self.cls_token)
        _record(traces, "vtokens_in", x)
        for i in range(unfused):
            x = self._call(blocks[i], x, num_frames)
            _record(traces, f"vblock{i:02d}", x)
        h = self.text_model.embeddings(input_ids)
        key_mask = additive_key_mask(attention_mask, h.dtype)
        _record(traces, "tembed", h)
        for i in range(unfused):
            h = self._call(layers[i], h, key_mask)
            _record(traces, f"tlayer{i:02d}", h)
        for i in range(unfused, depth):
            # MLM reads only the text side: the last video block cannot influence it.
            skip_video = task == "mlm" and i == depth - 1 and traces is None
            x_next = x if skip_video else self._call(blocks[i], x, num_frames, h, key_mask)
            h = self._call(layers[i], h, key_mask, x)
            x = x_next
            if not skip_video:
                _record(traces, f"vblock{i:02d}", x)
            _record(traces, f"tlayer{i:02d}", h)

        if task == "mlm":
            logits = self.mlm_score(self.cross_modal_text_transform(h))
            return FusionOutput(logits, h, None, traces or {})
        video_cls = self.norm(x)[:, 0]
        text_feats = self.cross_modal_text_pooler(self.cross_modal_text_transform(h[:, 0]))
        video_feats = self.cross_modal_video_pooler(self.cross_modal_video_transform(video_cls))
        logits = self.itm_score(torch.cat([text_feats, video_feats], dim=-1))
        return FusionOutput(logits, h, video_cls, traces or {})

    # -- fusion in two stages: query-independent prefix, then the fused layers -----------------
    def _require_fusion(self) -> None:
        if not self.has_fusion:
            raise RuntimeError(
                f"this model has no fusion layers (task_names={self.config.task_names!r})"
            )

    @torch.no_grad()
    def video_fusion_cache(self, video: Tensor) -> VideoFusionCache:
        """The query-independent work of the fusion path for ``video`` (inference).

        video: [B, F, 3, H, W] float, the model's dtype. Returns a :class:`VideoFusionCache`:
        the embedding with the fusion path's own CLS (``self.cls_token``) through the unfused
        blocks, and the parts of the first fused block and text layer that read only it.
        """
        self._require_fusion()
        self._check_video(video)
        u = self.config.num_unfused_layers
        x = self.video_model.embed(video, cls_token=self.cls_token)
        for blk in self.video_model.blocks[:u]:
            x = blk(x, video.shape[1])
        first_block = cast("SpaceTimeBlock", self.video_model.blocks[u])
        first_layer = cast("TextLayer", self.text_model.encoder.layer[u])
        space, query = first_block.text_free_part(x, video.shape[1])
        key, value = first_layer.video_keys(x)
        return VideoFusionCache(x, space, query, key, value, video.shape[1])

    def fusion_text_prefix(
        self, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The text states entering the first fused layer (they depend on the text alone).

        input_ids: [B, L] int64; attention_mask: [B, L] 0/1. Returns (states [B, L, H],
        additive key mask [B, L] in the states' dtype).
        """
        self._require_fusion()
        check_text(input_ids, attention_mask, self.config.text)
        h = self.text_model.embeddings(input_ids)
        key_mask = additive_key_mask(attention_mask, h.dtype)
        for layer in self.text_model.encoder.layer[: self.config.num_unfused_layers]:
            h = self._call(layer, h, key_mask)
        return h, key_mask

    @torch.no_grad()
    def fused_video_cls(
        self, cache: VideoFusionCache, text_prefix: Tensor, key_mask: Tensor
    ) -> Tensor:
        """The fused video CLS of pairs (cache row i, text_prefix[i]) (inference).

        Equals ``forward_fusion(video, ids, mask).video_cls`` for the same inputs, computed
        with less work: the query-independent parts come from ``cache``; the last fused block
        runs its space attention, i2t cross-attention and MLP for the CLS token only, and the
        last text layer (which only the text outputs read) is skipped. Callers compute the
        cache once per video and the text prefix once per query, then pair them freely
        (:meth:`VideoFusionCache.tile`), e.g. every window of a clip with every query.

        cache: B rows from :meth:`video_fusion_cache`; text_prefix, key_mask: [B, L, H] and
        [B, L] from :meth:`fusion_text_prefix`. Returns [B, D], after the fusion path's final
        norm (``self.norm``), no projection.
        """
        self._require_fusion()
        if self.training:
            raise RuntimeError("fused_video_cls is for inference: call model.eval()")
        if text_prefix.dim() != 3 or key_mask.dim() != 2:
            raise ValueError(
                "expected text_prefix [B, L, H] and key_mask [B, L], got "
                f"{tuple(text_prefix.shape)}, {tuple(key_mask.shape)}"
            )
        if not cache.tokens.shape[0] == text_prefix.shape[0] == key_mask.shape[0]:
            raise ValueError(
                f"batch sizes differ: cache {cache.tokens.shape[0]}, text_prefix "
                f"{text_prefix.shape[0]}, key_mask {key_mask.shape[0]}"
            )
        blocks = cast("list[SpaceTimeBlock]", self.video_model.blocks)
        layers = cast("list[TextLayer]", self.text_model.encoder.layer)
        u, nf, h = self.config.num_unfused_layers, cache.num_frames, text_prefix
        if u == len(blocks) - 1:
            return self.norm(blocks[u].cls_forward(cache.tokens, nf, h, key_mask))[:, 0]
        x = blocks[u].text_part(cache.tokens, cache.space, cache.i2t_query, h, key_mask)
        h = layers[u](h, key_mask, video_kv=(cache.t2i_key, cache.t2i_value))
        for i in range(u + 1, len(blocks) - 1):
            x_next = blocks[i](x, nf, h, key_mask)
            h = layers[i](h, key_mask, x)
            x = x_next
        return self.norm(blocks[-1].cls_forward(x, nf, h, key_mask))[:, 0]

    def vtm_logits(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Video-text matching logits [B, 2] (index 1 = match) for pairs (video[i], text[i])."""
        return self.forward_fusion(video, input_ids, attention_mask, task="itm").logits

    def mlm_logits(self, video: Tensor, mlm_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Masked-token logits [B, L, V] for ``mlm_ids`` [B, L] conditioned on ``video``;
        ``attention_mask`` is the mask of the unmasked caption."""
        return self.forward_fusion(video, mlm_ids, attention_mask, task="mlm").logits


_warned_unbuilt = False


def _check_attention_impl(impl: str) -> None:
    """Validate ``impl``; ``fused`` needs the built extension, ``auto`` warns (once) without it."""
    global _warned_unbuilt
    if impl not in IMPLS:
        raise ValueError(f"attention_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference" or _extension.loaded() is not None:
        return
    if impl == "fused":
        _extension.load()  # raises ExtensionNotBuiltError saying how to build
    if not _warned_unbuilt:
        _warned_unbuilt = True
        warnings.warn(
            f"{_extension.load_error()}; the model runs the reference PyTorch attention (slower)",
            RuntimeWarning,
            stacklevel=3,
        )


def init_time_attention_zeros(attn: DividedAttention) -> None:
    """The original's ``time_init='zeros'``: qkv = 0 and proj weight = 1, bias 0, so the time
    attention adds exactly 0 and the network starts as the image ViT."""
    with torch.no_grad():
        attn.qkv.weight.zero_()
        if attn.qkv.bias is not None:
            attn.qkv.bias.zero_()
        attn.proj.weight.fill_(1.0)
        attn.proj.bias.zero_()
