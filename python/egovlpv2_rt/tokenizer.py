"""RoBERTa byte-level BPE tokenizer from local files (the ``tokenizers`` library).

Builds the same pipeline as ``transformers``' RoBERTa tokenizer: byte-level pre-tokenizer
without a prefix space, BPE, ``<s> ... </s>`` post-processing, ``<mask>`` matched with a left
strip. Returns padded ``input_ids`` / ``attention_mask`` tensors ready for the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.processors import RobertaProcessing
from torch import Tensor

from .errors import InputError
from .files import atomic_write_with

__all__ = ["RobertaTokenizer"]

PathLike = str | os.PathLike


def roberta_processing(tok: Tokenizer, bos: str, eos: str, where: str) -> RobertaProcessing:
    """RoBERTa's ``<s> ... </s>`` post-processor for ``tok``; ``ValueError`` (naming ``where``)
    if its vocabulary lacks ``bos`` or ``eos``."""
    ids = {}
    for token in (bos, eos):
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise InputError(f"{where}: no special token {token!r}")
        ids[token] = token_id
    return RobertaProcessing(
        (eos, ids[eos]), (bos, ids[bos]), trim_offsets=True, add_prefix_space=False
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _check_unicode(text: str, what: str) -> None:
    """``text`` must encode as UTF-8: a lone surrogate (what ``surrogateescape`` makes of bytes
    that are not UTF-8, e.g. in ``sys.argv``) would otherwise fail deep in ``tokenizers``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{what}: not valid Unicode text ({exc.object[exc.start]!a} at position "
            f"{exc.start}: bytes that were not UTF-8?)"
        ) from None


class RobertaTokenizer:
    """Byte-level BPE tokenizer with RoBERTa's special tokens.

    ``tokenizer(["a caption", ...])`` -> ``{"input_ids": [B, L] int64, "attention_mask":
    [B, L] int64}``: ``<s>`` ids ``</s>`` then ``<pad>``; captions longer than ``max_length``
    are truncated (the special tokens are kept).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int = 512,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        mask_token: str = "<mask>",
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                f"tokenizer: expected tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise InputError(
                f"max_length must be an int >= 2 (room for <s> and </s>), got {max_length!r}"
            )
        self._tok = tokenizer
        self.max_length = max_length
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.unk_token, self.mask_token = unk_token, mask_token
        ids = {}
        for token in (bos_token, eos_token, pad_token):
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise InputError(f"the vocabulary has no special token {token!r}")
            ids[token] = token_id
        self.bos_token_id, self.eos_token_id = ids[bos_token], ids[eos_token]
        self.pad_token_id = ids[pad_token]
        self.mask_token_id = tokenizer.token_to_id(mask_token)
        self.unk_token_id = tokenizer.token_to_id(unk_token)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_files(
        cls, vocab_file: PathLike, merges_file: PathLike, **kwargs: Any
    ) -> RobertaTokenizer:
        """From ``vocab.json`` and ``merges.txt`` (the roberta-base files)."""
        for name, path in (("vocab_file", vocab_file), ("merges_file", merges_file)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{name}: no such file {path}")
        specials = {
            k: kwargs.get(k, d)
            for k, d in (
                ("bos_token", "<s>"),
                ("eos_token", "</s>"),
                ("pad_token", "<pad>"),
                ("unk_token", "<unk>"),
                ("mask_token", "<mask>"),
            )
        }
        try:
            model = BPE.from_file(
                os.fspath(vocab_file),
                os.fspath(merges_file),
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        except Exception as exc:  # noqa: BLE001 - `tokenizers` raises a bare Exception
            raise InputError(
                f"{vocab_file}, {merges_file}: not a valid vocab.json + merges.txt pair "
                f"({_first_line(exc)})"
            ) from None
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = roberta_processing(
            tok, specials["bos_token"], specials["eos_token"], str(vocab_file)
        )
        added = [
            AddedToken(specials[k], special=True)
            for k in ("bos_token", "pad_token", "eos_token", "unk_token")
            if tok.token_to_id(specials[k]) is not None
        ]
        if tok.token_to_id(specials["mask_token"]) is not None:
            added.append(AddedToken(specials["mask_token"], lstrip=True, special=True))
        tok.add_special_tokens(added)
        try:
            return cls(tok, **kwargs)
        except ValueError as exc:
            raise InputError(f"{vocab_file}: {exc}") from None

    @classmethod
    def from_tokenizer_json(cls, path: PathLike, **kwargs: Any) -> RobertaTokenizer:
        """From a ``tokenizer.json`` (its own pre-tokenizer and post-processor are used)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer.json: no such file {path}")
        try:
            tok = Tokenizer.from_file(os.fspath(path))
        except Exception as exc:  # noqa: BLE001 - `tokenizers` raises a bare Exception
            raise InputError(
                f"{path}: not a valid tokenizer.json ({_first_line(exc)}); expected the file "
                "a `tokenizers` Tokenizer saves (as `egovlpv2_rt.train.bpe` writes it)"
            ) from None
        tok.no_padding()
        tok.no_truncation()
        try:
            return cls(tok, **kwargs)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None

    @classmethod
    def from_directory(cls, directory: PathLike, **kwargs: Any) -> RobertaTokenizer:
        """``tokenizer.json`` if the directory has one, else ``vocab.json`` + ``merges.txt``."""
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(directory / "tokenizer.json", **kwargs)
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return cls.from_files(directory / "vocab.json", directory / "merges.txt", **kwargs)
        raise FileNotFoundError(f"{directory}: neither tokenizer.json nor vocab.json + merges.txt")

    # -- use -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        padding: Literal["longest", "max_length"] = "longest",
        truncation: bool = True,
    ) -> dict[str, Tensor]:
        """Tokenize captions. texts: one string or a sequence of strings.

        Returns ``input_ids`` and ``attention_mask``, both [B, L] int64, where L is the longest
        encoded caption (``padding="longest"``) or ``max_length`` (``"max_length"``).
        Without ``truncation`` a caption longer than ``max_length`` raises ``ValueError``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not texts:
            raise InputError("texts: expected a non-empty string or sequence of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(text).__name__}")
            _check_unicode(text, f"texts[{i}]")
        if padding not in ("longest", "max_length"):
            raise InputError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        limit = self.max_length if max_length is None else max_length
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 2:
            raise InputError(
                f"max_length must be an int >= 2 (room for <s> and </s>), got {limit!r}"
            )
        tok = self._tok
        if truncation:
            tok.enable_truncation(limit)
        else:
            tok.no_truncation()
        try:
            encodings = tok.encode_batch(list(texts))
        finally:
            tok.no_truncation()
        lengths = [len(e.ids) for e in encodings]
        if max(lengths) > limit:
            worst = max(range(len(lengths)), key=lengths.__getitem__)
            raise InputError(
                f"texts[{worst}] has {lengths[worst]} tokens, more than max_length "
                f"{limit}; pass truncation=True"
            )
        width = limit if padding == "max_length" else max(lengths)
        input_ids = torch.full((len(texts), width), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(texts), width), dtype=torch.int64)
        for row, enc in enumerate(encodings):
            input_ids[row, : len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.int64)
            attention_mask[row, : len(enc.ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = True) -> str:
        """Token ids [L] -> text."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: PathLike) -> None:
        """Write the pipeline as one ``tokenizer.json`` (atomically)."""
        atomic_write_with(path, lambda tmp: self._tok.save(os.fspath(tmp)))
