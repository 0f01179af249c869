"""Train a small RoBERTa-style byte-level BPE tokenizer on captions (``tokenizers`` library)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from ..files import atomic_write_with
from ..tokenizer import roberta_processing

__all__ = ["SPECIAL_TOKENS", "train_bpe_tokenizer"]

# RoBERTa's order, so that <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4 as in roberta-base.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> Path:
    """Train byte-level BPE on ``texts`` and write ``tokenizer.json`` to ``out_path``.

    The vocabulary holds the 5 special tokens, the 256 byte symbols and the learnt merges, at
    most ``vocab_size`` entries. The pipeline is RoBERTa's: byte-level pre-tokenizer (no prefix
    space), ``<s> ... </s>`` post-processing, byte-level decoder.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(
            f"vocab_size must be >= {len(SPECIAL_TOKENS) + len(alphabet)} "
            f"(specials + 256 bytes), got {vocab_size}"
        )
    tok = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = roberta_processing(tok, "<s>", "</s>", "the trained vocabulary")
    return atomic_write_with(out_path, lambda tmp: tok.save(str(tmp)))
