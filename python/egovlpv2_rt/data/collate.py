"""Text side of a training batch: captions, EgoNCE masks and MLM masking for a global batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .egoclip import ClipRecord
from .masks import egonce_masks, multi_hot
from .mlm import mlm_mask_tokens

__all__ = ["TextBatch", "collate_text"]


@dataclass
class TextBatch:
    """``[N, L]`` int64 ``input_ids``, ``attention_mask``, ``mlm_ids``, ``mlm_labels``;
    ``[N, N]`` float32 ``mask_v``, ``mask_n`` (None when that tag is not used)."""

    input_ids: Tensor
    attention_mask: Tensor
    mlm_ids: Tensor
    mlm_labels: Tensor
    mask_v: Tensor | None
    mask_n: Tensor | None


def collate_text(
    records: Sequence[ClipRecord],
    tokenizer,
    *,
    max_length: int,
    generator: torch.Generator,
    num_verbs: int,
    num_nouns: int,
    use_verb: bool = True,
    use_noun: bool = True,
    mlm_probability: float = 0.15,
) -> TextBatch:
    """Tokenize captions (padded to ``max_length``), mask them for MLM and build the EgoNCE
    masks from the verb / noun tags.

    Args:
        records: the clips of the (global) batch, in batch order.
        tokenizer: an ``egovlpv2_rt.tokenizer.RobertaTokenizer``.
        max_length: caption length L.
        generator: drives the MLM masking.
        num_verbs, num_nouns: taxonomy sizes (multi-hot widths).
    """
    tok = tokenizer(
        [r.clip_text for r in records], max_length=max_length, padding="max_length", truncation=True
    )
    special = [
        t
        for t in (
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.unk_token_id,
            tokenizer.mask_token_id,
        )
        if t is not None
    ]
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no <mask> token; MLM needs one")
    mlm_ids, labels = mlm_mask_tokens(
        tok["input_ids"],
        tok["attention_mask"],
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=tokenizer.vocab_size,
        special_token_ids=special,
        generator=generator,
        mlm_probability=mlm_probability,
    )
    mask_v, mask_n = egonce_masks(
        multi_hot([r.tag_verb for r in records], num_verbs),
        multi_hot([r.tag_noun for r in records], num_nouns),
    )
    return TextBatch(
        tok["input_ids"],
        tok["attention_mask"],
        mlm_ids,
        labels,
        mask_v if use_verb else None,
        mask_n if use_noun else None,
    )
