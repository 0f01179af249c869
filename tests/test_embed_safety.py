"""Nothing lost, nothing mixed (issue 14, defect 3): ``embed`` validates before the first clip,
holds one lock per output, writes parts and resumes from them to a byte-equal store; stores
keep clip paths relative to themselves; ``index`` writes nothing when an argument is bad;
a writer failing midway keeps the old file and leaves no temporary file."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tiny_assets import synthetic_clips, tiny_model_dir

from egovlpv2_rt import cli
from egovlpv2_rt.data.egoclip import read_egoclip, write_egoclip
from egovlpv2_rt.files import exclusive_output
from egovlpv2_rt.runtime.api import Runtime
from egovlpv2_rt.runtime.store import (
    EmbeddingSet,
    build_faiss_index,
    load_embeddings,
    load_faiss_index,
    save_embeddings,
    write_safetensors_deterministic,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root, _ = synthetic_clips(tmp_path_factory)
    return sorted((root / "videos").glob("*.mp4"))


def _clip_list(folder: Path, videos: list[Path], n: int = 6) -> Path:
    """A .txt list of ``n`` clips (two ranges per video, absolute paths)."""
    lines = [f"{videos[i // 2]}@{0.5 * (i % 2):g}:{0.5 * (i % 2) + 1.0:g}" for i in range(n)]
    path = folder / "clips.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _embed_argv(videos_arg: Path | str, out: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        "embed",
        "--videos",
        str(videos_arg),
        "--out",
        str(out),
        "--checkpoint",
        str(model_dir),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--part-size",
        "2",
        "--no-progress",
        *extra,
    ]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 1, err
    assert err.count("\n") == 1 and err.startswith("egovlpv2: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


_REAL_ENCODE = Runtime._encode_pixels


class _CountingEncoder:
    """Wraps ``Runtime._encode_pixels`` (the model's run on one batch, after the batch before
    it was handed over): counts the clips encoded, raises after ``fail_after`` calls (to
    interrupt a job at a known batch)."""

    def __init__(self, monkeypatch, fail_after: int | None = None) -> None:
        self.clips = 0
        self.calls = 0
        self.fail_after = fail_after
        real = _REAL_ENCODE

        def encode(rt, pixels):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("simulated crash while embedding")
            self.calls += 1
            self.clips += pixels.shape[0]
            return real(rt, pixels)

        monkeypatch.setattr(Runtime, "_encode_pixels", encode)


# ------------------------------------------------------------------------------ validation


def test_embed_validates_everything_before_the_first_clip(
    videos, model_dir, tmp_path, capsys, monkeypatch
):
    enc = _CountingEncoder(monkeypatch)
    lst = _clip_list(tmp_path, videos)
    out = tmp_path / "e.safetensors"
    dup = tmp_path / "dup.csv"
    dup.write_text(f"path,id\n{videos[0]},same\n{videos[1]},same\n")
    rc, _, err = _run(_embed_argv(dup, out, model_dir), capsys)
    _one_line_error(rc, err, "clip id 'same' appears twice", "clips 1 and 2")
    missing = tmp_path / "missing.txt"
    missing.write_text(f"{videos[0]}\n{tmp_path / 'gone.mp4'}\n")
    rc, _, err = _run(_embed_argv(missing, out, model_dir), capsys)
    _one_line_error(rc, err, "clip file not found", "gone.mp4", "--skip-bad")
    for option, value in (("--batch-size", "0"), ("--part-size", "-3"), ("--frames", "0")):
        argv = _embed_argv(lst, out, model_dir)
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
        with pytest.raises(SystemExit) as usage:
            cli.main(argv)
        rc, err = usage.value.code, capsys.readouterr().err
        # Counts are refused by the parser: a usage error (exit 2), before anything is read.
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"argument {option}: must be a positive integer, got '{value}'" in err, err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, _, err = _run(_embed_argv(lst, blocker / "sub" / "e.safetensors", model_dir), capsys)
    _one_line_error(rc, err, "cannot write in the folder", "a_file")
    rc, _, err = _run(_embed_argv(lst, tmp_path / "e.npy", model_dir), capsys)
    _one_line_error(rc, err, ".safetensors or .parquet")
    assert enc.calls == 0  # not one clip was encoded by a job that could not finish
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a_file",
        "clips.txt",
        "dup.csv",
        "missing.txt",
    ]


def test_second_embed_on_the_same_output_is_refused(videos, model_dir, tmp_path, capsys):
    lst = _clip_list(tmp_path, videos)
    out = tmp_path / "e.safetensors"
    with exclusive_output(out):  # another job holds the output
        rc, _, err = _run(_embed_argv(lst, out, model_dir), capsys)
    _one_line_error(rc, err, "another process is writing this embeddings file", "lock")
    assert not out.exists() and not (tmp_path / "e.safetensors.parts").exists()


# ------------------------------------------------------------------------------ resume


def test_interrupted_embed_resumes_to_a_byte_equal_store(
    videos, model_dir, tmp_path, capsys, monkeypatch
):
    lst = _clip_list(tmp_path, videos)
    out = tmp_path / "e.safetensors"
    parts = tmp_path / "e.safetensors.parts"
    rc, _, err = _run(_embed_argv(lst, out, model_dir), capsys)
    assert rc == 0, err
    reference = out.read_bytes()
    assert not parts.exists()  # removed once the store is written
    out.unlink()

    # Crash during the third batch: two parts (4 clips) are on disk.
    _CountingEncoder(monkeypatch, fail_after=2)
    rc, _, err = _run(_embed_argv(lst, out, model_dir), capsys)
    _one_line_error(rc, err, "simulated crash")
    assert not out.exists()
    assert sorted(p.name for p in parts.iterdir()) == [
        "part-00000.safetensors",
        "part-00001.safetensors",
        "progress.json",
    ]
    progress = json.loads((parts / "progress.json").read_text())
    assert progress["done"] == 4 and progress["identity"]["clips"] == 6
    assert len(progress["identity"]["clips_sha256"]) == 64
    assert len(progress["identity"]["model"]["weights_sha256"]) == 64

    enc = _CountingEncoder(monkeypatch)
    # Without --resume the parts are neither dropped nor mixed in.
    rc, _, err = _run(_embed_argv(lst, out, model_dir), capsys)
    _one_line_error(rc, err, "4 of 6 clips done", "pass --resume", "remove the folder")
    # Another job's command (other batch size) does not reuse them either.
    argv = _embed_argv(lst, out, model_dir, "--resume")
    argv[argv.index("--batch-size") + 1] = "3"
    rc, _, err = _run(argv, capsys)
    _one_line_error(rc, err, "parts of another embed job", "batch_size")
    assert enc.calls == 0

    rc, outp, err = _run([*_embed_argv(lst, out, model_dir, "--resume"), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(outp)["resumed_from"] == 4
    assert enc.clips == 2  # only the clips whose embeddings were not on disk
    assert out.read_bytes() == reference
    assert not parts.exists()


def test_resume_of_a_parquet_store_equals_the_uninterrupted_one(
    videos, model_dir, tmp_path, capsys, monkeypatch
):
    lst = _clip_list(tmp_path, videos, n=5)
    out = tmp_path / "e.parquet"
    assert _run(_embed_argv(lst, out, model_dir), capsys)[0] == 0
    reference = load_embeddings(out)
    out.unlink()
    _CountingEncoder(monkeypatch, fail_after=1)
    assert _run(_embed_argv(lst, out, model_dir), capsys)[0] == 1
    enc = _CountingEncoder(monkeypatch)
    assert _run(_embed_argv(lst, out, model_dir, "--resume"), capsys)[0] == 0
    assert enc.clips == 3
    resumed = load_embeddings(out)
    # Parquet: equal tensors (bit for bit) and equal metadata.
    assert np.array_equal(resumed.embeddings, reference.embeddings)
    assert (resumed.ids, resumed.clips, resumed.model) == (
        reference.ids,
        reference.clips,
        reference.model,
    )


def test_sharded_embed_resumes_per_rank(videos, model_dir, tmp_path, capsys, monkeypatch):
    lst = _clip_list(tmp_path, videos)
    out = tmp_path / "s.safetensors"
    shard0 = tmp_path / "s.shard-00000-of-00002.safetensors"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _run(_embed_argv(lst, out, model_dir, "--shard"), capsys)[0] == 0
    reference = shard0.read_bytes()
    shard0.unlink()
    _CountingEncoder(monkeypatch, fail_after=1)
    assert _run(_embed_argv(lst, out, model_dir, "--shard"), capsys)[0] == 1
    assert (
        tmp_path / "s.shard-00000-of-00002.safetensors.parts" / "part-00000.safetensors"
    ).is_file()
    # Rank 1 has its own parts and lock: it runs while rank 0's parts wait.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    enc = _CountingEncoder(monkeypatch)
    assert _run(_embed_argv(lst, out, model_dir, "--shard"), capsys)[0] == 0
    assert enc.clips == 3
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _run(_embed_argv(lst, out, model_dir, "--shard", "--resume"), capsys)[0] == 0
    assert enc.clips == 3 + 1  # rank 0: 3 clips, 2 of them on disk
    assert shard0.read_bytes() == reference
    assert len(load_embeddings(tmp_path / "s.manifest.json")) == 6


# ------------------------------------------------------------------------------ processes


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "python"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "2"  # the same in every process: equal numerics
    env.pop("EGOVLPV2_DEBUG", None)
    return env


# The CLI in a subprocess; with BLOCK_AT=N its N-th batch (0-based) stops in _encode_pixels,
# after the parts before it are on disk, and says "blocked" (a deterministic point to kill at).
_CLI = """
import os, sys, time
from egovlpv2_rt import cli
from egovlpv2_rt.runtime.api import Runtime

