"""Progress bars: tqdm when it is installed and asked for, else a bar that does nothing."""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool) -> ProgressBar:
    """A bar over ``total`` items labelled ``desc`` (unit "clip" when ``desc`` names clips)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a convenience: run without them
        return _NoBar()

    return tqdm(total=total, desc=desc, unit="clip" if "clip" in desc else "item", leave=False)
