"""EgoNCE golden parity, MLM masking statistics, VTM hard-negative sampling, loss weighting."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from egovlpv2_rt.data.mlm import mlm_mask_tokens
from egovlpv2_rt.train.losses import (
    LossWeights,
    combine_losses,
    egonce_loss,
    mlm_loss,
    object_negative_weights,
    random_negative_weights,
    sample_vtm_pairs,
    vtm_negative_weights,
    with_object_negatives,
    with_time_reversal,
)


def _err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def golden_io(golden) -> dict[str, torch.Tensor]:
    return load_file(str(golden.io))


@pytest.mark.parity
@pytest.mark.parametrize("dtype,tol", [("f64", 1e-10), ("f32", 1e-5)])
def test_egonce_matches_golden(golden, golden_io, dtype, tol):
    hparams = json.loads(golden.config.read_text())["hparams"]
    loss, pos = egonce_loss(
        golden_io[f"sim_{dtype}"],
        golden_io["egonce_mask_v"],
        golden_io["egonce_mask_n"],
        temperature=hparams["loss"]["temperature"],
    )
    assert _err(loss, golden_io[f"egonce_loss_{dtype}"]) <= tol
    assert torch.equal(pos, golden_io["egonce_mask_bool"])


def test_egonce_without_masks_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(6, 6, generator=g, dtype=torch.float64) * 2 - 1
    loss, pos = egonce_loss(sim, temperature=0.1)
    ref = torch.nn.functional.cross_entropy(
        sim / 0.1, torch.arange(6)
    ) + torch.nn.functional.cross_entropy(sim.t() / 0.1, torch.arange(6))
    assert torch.equal(pos, torch.eye(6, dtype=torch.bool))
    assert abs(loss.item() - ref.item()) <= 1e-12


def test_egonce_bad_input():
    with pytest.raises(ValueError, match="sim must be a square"):
        egonce_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask_v must be"):
        egonce_loss(torch.zeros(3, 3), torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        egonce_loss(torch.zeros(3, 3), temperature=0.0)


def _mlm_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (400, 32), generator=g)
    lengths = torch.randint(4, 33, (400,), generator=g)
    mask = (torch.arange(32)[None] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(400), lengths - 1] = 2
    ids[mask == 0] = 1
    return ids, mask


def test_mlm_masking_statistics():
    ids, mask = _mlm_batch()
    special = (0, 1, 2, 3, 4)
    gen = torch.Generator().manual_seed(7)
    masked, labels = mlm_mask_tokens(
        ids, mask, mask_token_id=4, vocab_size=100, special_token_ids=special, generator=gen
    )
    eligible = (mask == 1) & ~torch.isin(ids, torch.tensor(special))
    selected = labels != -100
    # Never a special or pad token; labels hold the original ids.
    assert not (selected & ~eligible).any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    n = int(eligible.sum())
    k = int(selected.sum())
    p = k / n
    # Binomial(n, 0.15): 5 standard deviations.
    assert abs(p - 0.15) <= 5 * (0.15 * 0.85 / n) ** 0.5
    to_mask = (masked == 4) & selected
    changed = (masked != ids) & selected & ~to_mask
    kept = (masked == ids) & selected
    for frac, target in ((to_mask.sum() / k, 0.8), (kept.sum() / k, 0.1)):
        assert abs(float(frac) - target) <= 5 * (target * (1 - target) / k) ** 0.5
    # Random replacements (plus kept ones that happened to draw their own id) make up ~10%.
    assert abs(float(changed.sum() / k) - 0.1) <= 5 * (0.09 / k) ** 0.5
    assert not torch.isin(masked[changed], torch.tensor(special)).any()


def test_mlm_masking_is_seeded():
    ids, mask = _mlm_batch()
    kw = {"mask_token_id": 4, "vocab_size": 100, "special_token_ids": (0, 1, 2, 3, 4)}
    a = mlm_mask_tokens(ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    b = mlm_mask_tokens(ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    c = mlm_mask_tokens(ids, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mlm_loss_ignores_unselected():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    ref = -(torch.log_softmax(logits[0, 1], -1)[4] + torch.log_softmax(logits[1, 3], -1)[7]) / 2
    assert abs(mlm_loss(logits, labels).item() - ref.item()) <= 1e-6
    assert abs(mlm_loss(logits, labels, "sum").item() - 2 * ref.item()) <= 1e-6
    with pytest.raises(ValueError, match="logits"):
        mlm_loss(logits[0], labels)


def _sim_and_pos(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(n, n, generator=g, dtype=torch.float64) * 0.6 - 0.3
    pos = torch.rand(n, n, generator=g) < 0.25
    pos |= torch.eye(n, dtype=torch.bool)
    return sim, pos


def test_vtm_sampler_never_samples_a_positive():
    sim, pos = _sim_and_pos(12, 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        pairs = sample_vtm_pairs(sim, pos, 0.05, gen)
        assert int(pairs.labels.sum()) >= 6
        neg = pairs.labels == 0
        assert not pos[pairs.text_index[neg], pairs.video_index[neg]].any()
        posi = pairs.labels == 1
        assert torch.equal(pairs.text_index[posi], pairs.video_index[posi])
        # every negative keeps one side of its slot
        slots = torch.arange(12)[neg]
        assert ((pairs.text_index[neg] == slots) | (pairs.video_index[neg] == slots)).all()


def test_vtm_sampler_follows_the_softmax_weights():
    n, temp = 6, 0.05
    sim, pos = _sim_and_pos(n, 1)
    w_v, w_t = vtm_negative_weights(sim, pos, temp)
    gen = torch.Generator().manual_seed(123)
    counts_v = torch.zeros(n, n)
    counts_t = torch.zeros(n, n)
    for _ in range(4000):
        pr = sample_vtm_pairs(sim, pos, temp, gen)
        for i in torch.where(pr.labels == 0)[0].tolist():
            if pr.text_index[i] == i and pr.video_index[i] != i:
                counts_v[i, pr.video_index[i]] += 1
            elif pr.video_index[i] == i:
                counts_t[i, pr.text_index[i]] += 1
    for counts, w in ((counts_v, w_v), (counts_t, w_t)):
        for i in range(n):
            total = counts[i].sum()
            assert total > 500
            expected = w[i] / w[i].sum()
            freq = counts[i] / total
            sd = (expected * (1 - expected) / total).sqrt()
            assert (freq - expected).abs().le(5 * sd + 1e-12).all(), (i, freq, expected)
            assert (counts[i][pos[i] if w is w_v else pos[:, i]] == 0).all()


def test_vtm_sampler_rows_without_negatives_become_matches():
    sim = torch.zeros(4, 4, dtype=torch.float64)
    pos = torch.ones(4, 4, dtype=torch.bool)
    pairs = sample_vtm_pairs(sim, pos, 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(pairs.labels, torch.ones(4, dtype=torch.long))
    assert torch.equal(pairs.video_index, torch.arange(4))


def test_vtm_sampler_is_seeded():
    sim, pos = _sim_and_pos(10, 3)
    a = sample_vtm_pairs(sim, pos, 0.05, torch.Generator().manual_seed(9))
    b = sample_vtm_pairs(sim, pos, 0.05, torch.Generator().manual_seed(9))
    assert torch.equal(a.video_index, b.video_index) and torch.equal(a.labels, b.labels)


def test_loss_weights():
    e, m, v = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    assert combine_losses(LossWeights.original(), e, m, v).item() == 1 + 2 + 6
    w = LossWeights.paper(0.25, 0.5)
    assert combine_losses(w, e, m, v).item() == pytest.approx(0.25 * 1 + 0.25 * 2 + 0.5 * 3)
    assert combine_losses(LossWeights.paper(0.0, 0.0), e, None, None).item() == 1.0
    with pytest.raises(ValueError, match="gamma"):
        LossWeights.paper(0.7, 0.5)
    with pytest.raises(ValueError, match="'mlm' has weight"):
        combine_losses(LossWeights.original(), e, None, v)


def test_random_negatives_never_positive_and_uniform():
    n = 6
    sim, pos = _sim_and_pos(n, 1)
    w_v, w_t = random_negative_weights(pos, n)
    assert torch.equal(w_v, (~pos).double()) and torch.equal(w_t, (~pos.t()).double())
    gen = torch.Generator().manual_seed(7)
    counts_v, counts_t = torch.zeros(n, n), torch.zeros(n, n)
    for _ in range(4000):
        pr = sample_vtm_pairs(sim, pos, 0.05, gen, negatives="random")
        neg = pr.labels == 0
        assert not pos[pr.text_index[neg], pr.video_index[neg]].any()  # never a positive
        for i in torch.where(neg)[0].tolist():
            if pr.text_index[i] == i and pr.video_index[i] != i:
                counts_v[i, pr.video_index[i]] += 1
            elif pr.video_index[i] == i:
                counts_t[i, pr.text_index[i]] += 1
    # Uniform over the non-positives of each row (the similarity plays no part), within 5 sd.
    for counts, allowed in ((counts_v, ~pos), (counts_t, ~pos.t())):
        for i in range(n):
            k = int(allowed[i].sum())
            total = counts[i].sum()
            assert total > 500 and (counts[i][~allowed[i]] == 0).all()
            freq = counts[i][allowed[i]] / total
            sd = ((1 / k) * (1 - 1 / k) / total) ** 0.5
            assert (freq - 1 / k).abs().le(5 * sd).all(), (i, freq)
    with pytest.raises(ValueError, match="negatives must be 'hard' or 'random'"):
        sample_vtm_pairs(sim, pos, 0.05, gen, negatives="easy")


def test_objective_switches_set_weights_and_positives():
    from egovlpv2_rt.train.config import LossSection

    full = LossSection()
    assert full.weights() == LossWeights.original()
    assert full.verb_positives and full.noun_positives
    assert LossSection(contrastive="off").weights() == LossWeights(0.0, 1.0, 2.0)
    info = LossSection(contrastive="infonce")
    assert info.weights() == LossWeights.original()
    assert not info.verb_positives and not info.noun_positives
    assert LossSection(masked_lm=False).weights() == LossWeights(1.0, 0.0, 2.0)
    assert LossSection(vtm_negatives="off").weights() == LossWeights(1.0, 1.0, 0.0)
    assert LossSection(vtm_negatives="random").weights() == LossWeights.original()
    row = LossSection(preset="paper", masked_lm=False, vtm_negatives="off")
    assert row.weights() == LossWeights(0.25, 0.0, 0.0)  # EgoNCE alone, the paper's scale


def test_time_reversal_negative_is_one_more_text_to_video_negative():
    # Hand-built: row i of the text -> video softmax gains column "text i vs its reversed clip"
    # (never a positive); the video -> text term is the plain EgoNCE one.
    gen = torch.Generator().manual_seed(3)
    n, t = 6, 0.05
    sim = torch.rand(n, n, generator=gen, dtype=torch.float64) * 2 - 1
    rev = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    mask_v = (torch.rand(n, n, generator=gen) > 0.6).double()
    mask_n = (torch.rand(n, n, generator=gen) > 0.4).double()
    got, pos = egonce_loss(sim, mask_v, mask_n, t, reversed_sim=rev)
    plain, _ = egonce_loss(sim, mask_v, mask_n, t)
    ext = torch.cat([sim, rev[:, None]], 1) / t
    ext_pos = torch.cat([pos, torch.zeros(n, 1, dtype=torch.bool)], 1)
    p_t2v = (torch.softmax(ext, 1) * ext_pos).sum(1)
    p_v2t = (torch.softmax(sim.t() / t, 1) * pos).sum(1)  # the original: same mask
    want = -p_t2v.log().mean() - p_v2t.log().mean()
    assert abs(got.item() - want.item()) <= 1e-12 * abs(want.item())
    assert got.item() > plain.item()
    # A reversed clip far from its caption costs nothing: the plain loss.
    far, _ = egonce_loss(sim, mask_v, mask_n, t, reversed_sim=torch.full((n,), -1e4).double())
    assert abs(far.item() - plain.item()) <= 1e-12 * abs(plain.item())
    with pytest.raises(ValueError, match=r"reversed_sim must be \[6\]"):
        egonce_loss(sim, mask_v, mask_n, t, reversed_sim=rev[:5])


def test_time_reversal_pairs_replace_half_the_negatives_only():
    sim, pos = _sim_and_pos(12, 0)
    gen = torch.Generator().manual_seed(0)
    n_neg = n_rev = 0
    for _ in range(400):
        pairs = sample_vtm_pairs(sim, pos, 0.05, gen)
        out = with_time_reversal(pairs, gen)
        assert out.reversed is not None
        assert torch.equal(out.labels, pairs.labels) and torch.equal(
            out.text_index, pairs.text_index
        )
        keep = ~out.reversed
        assert torch.equal(out.video_index[keep], pairs.video_index[keep])
        assert not (out.reversed & (out.labels == 1)).any()  # matches are never reversed
        # a reversed negative shows its own caption's clip, backwards
        assert torch.equal(out.video_index[out.reversed], out.text_index[out.reversed])
        n_neg += int((pairs.labels == 0).sum())
        n_rev += int(out.reversed.sum())
    frac = n_rev / n_neg
    sd = (0.25 / n_neg) ** 0.5
    assert abs(frac - 0.5) <= 5 * sd, frac
    sliced = out.slice(3, 9)
    assert sliced.reversed is not None and torch.equal(sliced.reversed, out.reversed[3:9])


def test_time_reversal_share_sets_the_reversed_fraction():
    sim, pos = _sim_and_pos(12, 1)
    for share in (0.75, 0.2):
        gen = torch.Generator().manual_seed(1)
        n_neg = n_rev = 0
        for _ in range(400):
            pairs = sample_vtm_pairs(sim, pos, 0.05, gen)
            out = with_time_reversal(pairs, gen, share=share)
            assert out.reversed is not None
            n_neg += int((pairs.labels == 0).sum())
            n_rev += int(out.reversed.sum())
        sd = (share * (1 - share) / n_neg) ** 0.5
        assert abs(n_rev / n_neg - share) <= 5 * sd, (share, n_rev / n_neg)
    # 0.5 is the default's draw, draw for draw (the shipped recipe's pairs do not move).
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    pa, pb = sample_vtm_pairs(sim, pos, 0.05, a), sample_vtm_pairs(sim, pos, 0.05, b)
    ra, rb = with_time_reversal(pa, a), with_time_reversal(pb, b, share=0.5)
    assert ra.reversed is not None and rb.reversed is not None
    assert torch.equal(ra.reversed, rb.reversed) and torch.equal(ra.video_index, rb.video_index)
    assert torch.equal(a.get_state(), b.get_state())
    none = with_time_reversal(pa, a, share=0.0)
    assert none.reversed is not None and not none.reversed.any()
    every = with_time_reversal(pa, a, share=1.0)
    assert every.reversed is not None and torch.equal(every.reversed, pa.labels == 0)
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\], got -0.5"):
        with_time_reversal(pa, a, share=-0.5)


def _tag_masks(verbs: list[int], nouns: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    v, n = torch.tensor(verbs), torch.tensor(nouns)
    return (v[:, None] == v[None]).double(), (n[:, None] == n[None]).double()


def test_object_negative_weights_by_hand():
    # Clips 0..4: (verb, noun) = (0, 0), (0, 1), (1, 0), (0, 0), (0, 2). Caption 0's object
    # negatives are the clips with verb 0 and another noun: 1 and 4, weighted by
    # exp(sim / T) and normalised over the whole row (as the plain hard-negative weights).
    mask_v, mask_n = _tag_masks([0, 0, 1, 0, 0], [0, 1, 0, 0, 2])
    g = torch.Generator().manual_seed(2)
    sim = torch.rand(5, 5, generator=g, dtype=torch.float64) - 0.5
    t = 0.05
    w_v, w_t = object_negative_weights(sim, mask_v, mask_n, t)
    row = torch.exp(sim[0] / t)
    want = torch.zeros(5, dtype=torch.float64)
    want[[1, 4]] = row[[1, 4]] / row.sum()
    assert torch.allclose(w_v[0], want, rtol=1e-12, atol=0)
    col = torch.exp(sim[:, 2] / t)  # video 2 (verb 1): no caption shares its verb
    assert w_t[2].sum().item() == 0.0
    col = torch.exp(sim[:, 3] / t)  # video 3 = (0, 0): captions 1 and 4
    want = torch.zeros(5, dtype=torch.float64)
    want[[1, 4]] = col[[1, 4]] / col.sum()
    assert torch.allclose(w_t[3], want, rtol=1e-12, atol=0)
    # A clip without a noun tag still never is its own object negative.
    mask_n[1, 1] = 0.0
    w_v, _ = object_negative_weights(sim, mask_v, mask_n, t)
    assert w_v[1, 1].item() == 0.0


def test_object_negatives_redraw_a_share_of_the_other_negatives():
    n = 16
    gen = torch.Generator().manual_seed(4)
    verbs = torch.randint(0, 3, (n,), generator=gen).tolist()
    nouns = torch.randint(0, 4, (n,), generator=gen).tolist()
    mask_v, mask_n = _tag_masks(verbs, nouns)
    sim = torch.rand(n, n, generator=gen, dtype=torch.float64) * 0.6 - 0.3
    pos = (mask_v * mask_n + torch.eye(n, dtype=torch.float64)) > 0
    w_v, w_t = object_negative_weights(sim, mask_v, mask_n, 0.05)
    has_any = (w_v.sum(1) > 0) | (w_t.sum(1) > 0)
    for share in (1.0, 0.5):
        eligible = objects = 0
        expect = 0.0
        for _ in range(300):
            pairs = with_time_reversal(sample_vtm_pairs(sim, pos, 0.05, gen), gen)
            out = with_object_negatives(pairs, sim, mask_v, mask_n, share, 0.05, gen)
            assert out.reversed is not None and pairs.reversed is not None
            assert torch.equal(out.labels, pairs.labels)
            assert torch.equal(out.reversed, pairs.reversed)
            fixed = (pairs.labels == 1) | pairs.reversed
            assert torch.equal(out.video_index[fixed], pairs.video_index[fixed])
            assert torch.equal(out.text_index[fixed], pairs.text_index[fixed])
            slot = torch.arange(n)
            # every slot but a time reversal keeps its own caption or its own video
            own = (out.text_index == slot) | (out.video_index == slot)
            assert own[~out.reversed].all()
            neg = (out.labels == 0) & ~out.reversed
            assert not pos[out.text_index[neg], out.video_index[neg]].any()
            changed = neg & (
                (out.video_index != pairs.video_index) | (out.text_index != pairs.text_index)
            )
            obj = (mask_v > 0) & (mask_n == 0)
            is_obj = obj[out.text_index, out.video_index]
            if share == 1.0:  # every slot that has an object negative got one
                assert is_obj[neg & has_any].all()
                assert torch.equal(
                    out.video_index[neg & ~has_any], pairs.video_index[neg & ~has_any]
                )
            assert is_obj[changed].all()
            # A slot that is an object negative afterwards: redrawn (chance `share`) or
            # drawn as one by the similarity sampler already.
            el = neg & has_any
            was = obj[pairs.text_index, pairs.video_index]
            eligible += int(el.sum())
            objects += int((el & is_obj).sum())
            expect += float((share + (1 - share) * was[el].double()).sum())
        sd = (0.25 * eligible) ** 0.5
        assert abs(objects - expect) <= 5 * sd, (share, objects, expect)
    unchanged = with_object_negatives(pairs, sim, mask_v, mask_n, 0.0, 0.05, gen)
    assert torch.equal(unchanged.video_index, pairs.video_index)
    assert torch.equal(unchanged.text_index, pairs.text_index)
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\], got 1.5"):
        with_object_negatives(pairs, sim, mask_v, mask_n, 1.5, 0.05, gen)