real, calls, block_at = Runtime._encode_pixels, [0], int(os.environ.get("BLOCK_AT", "-1"))

def encode(rt, pixels):
    if calls[0] == block_at:
        print("blocked", flush=True)
        time.sleep(600)
    calls[0] += 1
    return real(rt, pixels)

Runtime._encode_pixels = encode
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli_process(argv: list[str], block_at: int = -1) -> subprocess.Popen[str]:
    env = _env()
    env["BLOCK_AT"] = str(block_at)
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_during_embed_then_resume_equals_an_uninterrupted_run(videos, model_dir, tmp_path):
    """The job stops in its second batch (its first part, clips 0-1, on disk) holding the
    output's lock: a second job on the same output is refused; SIGKILL; --resume."""
    lst = _clip_list(tmp_path, videos)
    out = tmp_path / "run" / "e.safetensors"
    parts = tmp_path / "run" / "e.safetensors.parts"
    ref = _cli_process(_embed_argv(lst, out, model_dir))
    assert ref.wait(timeout=300) == 0, ref.communicate()
    reference = out.read_bytes()
    out.unlink()

    first = _cli_process(_embed_argv(lst, out, model_dir), block_at=1)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "blocked", first.communicate()
        assert (parts / "part-00000.safetensors").is_file()
        second = _cli_process(_embed_argv(lst, out, model_dir))
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1
        assert err.count("\n") == 1 and "another process is writing" in err, err
        assert ".e.safetensors.lock" in err and "Traceback" not in err
        assert first.poll() is None  # still in its second batch, still holding the lock
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not out.exists()
    assert json.loads((parts / "progress.json").read_text())["done"] == 2

    resumed = _cli_process([*_embed_argv(lst, out, model_dir, "--resume"), "--json"])
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert json.loads(stdout)["resumed_from"] == 2
    assert out.read_bytes() == reference
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == [
        "e.safetensors"
    ]


