"""The shipped default model: files, size, architecture, and EgoMCQ accuracy on held-out
synthetic data regenerated here: the recipe's development set (seed 2, what results.json
records) and five fresh sets that no choice was made on (the targets are asserted there)."""

from __future__ import annotations

import json
import statistics

import pytest

from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.data.egomcq import read_egomcq
from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset
from egovlpv2_rt.denormals import flushing_denormals
from egovlpv2_rt.eval.egomcq import evaluate_egomcq
from egovlpv2_rt.tokenizer import RobertaTokenizer
from egovlpv2_rt.train.default_model import (
    DEFAULT_DIR,
    EVAL_CLIPS,
    EVAL_QUESTIONS,
    EVAL_SEED,
    IMAGE_SIZE,
    MAX_TEXT_LENGTH,
    SCENE_SEED,
    TRAIN_SEED,
)


@pytest.fixture(scope="module")
def shipped():
    weights = DEFAULT_DIR / "model.safetensors"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (DEFAULT_DIR / name).is_file():
            pytest.fail(
                f"the default model file {DEFAULT_DIR / name} is missing; build it with "
                "python -m egovlpv2_rt.train.default_model"
            )
    with flushing_denormals():
        yield (
            load_model(weights),
            RobertaTokenizer.from_tokenizer_json(
                DEFAULT_DIR / "tokenizer.json", max_length=MAX_TEXT_LENGTH
            ),
        )


def test_default_model_files_and_architecture(shipped):
    model, tok = shipped
    assert (DEFAULT_DIR / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    cfg = model.config
    assert cfg.to_dict() == json.loads((DEFAULT_DIR / "config.json").read_text())
    assert cfg.video.depth == cfg.text.num_hidden_layers == 12
    assert cfg.fusion.num_fuse_block == 6
    assert cfg.video.img_size == IMAGE_SIZE
    assert tok.vocab_size == cfg.text.vocab_size
    assert tok.mask_token_id is not None


@pytest.fixture(scope="module")
def heldout(shipped, tmp_path_factory):
    """EgoMCQ accuracy of the shipped model on the held-out split, regenerated here with the
    build's seed and sizes (videos the model never saw)."""
    model, tok = shipped
    root = tmp_path_factory.mktemp("heldout")
    generate_dataset(
        root, EVAL_SEED, SynthConfig(num_clips=EVAL_CLIPS, size=IMAGE_SIZE, num_mcq=EVAL_QUESTIONS)
    )
    items = read_egomcq(root / "egomcq.json")
    return evaluate_egomcq(
        model, items, root / "videos", tok, max_length=MAX_TEXT_LENGTH, batch_size=8
    ).accuracy


def test_default_model_scores_what_its_results_json_says(heldout):
    recorded = json.loads((DEFAULT_DIR / "results.json").read_text())["egomcq_heldout"]
    for mode in ("dual", "fusion", "ensemble"):
        for kind in ("inter", "intra"):
            assert heldout[mode][f"{kind}_count"] == EVAL_QUESTIONS // 2
            # One question of 100 either way: summation order may differ from the build's.
            assert abs(heldout[mode][kind] - recorded[mode][kind]) <= 1.0, (mode, kind)
    # Far above chance (20%) in every mode.
    assert min(heldout[m][k] for m in heldout for k in ("inter", "intra")) >= 55.0, heldout


# Fresh held-out seeds, generated here: never the training seeds (1, 3) or the recipe's
# development seed (2), never used for a choice. The README's five-seed table is these seeds.
FRESH_SEEDS = (11, 12, 13, 14, 15)


@pytest.fixture(scope="module")
def fresh(shipped, tmp_path_factory):
    """EgoMCQ accuracy of the shipped model on five fresh held-out sets (400 clips in 50
    videos each, 100 inter + 100 intra questions), per seed."""
    assert not {TRAIN_SEED, EVAL_SEED, SCENE_SEED} & set(FRESH_SEEDS)
    model, tok = shipped
    out = {}
    for seed in FRESH_SEEDS:
        root = tmp_path_factory.mktemp(f"fresh{seed}")
        generate_dataset(
            root, seed, SynthConfig(num_clips=EVAL_CLIPS, size=IMAGE_SIZE, num_mcq=EVAL_QUESTIONS)
        )
        out[seed] = evaluate_egomcq(
            model, read_egomcq(root / "egomcq.json"), root / "videos", tok,
            max_length=MAX_TEXT_LENGTH, batch_size=8,
        ).accuracy  # fmt: skip
    return out


def _mean(fresh: dict, mode: str, kind: str) -> float:
    return statistics.fmean(acc[mode][kind] for acc in fresh.values())


# Issue 18's targets, on the mean of the five fresh seeds: ensemble inter >= 90 and intra >= 60,
# the ensemble at least as good as dual on intra; and a recipe that trains within 60 minutes
# on the 2-core CPU (its measured time is in results.json).
def test_default_model_meets_the_egomcq_targets_on_five_fresh_seeds(fresh):
    assert _mean(fresh, "ensemble", "inter") >= 90.0, fresh
    assert _mean(fresh, "ensemble", "intra") >= 60.0, fresh
    assert _mean(fresh, "ensemble", "intra") >= _mean(fresh, "dual", "intra"), fresh
    recorded = json.loads((DEFAULT_DIR / "results.json").read_text())
    assert recorded["seconds"]["train"] < 60 * 60, recorded["seconds"]
