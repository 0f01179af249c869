"""Shared fixtures: the golden parity sets and small helpers.

The golden directory is ``../shared/golden`` relative to the repository root, or the directory
named by ``EGOVLPV2_GOLDEN_DIR``. A set is ``<set>_config.json`` with its
``<set>_weights.safetensors`` and ``<set>_io.safetensors``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests run against the source tree when the package is not installed.
if str(REPO_ROOT / "python") not in sys.path:
    try:
        import egovlpv2_rt  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT / "python"))


@dataclass(frozen=True)
class GoldenSet:
    name: str
    config: Path
    weights: Path
    io: Path


def golden_dir() -> Path:
    env = os.environ.get("EGOVLPV2_GOLDEN_DIR")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "golden").resolve()


def discover_golden_sets(directory: Path) -> list[GoldenSet]:
    """Every ``<set>_config.json`` that has both companion files."""
    sets = []
    if directory.is_dir():
        for config in sorted(directory.glob("*_config.json")):
            name = config.name[: -len("_config.json")]
            weights = directory / f"{name}_weights.safetensors"
            io = directory / f"{name}_io.safetensors"
            if weights.is_file() and io.is_file():
                sets.append(GoldenSet(name, config, weights, io))
    return sets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrize over the sets at collection time. With no set, a single None parameter makes
    # the test fail with an explanation instead of pytest silently skipping an empty list.
    if "golden_set" in metafunc.fixturenames:
        sets = discover_golden_sets(golden_dir())
        params = sets or [None]
        ids = [s.name for s in sets] or ["no-golden-set"]
        metafunc.parametrize("golden_set", params, ids=ids, scope="module")


@pytest.fixture(scope="session")
def golden_sets() -> tuple[Path, list[GoldenSet]]:
    """(golden directory, the sets found in it)."""
    directory = golden_dir()
    return directory, discover_golden_sets(directory)


@pytest.fixture(scope="module")
def golden(golden_set: GoldenSet | None) -> GoldenSet:
    if golden_set is None:
        pytest.fail(
            f"no golden parity set found in {golden_dir()} (expected <set>_config.json, "
            "<set>_weights.safetensors and <set>_io.safetensors; set EGOVLPV2_GOLDEN_DIR)"
        )
    return golden_set
