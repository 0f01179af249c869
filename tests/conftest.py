"""Shared fixtures: the golden parity sets and small helpers.

The golden sets of ``tests/golden`` (copied from the original EgoVLPv2's outputs; see its
README) are always tested; when ``EGOVLPV2_GOLDEN_DIR`` names a folder, every set found there is
tested as well. A set is ``<set>_config.json`` with its ``<set>_weights.safetensors`` and
``<set>_io.safetensors``; a set missing one of them fails its tests instead of being skipped.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
GOLDEN_ENV = "EGOVLPV2_GOLDEN_DIR"
SET_FILES = ("config.json", "weights.safetensors", "io.safetensors")

# Tests run against the source tree when the package is not installed.
if str(REPO_ROOT / "python") not in sys.path:
    try:
        import egovlpv2_rt  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT / "python"))


@dataclass(frozen=True)
class GoldenSet:
    """One golden set; ``problem`` says why it cannot be tested (missing file, empty folder)."""

    name: str
    directory: Path
    extra: bool = False
    problem: str | None = None

    @property
    def label(self) -> str:
        return f"{self.directory.name}/{self.name}" if self.extra else self.name

    @property
    def config(self) -> Path:
        return self.directory / f"{self.name}_config.json"

    @property
    def weights(self) -> Path:
        return self.directory / f"{self.name}_weights.safetensors"

    @property
    def io(self) -> Path:
        return self.directory / f"{self.name}_io.safetensors"


def discover_golden_sets(directory: Path, extra: bool = False) -> list[GoldenSet]:
    """Every set whose name appears in any of its three files; incomplete ones carry a problem."""
    if not directory.is_dir():
        return [GoldenSet("missing", directory, extra, f"golden folder {directory} does not exist")]
    names = sorted(
        {f.name[: -len(suffix) - 1] for suffix in SET_FILES for f in directory.glob(f"*_{suffix}")}
    )
    if not names:
        return [
            GoldenSet(
                "empty",
                directory,
                extra,
                f"no golden set in {directory} (expected <set>_config.json, "
                "<set>_weights.safetensors and <set>_io.safetensors)",
            )
        ]
    sets = []
    for name in names:
        missing = [
            f"{name}_{suffix}"
            for suffix in SET_FILES
            if not (directory / f"{name}_{suffix}").is_file()
        ]
        problem = (
            f"golden set {name} in {directory} is missing {', '.join(missing)}" if missing else None
        )
        sets.append(GoldenSet(name, directory, extra, problem))
    return sets


def golden_sets_to_test() -> list[GoldenSet]:
    """The in-repository sets, then those of ``$EGOVLPV2_GOLDEN_DIR`` (if set)."""
    sets = discover_golden_sets(GOLDEN_DIR)
    env = os.environ.get(GOLDEN_ENV)
    if env:
        extra = Path(env).resolve()
        if extra != GOLDEN_DIR.resolve():
            sets += discover_golden_sets(extra, extra=True)
    return sets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrize over the sets at collection time; an incomplete set is a parameter too, so that
    # its tests fail with an explanation instead of pytest silently skipping it.
    if "golden_set" in metafunc.fixturenames:
        sets = golden_sets_to_test()
        metafunc.parametrize("golden_set", sets, ids=[s.label for s in sets], scope="module")


@pytest.fixture(scope="module")
def golden(golden_set: GoldenSet) -> GoldenSet:
    """The parametrized golden set; fails (never skips) when it is incomplete."""
    if golden_set.problem:
        pytest.fail(golden_set.problem)
    return golden_set


@pytest.fixture(scope="session")
def tiny_golden() -> GoldenSet:
    """The in-repository tiny set (its weights have gates far from zero)."""
    tiny = GoldenSet("tiny", GOLDEN_DIR)
    missing = [p for p in (tiny.config, tiny.weights, tiny.io) if not p.is_file()]
    if missing:
        pytest.fail(f"the in-repository golden set is incomplete: missing {missing}")
    return tiny


@pytest.fixture(scope="session")
def golden_manifest() -> Path:
    """The full-size model's state-dict manifest (tests/golden)."""
    path = GOLDEN_DIR / "full_state_dict_manifest.json"
    if not path.is_file():
        pytest.fail(f"missing {path}")
    return path


def _subnormals_representable() -> bool:
    return sys.float_info.min / 2 != 0.0


@pytest.fixture(autouse=True)
def _no_leaked_denormal_flush():
    """A test (the package code it runs) must leave the processor's flush-to-zero state as it
    found it: a library call that left it on would change its caller's arithmetic."""
    before = _subnormals_representable()
    yield
    after = _subnormals_representable()
    if after != before:
        import torch

        torch.set_flush_denormal(not before)
        pytest.fail("the test left denormal flushing switched " + ("off" if after else "on"))
