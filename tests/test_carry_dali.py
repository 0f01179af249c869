"""scripts/carry_dali.sh on stand-in wheels (no download): the parts are packed into call
folders under the per-call limit, reassemble to the same bytes, and a missing or damaged part is
named."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "carry_dali.sh"

pytestmark = pytest.mark.skipif(shutil.which("split") is None, reason="needs coreutils split")


def _run(args, cwd, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **env}, check=False,
    )  # fmt: skip


def test_prepare_packs_calls_and_check_reassembles(tmp_path):
    wheels = tmp_path / "src"
    wheels.mkdir()
    blobs = {"big-1.0-py3-none-any.whl": 50_000, "small-2.0-py3-none-any.whl": 3_000}
    for name, size in blobs.items():
        (wheels / name).write_bytes(os.urandom(size))
    out = tmp_path / "carry"
    env = {"WHEELS_FROM": str(wheels), "PART_SIZE": "16K", "CALL_BYTES": "40000"}
    res = _run(["prepare", str(out)], tmp_path, **env)
    assert res.returncode == 0, res.stderr
    calls = sorted(p for p in out.iterdir() if p.name.startswith("call"))
    sizes = [sum(f.stat().st_size for f in c.iterdir()) for c in calls]
    assert all(s <= 40_000 for s in sizes) and sum(sizes) == 53_000
    assert len(calls) == 2  # 4 parts of <= 16 KiB + 1 small part, first-fit decreasing
    manifest = (out / "manifest.txt").read_text().splitlines()
    assert len(manifest) == 2 and not (out / "wheels").exists()
    assert (_run(["check", str(out)], tmp_path)).returncode == 0
    for name in blobs:
        got = (out / "wheels" / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256((wheels / name).read_bytes()).digest()
    # A call folder not carried yet, then a damaged part: named, exit 1.
    hidden = calls[0].rename(tmp_path / "away")
    res = _run(["check", str(out)], tmp_path)
    assert res.returncode == 1 and "not carried yet" in res.stderr
    hidden.rename(calls[0])
    part = next(calls[0].iterdir())
    part.write_bytes(part.read_bytes() + b"x")
    res = _run(["check", str(out)], tmp_path)
    assert res.returncode == 1 and "differs from the manifest" in res.stderr
