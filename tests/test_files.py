"""Safe output writing: atomic replace, cleanup on failure and SIGTERM, one writer at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from egovlpv2_rt.errors import OutputBusyError
from egovlpv2_rt.files import (
    atomic_output,
    atomic_write_text,
    exclusive_output,
    remove_stale_temporaries,
    temporary_name_pattern,
)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "a.json"
    atomic_write_text(out, "one")
    atomic_write_text(out, "two")
    assert out.read_text() == "two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert list(tmp_path.glob(temporary_name_pattern(out))) == []


def test_two_writers_get_distinct_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with atomic_output(out) as t1, atomic_output(out) as t2:
        assert t1 != t2
        assert t1.parent == t2.parent == tmp_path
        t1.write_bytes(b"1")
        t2.write_bytes(b"2")
    assert out.read_bytes() in (b"1", b"2")
    assert len(list(tmp_path.iterdir())) == 1


def test_stale_temporaries_removed(tmp_path: Path) -> None:
    out = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"x")
    other = tmp_path / ".other.pt.abc123.tmp"
    other.write_bytes(b"x")
    assert remove_stale_temporaries(out) == [stale]
    assert not stale.exists() and other.exists()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from egovlpv2_rt.files import atomic_output, exclusive_output
    out = Path(sys.argv[1])
    with exclusive_output(out):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"partial")
            print("ready", flush=True)
            time.sleep(60)
    """
)


def _start_holder(out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_refused_while_first_holds_lock(tmp_path: Path) -> None:
    out = tmp_path / "emb.safetensors"
    proc = _start_holder(out)
    try:
        busy = pytest.raises(OutputBusyError, match=r"emb\.safetensors.*another process")
        with busy, exclusive_output(out):
            pass
    finally:
        proc.kill()
        proc.wait()
    # The kernel released the lock with the process; the next job also cleans its litter.
    assert len(list(tmp_path.glob(temporary_name_pattern(out)))) == 1
    with exclusive_output(out):
        assert list(tmp_path.glob(temporary_name_pattern(out))) == []


def test_sigterm_removes_temporary(tmp_path: Path) -> None:
    out = tmp_path / "emb.safetensors"
    proc = _start_holder(out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == -signal.SIGTERM
    time.sleep(0.05)
    assert list(tmp_path.glob(temporary_name_pattern(out))) == []
    assert not out.exists()
    assert os.listdir(tmp_path) == [".emb.safetensors.lock"]