def test_two_embeds_started_at_once(videos, model_dir, tmp_path):
    """Either one is refused (exit 1, one line naming the lock) or they run one after the
    other; the output is always one complete run's, never a mix."""
    lst = _clip_list(tmp_path, videos, n=4)
    # Same depth: clip paths are stored relative to the store, so equal content = equal bytes.
    out, ref_out = tmp_path / "run" / "e.safetensors", tmp_path / "ref" / "e.safetensors"
    ref = _cli_process(_embed_argv(lst, ref_out, model_dir))
    assert ref.wait(timeout=300) == 0, ref.communicate()
    procs = [_cli_process(_embed_argv(lst, out, model_dir)) for _ in range(2)]
    results = [(p.communicate(timeout=300)[1], p.returncode) for p in procs]
    for err, rc in results:
        if rc != 0:
            assert rc == 1 and err.count("\n") == 1, err
            assert "another process is writing this embeddings file" in err and "lock" in err
    assert 0 in [rc for _, rc in results]
    assert out.read_bytes() == ref_out.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == [
        "e.safetensors"
    ]


# ------------------------------------------------------------------------------ clip paths


def test_search_rerank_works_from_another_working_directory(
    videos, model_dir, tmp_path, capsys, monkeypatch
):
    work = tmp_path / "work"
    (work / "lists").mkdir(parents=True)
    (work / "lists" / "clips.txt").write_text(
        "\n".join(f"{v}@0:1" for v in videos[:3]).replace(str(videos[0].parent), "../vids") + "\n"
    )
    shutil.copytree(videos[0].parent, work / "vids")
    monkeypatch.chdir(work)
    # Relative --videos and --out: the paths the CLI sees are relative to this folder.
    argv = _embed_argv("lists/clips.txt", Path("store/e.safetensors"), model_dir)
    assert _run(argv, capsys)[0] == 0
    with open(work / "store" / "e.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    stored = json.loads(header["egovlpv2.clips"])
    assert header["egovlpv2.paths"] == "relative-to-file"
    assert [c["path"] for c in stored] == [f"../vids/{v.name}" for v in videos[:3]]
    assert (
        _run(["index", "--embeddings", "store/e.safetensors", "--out", "store/e.faiss"], capsys)[0]
        == 0
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for library in (work / "store" / "e.safetensors", work / "store" / "e.faiss"):
        rc, outp, err = _run(
            [
                "search",
                "--embeddings",
                str(library),
                "--query",
                "C picks up the red bar",
                "--rerank",
                "fusion",
                "--checkpoint",
                str(model_dir),
                "--device",
                "cpu",
                "--json",
            ],
            capsys,
        )
        assert rc == 0, err
        results = json.loads(outp)["results"]
        assert len(results) == 3 and all("fusion" in r for r in results)
        assert sorted(r["path"] for r in results) == [
            str(work / "vids" / v.name) for v in videos[:3]
        ]


def test_old_store_with_working_directory_paths_still_loads(videos, tmp_path, monkeypatch):
    """Stores written before paths were relative to the file: resolved beside the store when
    the clip exists there, else against the working directory they were written from."""
    shutil.copytree(videos[0].parent, tmp_path / "vids")
    (tmp_path / "stores").mkdir()
    old = tmp_path / "stores" / "old.safetensors"
    write_safetensors_deterministic(
        old,
        {"embeddings": np.ones((1, 4), np.float32)},
        {
            "egovlpv2.ids": json.dumps(["a"]),
            "egovlpv2.clips": json.dumps(
                [{"path": f"vids/{videos[0].name}", "start": None, "end": None}]
            ),
            "egovlpv2.model": "{}",
        },
    )
    monkeypatch.chdir(tmp_path)
    assert load_embeddings(old).clips[0]["path"] == str(tmp_path / "vids" / videos[0].name)
    shutil.copytree(tmp_path / "vids", tmp_path / "stores" / "vids")  # now beside the store
    monkeypatch.chdir(tmp_path / "stores" / "vids")
    assert load_embeddings(old).clips[0]["path"] == str(
        tmp_path / "stores" / "vids" / videos[0].name
    )


# ------------------------------------------------------------------------------ index


def _small_set(n: int = 5, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    return EmbeddingSet(
        [f"c{i}" for i in range(n)],
        rng.standard_normal((n, 8)).astype(np.float32),
        [{"path": f"/videos/{i}.mp4", "start": None, "end": None} for i in range(n)],
        {"projection_dim": 8},
    )


def test_index_with_bad_arguments_writes_nothing(tmp_path, capsys):
    pytest.importorskip("faiss")
    emb = tmp_path / "e.safetensors"
    save_embeddings(emb, _small_set())
    before = sorted(p.name for p in tmp_path.iterdir())
    merged = ["--merged", str(tmp_path / "m.safetensors")]
    cases = [
        (["--kind", "ivf", "--nlist", "9"], "--nlist 9", "<= the 5 embeddings"),
        (["--nlist", "2"], "--nlist 2", "only --kind ivf"),
        (["--kind", "ivf", "--merged", str(tmp_path / "m.npy")], "--merged", ".safetensors"),
    ]
    for extra, *needles in cases:
        argv = ["index", "--embeddings", str(emb), "--out", str(tmp_path / "i.faiss")]
        argv += extra if "--merged" in extra else [*extra, *merged]
        rc, _, err = _run(argv, capsys)
        _one_line_error(rc, err, *needles)
    rc, _, err = _run(
        ["index", "--embeddings", str(emb), "--out", str(tmp_path / "i.index"), *merged], capsys
    )
    _one_line_error(rc, err, "--out", ".faiss")
    # A negative count is a usage error of the parser (exit 2), before anything is read.
    with pytest.raises(SystemExit) as usage:
        cli.main(
            [
                "index",
                "--embeddings",
                str(emb),
                "--out",
                str(tmp_path / "i.faiss"),
                "--kind",
                "ivf",
                "--nlist",
                "-2",
                *merged,
            ]
        )
    assert usage.value.code == 2
    assert "argument --nlist: must be a positive integer" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == before


def test_index_and_sidecar_that_do_not_belong_together_are_refused(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    import egovlpv2_rt.runtime.store as store

    path = tmp_path / "i.faiss"
    build_faiss_index(_small_set(seed=0), path)
    assert load_faiss_index(path).ids == ["c0", "c1", "c2", "c3", "c4"]
    old_side = (tmp_path / "i.faiss.json").read_text()

    def fail(*_a, **_k):
        raise OSError("disk full")

    # A crash between the two writes: a new index (same count) beside the old .json.
    monkeypatch.setattr(store, "atomic_write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        build_faiss_index(_small_set(seed=1), path)
    assert (tmp_path / "i.faiss.json").read_text() == old_side
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_faiss_index(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.faiss", "i.faiss.json"]


# ------------------------------------------------------------------------------ writers


def test_writers_failing_midway_keep_the_old_file(tmp_path, monkeypatch, tmp_path_factory):
    import egovlpv2_rt.runtime.store as store

    emb = tmp_path / "e.safetensors"
    save_embeddings(emb, _small_set(seed=0))
    old = emb.read_bytes()

    def half_then_fail(path, tensors, metadata):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_safetensors_deterministic", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_embeddings(emb, _small_set(seed=1))
    assert emb.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]

    # The EgoClip writer meets a bad record after writing rows.
    root, records = synthetic_clips(tmp_path_factory)
    csv_file = tmp_path / "egoclip.csv"
    shutil.copyfile(root / "egoclip.csv", csv_file)
    old = csv_file.read_bytes()
    bad = [*records[:3], dataclasses.replace(records[3], clip_text="a\tb")]
    with pytest.raises(ValueError, match="tab or newline"):
        write_egoclip(csv_file, bad)
    assert csv_file.read_bytes() == old
    assert len(read_egoclip(csv_file)) == len(records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors", "egoclip.csv"]


def test_onnx_graph_write_failing_midway_keeps_the_old_graph(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import egovlpv2_rt.export.onnx_export as onnx_export

    def graph(name: str) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        node = helper.make_node("Identity", ["x"], ["y"], name=name)
        return helper.make_model(helper.make_graph([node], name, [x], [y]))

    path = tmp_path / "text_encoder.onnx"
    onnx_export._save_onnx(graph("old"), path)
    old = path.read_bytes()
    assert onnx.load(str(path)).graph.name == "old"

    real_save = onnx.save_model

    def save_then_fail(*args, **kwargs):  # the graph is written, then the export dies
        real_save(*args, **kwargs)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(onnx_export.onnx, "save_model", save_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        onnx_export._save_onnx(graph("new"), path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_encoder.onnx"]  # no staging folder
