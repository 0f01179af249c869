"""Masked-language-model inputs: which caption tokens are masked, and what replaces them."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mlm_mask_tokens"]


def mlm_mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_token_ids: tuple[int, ...] | list[int],
    generator: torch.Generator | None = None,
    mlm_probability: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """RoBERTa/BERT masking, as ``DataCollatorForLanguageModeling`` (the original's collator).

    Each real, non-special token is selected with probability ``mlm_probability``; a selected
    token becomes the mask id with probability 0.8, a random regular token with 0.1, and stays
    unchanged with 0.1. Special and padding tokens are never selected.

    Args:
        input_ids: ``[B, L]`` int64 token ids.
        attention_mask: ``[B, L]`` 0/1, 1 on real tokens.
        mask_token_id: id of ``<mask>``.
        vocab_size: size of the vocabulary (random replacements are drawn below it).
        special_token_ids: ids never selected and never drawn as random replacements.
        generator: torch generator for reproducible masking (CPU).
        mlm_probability: selection probability.

    Returns:
        ``(masked_ids, labels)``: ``[B, L]`` int64 each; labels hold the original id at selected
        positions and -100 elsewhere.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match "
            f"input_ids shape {tuple(input_ids.shape)}"
        )
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    special = torch.tensor(sorted({int(s) for s in special_token_ids}), dtype=torch.long)
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} outside the vocabulary [0, {vocab_size})")
    ids = input_ids.detach().cpu().long()
    real = attention_mask.detach().cpu().bool() & ~torch.isin(ids, special)
    # Draw every random number for the whole [B, L] grid so that a token's fate depends only on
    # the generator state and its position, never on how many tokens happen to be eligible.
    u_select = torch.rand(ids.shape, generator=generator)
    u_kind = torch.rand(ids.shape, generator=generator)
    regular = torch.ones(vocab_size, dtype=torch.bool)
    regular[special[(special >= 0) & (special < vocab_size)]] = False
    regular_ids = regular.nonzero().squeeze(1)
    if regular_ids.numel() == 0:
        raise ValueError("every vocabulary id is special; no random replacement possible")
    rand_pick = torch.randint(regular_ids.numel(), ids.shape, generator=generator)
    selected = real & (u_select < mlm_probability)
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    masked = ids.clone()
    to_mask = selected & (u_kind < 0.8)
    to_random = selected & (u_kind >= 0.8) & (u_kind < 0.9)
    masked[to_mask] = mask_token_id
    masked[to_random] = regular_ids[rand_pick[to_random]]
    return masked.to(input_ids.device), labels.to(input_ids.device)
