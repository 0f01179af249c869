"""``embed --engine ray`` on a real local Ray cluster (issue 22): the same embeddings as the
single-process ``embed``, a killed worker retried, a stopped driver resumed, ``search`` on the
output folder. The cluster (a head with 2 CPUs on the loopback address) starts once per module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _tiny_assets import synthetic_clips, tiny_model_dir

from egovlpv2_rt import cli
from egovlpv2_rt.runtime.store import load_embedding_errors, load_embeddings

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> str:
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def clip_list(tmp_path_factory) -> Path:
    """40 one-second clips of 5 synthetic videos (8 windows each) and one corrupt file."""
    root, _ = synthetic_clips(tmp_path_factory)
    videos = sorted((root / "videos").glob("*.mp4"))
    d = tmp_path_factory.mktemp("ray_clips")
    bad = d / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    lines = [f"{v}@{0.4 * k:g}:{0.4 * k + 1.0:g}" for v in videos for k in range(8)]
    lines.insert(17, str(bad))
    path = d / "clips.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _actor_pids() -> list[int]:
    """Processes of this machine whose title is a model actor's (Ray names its worker
    processes ``ray::<actor class>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # (with CPU actors Ray Data fuses the decode step into them: "MapBatches(_decode_batch)
        # ->MapBatches(_EncodeActor)"; ".submit" etc. while a call runs)
        if title.startswith("ray::MapWorker(") and "_EncodeActor" in title.split(" ")[0]:
            pids.append(int(proc.name))
    return sorted(pids)


