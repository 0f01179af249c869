"""Embeddings folders (what ``embed --engine ray`` writes) read back without Ray: parts in any
order come back in clip-list order, errors apart, and damaged folders are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.runtime.embed_folder import FolderWriter
from egovlpv2_rt.runtime.store import (
    load_embedding_errors,
    load_embeddings,
    pyarrow_modules,
)

MODEL = {"checkpoint_sha256": "ab" * 32, "embedding_dim": 3}


def _clip(tmp_path, k):
    return {"path": str(tmp_path / "videos" / f"v{k}.mp4"), "start": float(k), "end": k + 1.0}


def _folder(tmp_path):
    """Clips 0..5: parts hold 4, 0, 2 and 5, 1 (written in that order), clip 3 failed."""
    out = tmp_path / "emb"
    w = FolderWriter(out, {"model": MODEL, "clips_sha256": "0" * 64, "clips": 6}, resume=False)
    emb = np.arange(18, dtype=np.float32).reshape(6, 3)
    for ks in ([4, 0, 2], [5, 1]):
        w.write_part(ks, [f"c{k}" for k in ks], [_clip(tmp_path, k) for k in ks], emb[ks])
    w.write_errors([3], ["c3"], [_clip(tmp_path, 3)], ["cannot decode v3.mp4"])
    assert w.finish() == (5, 1)
    return out, emb


def test_parts_come_back_in_clip_list_order_with_their_clips(tmp_path):
    out, emb = _folder(tmp_path)
    got = load_embeddings(out)
    assert got.ids == ["c0", "c1", "c2", "c4", "c5"]
    np.testing.assert_array_equal(got.embeddings, emb[[0, 1, 2, 4, 5]])
    assert [c["path"] for c in got.clips] == [_clip(tmp_path, k)["path"] for k in (0, 1, 2, 4, 5)]
    assert [c["start"] for c in got.clips] == [0.0, 1.0, 2.0, 4.0, 5.0]
    assert got.model == MODEL
    errors = load_embedding_errors(out)
    assert [(e["id"], e["position"], e["error"]) for e in errors] == [
        ("c3", 3, "cannot decode v3.mp4")
    ]


def test_a_part_without_positions_is_refused_by_name(tmp_path):
    out, _ = _folder(tmp_path)
    _, pq = pyarrow_modules()
    part = sorted(out.glob("part-*.parquet"))[0]
    table = pq.read_table(str(part))
    pq.write_table(table.drop(["position"]), str(part))
    with pytest.raises(InputError, match=rf"{part.name}.*no 'position' column"):
        load_embeddings(out)


def test_an_unfinished_folder_is_refused_naming_resume(tmp_path):
    out, _ = _folder(tmp_path)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(InputError, match="--resume"):
        load_embeddings(out)


def test_actor_call_size_holds_several_model_batches_only_when_decoding_there():
    from egovlpv2_rt.runtime.ray_engine import RayOptions

    # Decoding in the actor: one call = 4 model batches, so the runtime decodes batch k+1
    # while it encodes batch k (bench/RESULTS.md: steady overhead 13.4% -> 7.8% on 2 cores).
    assert RayOptions(batch_size=8, decode_in_actor=True).call_size == 32
    assert RayOptions(batch_size=8, decode_in_actor=True, batches_per_call=1).call_size == 8
    # Decode tasks feed the actors: one call = one decoded batch.
    assert RayOptions(batch_size=8, batches_per_call=4).call_size == 8
    with pytest.raises(InputError, match="--batches-per-call"):
        RayOptions(batches_per_call=0)
