"""Writing outputs safely: atomically, never mixed with a second writer, no litter left.

Every file the package writes goes through :func:`atomic_output`: the content is written to a
unique temporary file in the target's folder (``tempfile.mkstemp``), flushed and fsynced, then
renamed over the target, so a reader sees the old file or the new one, never a torn one. The
temporary file is removed on any exception and on SIGTERM/SIGINT. A SIGKILL cannot be caught:
the temporary files it leaves (``.<name>.<random>.tmp``) are removed by
:func:`remove_stale_temporaries` when the same job starts again.

:func:`exclusive_output` takes a lock file beside an output (``<name>.lock``, via ``filelock``)
for the whole job, so a second job writing the same output is refused with
:class:`~egovlpv2_rt.errors.OutputBusyError` instead of interleaving with the first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import OutputBusyError

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_with",
    "exclusive_output",
    "remove_stale_temporaries",
    "temporary_name_pattern",
]

PathLike = str | os.PathLike[str]
_TMP_SUFFIX = ".tmp"

# Temporary files of live writers in this process, removed on SIGTERM before the process dies.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()
_HANDLER_INSTALLED = False
_PREVIOUS: dict[int, Any] = {}


def temporary_name_pattern(path: PathLike) -> str:
    """The glob of the temporary files :func:`atomic_output` creates for ``path``."""
    return f".{Path(path).name}.*{_TMP_SUFFIX}"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    with _LIVE_LOCK:
        for tmp in list(_LIVE):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _LIVE.clear()
    previous = _PREVIOUS.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL: die by the same signal, as the process would have
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handler() -> None:
    """Clean temporary files on SIGTERM (SIGINT already raises KeyboardInterrupt, which the
    ``except BaseException`` of :func:`atomic_output` handles). Main thread only."""
    global _HANDLER_INSTALLED
    if _HANDLER_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        _PREVIOUS[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_signal)
        _HANDLER_INSTALLED = True


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is fsynced and renamed onto
    ``path``, on any failure removed. The caller writes the whole file to the yielded path
    (which exists, empty, so writers that open by name work).

    Raises:
        OSError: the folder cannot be created or written (the message names the path).
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TMP_SUFFIX, dir=parent)
    os.close(fd)
    _install_handler()
    with _LIVE_LOCK:
        _LIVE.add(tmp)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(parent)
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_output`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path`` atomically."""
    with atomic_output(path) as tmp:
        write(tmp)
    return Path(path)


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove the temporary files a killed writer of ``path`` left behind; return them.

    Call only while holding :func:`exclusive_output` for ``path`` (a live writer's temporary
    file would otherwise be removed under it)."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    removed = []
    for tmp in parent.glob(temporary_name_pattern(target)):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def exclusive_output(path: PathLike, *, what: str = "output") -> Iterator[None]:
    """Hold ``<path>.lock`` for the duration: a second job writing ``path`` is refused.

    The lock is advisory (``fcntl`` through ``filelock``) and released by the kernel when the
    process dies, so a killed job never blocks the next one. On entry, temporary files a killed
    writer of ``path`` left are removed.

    Raises:
        OutputBusyError: another process holds the lock.
    """
    from filelock import FileLock, Timeout

    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(parent / f".{target.name}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusyError(
            f"{target}: another process is writing this {what} (lock {lock.lock_file} is held); "
            "wait for it to finish or choose another output"
        ) from None
    try:
        remove_stale_temporaries(target)
        yield
    finally:
        lock.release()