def _model_args(model_dir: Path) -> list[str]:
    return ["--checkpoint", str(model_dir), "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def single(clip_list, model_dir, tmp_path_factory) -> Path:
    """The single-process result (``embed --skip-bad``)."""
    out = tmp_path_factory.mktemp("single") / "e.safetensors"
    argv = ["embed", "--videos", str(clip_list), "--out", str(out), "--batch-size", "4"]
    assert cli.main([*argv, *_model_args(model_dir), "--skip-bad"]) == 0
    return out


def _ray_argv(clip_list: Path, out: Path, model_dir: Path, address: str, *extra: str) -> list[str]:
    return [
        "embed",
        "--engine",
        "ray",
        "--ray-address",
        address,
        "--videos",
        str(clip_list),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--part-size",
        "2",
        "--json",
        *_model_args(model_dir),
        *extra,
    ]


def test_ray_embeddings_equal_the_single_process_ones(
    cluster, clip_list, model_dir, single, capsys, tmp_path
):
    out = tmp_path / "emb"
    assert cli.main(_ray_argv(clip_list, out, model_dir, cluster)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 41 and summary["embedded"] == 40 and summary["computed"] == 41
    assert len(summary["failed"]) == 1 and summary["failed"][0]["id"].endswith("corrupt.mp4")
    got, want = load_embeddings(out), load_embeddings(single)
    assert got.ids == want.ids and got.clips == want.clips and got.model == want.model
    assert float(np.abs(got.embeddings - want.embeddings).max()) <= 1e-5
    errors = load_embedding_errors(out)
    assert len(errors) == 1 and errors[0]["path"].endswith("corrupt.mp4") and errors[0]["error"]
    assert not any(i.endswith("corrupt.mp4") for i in got.ids)

    # search reads the folder as it reads the single file: the same top-k.
    ranks = []
    for store in (out, single):
        argv = ["search", "--embeddings", str(store), "--query", "C picks up the red square"]
        assert cli.main([*argv, "--top-k", "5", "--json", *_model_args(model_dir)[:4]]) == 0
        ranks.append(
            [
                (r["id"], round(r["score"], 5))
                for r in json.loads(capsys.readouterr().out)["results"]
            ]
        )
    assert ranks[0] == ranks[1]

    # A second run on the finished folder without --resume is refused, with --resume it
    # computes nothing.
    assert cli.main(_ray_argv(clip_list, out, model_dir, cluster)) == 1
    assert "--resume" in capsys.readouterr().err
    assert cli.main(_ray_argv(clip_list, out, model_dir, cluster, "--resume")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["computed"] == 0 and again["resumed_from"] == 41


def test_a_killed_actor_is_restarted_and_every_clip_written_once(
    cluster, clip_list, model_dir, single, tmp_path
):
    from egovlpv2_rt.cli.common import runtime_fingerprint
    from egovlpv2_rt.runtime import load
    from egovlpv2_rt.runtime.ray_engine import RayOptions, embed_with_ray
    from egovlpv2_rt.video.clip_list import read_clip_list

    clips = read_clip_list(clip_list)
    rt = load(str(model_dir), device="cpu")
    out = tmp_path / "emb"
    result: dict = {}

    def job() -> None:
        result["res"] = embed_with_ray(
            clips,
            out,
            checkpoint=str(model_dir),
            load_kwargs={"device": "cpu", "video_batch_size": 1},
            decoder=rt.clip_decoder,
            fingerprint=runtime_fingerprint(rt),
            options=RayOptions(batch_size=1, part_size=1),
        )

    t = threading.Thread(target=job)
    t.start()
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and killed is None and t.is_alive():
        if list(out.glob("part-*.parquet")):
            alive = _actor_pids()
            if alive:
                killed = alive[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "the job ended before an actor could be killed"
    t.join(timeout=300)
    res = result["res"]
    assert killed in res.actor_pids and len(res.actor_pids) >= 2  # restarted in a new process
    got, want = load_embeddings(out), load_embeddings(single)
    assert got.ids == want.ids and float(np.abs(got.embeddings - want.embeddings).max()) <= 1e-5
    assert len(load_embedding_errors(out)) == 1


def test_stopped_driver_resumes_with_only_the_missing_clips(
    cluster, clip_list, model_dir, single, tmp_path
):
    out = tmp_path / "emb"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "python"), os.environ.get("PYTHONPATH", "")]),
    )
    argv = _ray_argv(clip_list, out, model_dir, cluster)
    argv[argv.index("--batch-size") + 1] = "1"
    argv[argv.index("--part-size") + 1] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "egovlpv2_rt.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 5:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    have = len(list(out.glob("part-*.parquet"))) + len(list(out.glob("errors-*.parquet")))
    assert 5 <= have < 41
    resumed = subprocess.run(
        [sys.executable, "-m", "egovlpv2_rt.cli", *argv, "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == have and summary["computed"] == 41 - have
    got, want = load_embeddings(out), load_embeddings(single)
    assert got.ids == want.ids and float(np.abs(got.embeddings - want.embeddings).max()) <= 1e-5
    assert len(load_embedding_errors(out)) == 1


def test_without_ray_the_engine_names_the_extra(
    monkeypatch, clip_list, model_dir, tmp_path, capsys
):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    argv = _ray_argv(clip_list, tmp_path / "emb", model_dir, "127.0.0.1:1")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'egovlpv2-rt[ray]'" in err
    assert not (tmp_path / "emb").exists()


@pytest.mark.parametrize("task", ["mq", "nlq"])
def test_ray_features_equal_the_single_process_files_and_resume(
    cluster, task, tmp_path_factory, tmp_path, capsys
):
    import torch
    from _tiny_assets import tiny_episodic_dir

    data = tiny_episodic_dir(tmp_path_factory)
    model = tiny_model_dir(tmp_path_factory)
    meta = data["nlq_train"] if task == "nlq" else data["moments_train"]
    argv = [
        "features", "--task", task, "--metadata", str(meta), "--videos", str(data["videos"]),
        "--checkpoint", str(model / "model.safetensors"), "--fps", "video",
        "--window-batch", "3", "--device", "cpu", "--json",
    ]  # fmt: skip
    assert cli.main([*argv, "--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    ray_argv = [*argv, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", cluster]
    assert cli.main(ray_argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["engine"] == "ray" and got["complete"]
    for key in ("clips", "computed", "files_written", "failed", "settings", "checkpoint_sha256"):
        assert got[key] == one[key], key
    names = sorted(p.name for p in (tmp_path / "one").glob("*.pt"))
    assert names and names == sorted(p.name for p in (tmp_path / "ray").glob("*.pt"))
    for name in names:
        a = torch.load(tmp_path / "one" / name, weights_only=True)
        b = torch.load(tmp_path / "ray" / name, weights_only=True)
        pairs = [(a, b)] if task == "mq" else [(a[k], b[k]) for k in a if torch.is_tensor(a[k])]
        for x, y in pairs:
            assert x.dtype == y.dtype and x.shape == y.shape
            assert float((x.double() - y.double()).abs().max()) <= 1e-5, name
    # Remove two files: a second run computes only their clips.
    for name in names[:2]:
        (tmp_path / "ray" / name).unlink()
    assert cli.main(ray_argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["files_written"] == 2 and again["computed"] <= 2
    assert again["existing"] == again["clips"] - again["computed"]


def test_decoding_in_the_actors_gives_the_same_embeddings(
    cluster, clip_list, model_dir, single, capsys, tmp_path
):
    out = tmp_path / "emb"
    argv = _ray_argv(clip_list, out, model_dir, cluster, "--decode-in-actor")
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == 40 and len(summary["failed"]) == 1
    got, want = load_embeddings(out), load_embeddings(single)
    assert got.ids == want.ids and got.clips == want.clips
    assert float(np.abs(got.embeddings - want.embeddings).max()) <= 1e-5
    assert load_embedding_errors(out)[0]["path"].endswith("corrupt.mp4")
