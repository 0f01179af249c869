"""RoBERTa byte-level BPE tokenizer built from local files (a tiny BPE trained on the fly)."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer

from egovlpv2_rt.tokenizer import RobertaTokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
CORPUS = [
    "#C C picks up the knife from the table",
    "#C C cuts the onion on the chopping board",
    "#C C opens the fridge and takes out a bottle of milk",
    "#O a man walks towards the door while holding a phone",
    "#C C washes the plate in the sink with soap",
    "#C C stirs the soup in the pot with a wooden spoon",
] * 5

CAPTIONS = [
    "#C C picks up the knife",
    "#C C opens the fridge and takes out a bottle of milk from the door shelf",
    "Unseen wörds: café, 🍳 and <mask> token",
]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIALS)
    bpe.save_model(str(directory))
    return directory


@pytest.fixture(scope="module")
def tokenizer(bpe_dir):
    return RobertaTokenizer.from_files(bpe_dir / "vocab.json", bpe_dir / "merges.txt")


def test_special_token_ids_follow_roberta(tokenizer):
    assert (
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.mask_token_id,
    ) == (0, 1, 2, 4)


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [8, 24])
def test_matches_transformers_roberta_tokenizer(bpe_dir, tokenizer, padding, max_length):
    transformers = pytest.importorskip("transformers")
    # A local directory holding vocab.json + merges.txt: no download.
    ref_tok = transformers.RobertaTokenizer.from_pretrained(str(bpe_dir))
    ref = ref_tok(
        CAPTIONS, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
    )
    ours = tokenizer(CAPTIONS, padding=padding, max_length=max_length)
    assert ours["input_ids"].dtype == torch.int64 and ours["attention_mask"].dtype == torch.int64
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["attention_mask"], ref["attention_mask"])


def test_layout_and_truncation(tokenizer):
    out = tokenizer(CAPTIONS, max_length=10)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (3, 10)
    assert torch.all(ids[:, 0] == 0)
    lengths = mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert ids[row, n - 1].item() == 2  # </s> kept when truncating
        assert torch.all(ids[row, n:] == 1) and torch.all(mask[row, n:] == 0)
    assert lengths[1].item() == 10  # the long caption was cut
    assert tokenizer.decode(ids[0]) == CAPTIONS[0]


def test_mask_token_is_one_id(tokenizer):
    ids = tokenizer("C cuts the <mask> on the board")["input_ids"][0].tolist()
    assert ids.count(tokenizer.mask_token_id) == 1


def test_tokenizer_json_gives_the_same_ids(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tokenizer.json")
    again = RobertaTokenizer.from_directory(tmp_path)
    a, b = tokenizer(CAPTIONS), again(CAPTIONS)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])


def test_directory_with_vocab_and_merges(bpe_dir, tokenizer):
    again = RobertaTokenizer.from_directory(bpe_dir, max_length=6)
    assert again(CAPTIONS[1])["input_ids"].shape == (1, 6)
    assert torch.equal(
        again(CAPTIONS[0], max_length=40)["input_ids"], tokenizer(CAPTIONS[0])["input_ids"]
    )


def test_bad_input_is_named(tokenizer, tmp_path):
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got int"):
        tokenizer(["fine", 3])
    with pytest.raises(ValueError, match="non-empty"):
        tokenizer([])
    with pytest.raises(ValueError, match=r"texts\[1\] has \d+ tokens, more than max_length 5"):
        tokenizer(CAPTIONS[:2], max_length=5, truncation=False)
    with pytest.raises(FileNotFoundError, match="vocab_file"):
        RobertaTokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(FileNotFoundError, match=re.escape("neither tokenizer.json")):
        RobertaTokenizer.from_directory(tmp_path)
