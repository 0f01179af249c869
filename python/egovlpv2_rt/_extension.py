"""Loading of the compiled extension.

The build installs three files beside this module (see CMakeLists.txt):

* ``_C``: a pybind11 module with the build facts;
* ``_ops_cpu.so``: the op schemas (``torch.ops.egovlpv2.*``) and their CPU kernels;
* ``_ops_cuda.so`` (CUDA builds only): the CUDA kernels of the same ops.

The op libraries are plain shared libraries on the LibTorch stable ABI, loaded with
``torch.ops.load_library``. Loading happens once, on the first call of :func:`load`
(``import egovlpv2_rt`` makes it). A source tree that was never built has none of the files:
the package still imports (the ``reference`` implementations work) and every use of a fused op
raises :class:`ExtensionNotBuiltError` saying how to build.

``EGOVLPV2_EXTENSION_DIR=<folder>`` loads all three from that folder instead, and only from
there: a build made apart from the installed package (``make sanitize`` builds the extension with
AddressSanitizer into ``build/sanitize/``) is then tested with the same Python sources.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from .errors import EgoVLPv2Error

__all__ = [
    "Extension",
    "ExtensionNotBuiltError",
    "build_info",
    "load",
    "load_error",
    "loaded",
    "require",
]

_BUILD_HINT = (
    "build the package from the repository root with `pip install --no-build-isolation .` "
    "(against the installed torch) or `pip install .`"
)
# A folder holding a separate build of all three files, used instead of the package's own.
_DIR_VARIABLE = "EGOVLPV2_EXTENSION_DIR"


class ExtensionNotBuiltError(EgoVLPv2Error, ImportError):
    """The compiled part of egovlpv2_rt is missing or cannot be loaded."""


@dataclass(frozen=True)
class Extension:
    """The loaded compiled extension."""

    module: ModuleType
    cpu_library: Path
    cuda_library: Path | None = None
    cuda_error: str | None = None
    facts: dict[str, object] = field(default_factory=dict)


_loaded: Extension | None = None
_error: ExtensionNotBuiltError | None = None


def _package_dirs() -> list[Path]:
    """Folders that may hold the compiled files, the one holding ``_C`` first.

    With an editable install the Python sources stay in the source tree while the compiled
    files sit in site-packages: ``find_spec`` of ``_C`` finds those through the installed
    redirect hook.
    """
    dirs: list[Path] = []
    spec = importlib.util.find_spec("egovlpv2_rt._C")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent)
    # The package is being imported (it imports this module), so it is in sys.modules.
    package = sys.modules[__package__ or "egovlpv2_rt"]
    dirs.extend(Path(p) for p in getattr(package, "__path__", []))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find_library(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for pattern in (f"{stem}*.so", f"{stem}*.dylib", f"{stem}*.dll", f"{stem}*.pyd"):
            found = sorted(d.glob(pattern))
            if found:
                return found[0]
    return None


def _ops_registered() -> bool:
    try:
        torch.ops.egovlpv2.divided_space_time_attention  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _load_library(path: Path) -> None:
    try:
        torch.ops.load_library(str(path))
    except OSError as exc:
        raise ExtensionNotBuiltError(
            f"egovlpv2_rt: cannot load the op library {path}: {exc}. It was built for another "
            f"platform or its torch dependency is missing; rebuild: {_BUILD_HINT}"
        ) from exc


def _import_c_from(folder: Path) -> ModuleType:
    """``egovlpv2_rt._C`` from ``folder`` (the value of EGOVLPV2_EXTENSION_DIR)."""
    candidates = (folder / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    found = next((c for c in candidates if c.is_file()), None)
    spec = None
    if found is not None:
        spec = importlib.util.spec_from_file_location("egovlpv2_rt._C", found)
    if spec is None or spec.loader is None:
        raise ExtensionNotBuiltError(
            f"egovlpv2_rt: {_DIR_VARIABLE}={folder} holds no compiled module _C "
            f"(expected _C.*.so, e.g. from `cmake --build {folder}`); unset {_DIR_VARIABLE} "
            "to use the installed extension"
        )
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise ExtensionNotBuiltError(
            f"egovlpv2_rt: cannot import {found} ({_DIR_VARIABLE}): {exc}"
        ) from exc
    sys.modules["egovlpv2_rt._C"] = module
    return module


def _load() -> Extension:
    folder = os.environ.get(_DIR_VARIABLE)
    if folder:
        dirs = [Path(folder).resolve()]
        module = _import_c_from(dirs[0])
    else:
        try:
            module = importlib.import_module("egovlpv2_rt._C")
        except ImportError as exc:
            raise ExtensionNotBuiltError(
                f"egovlpv2_rt's compiled extension (egovlpv2_rt._C) is not there ({exc}); "
                f"{_BUILD_HINT}"
            ) from exc
        dirs = _package_dirs()
    cpu_library = _find_library(dirs, "_ops_cpu")
    if cpu_library is None:
        searched = ", ".join(str(d) for d in dirs)
        raise ExtensionNotBuiltError(
            f"egovlpv2_rt: the op library _ops_cpu.so is not in {searched}; {_BUILD_HINT}"
        )
    if not _ops_registered():
        _load_library(cpu_library)
    facts = dict(module.build_info())
    cuda_library = _find_library(dirs, "_ops_cuda")
    cuda_error = None
    if cuda_library is not None and torch.version.cuda:
        try:
            _load_library(cuda_library)
        except ExtensionNotBuiltError as exc:
            cuda_error = str(exc)
            warnings.warn(f"{exc}; the fused ops run on CPU only", RuntimeWarning, stacklevel=3)
            cuda_library = None
    elif cuda_library is not None:
        cuda_error = (
            f"torch {torch.__version__} is a CPU build, so {cuda_library.name} was not loaded"
        )
        cuda_library = None
    return Extension(module, cpu_library, cuda_library, cuda_error, facts)


def load() -> Extension:
    """Load the extension once; raise :class:`ExtensionNotBuiltError` if it is missing."""
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    if _error is not None:
        raise _error
    try:
        _loaded = _load()
    except ExtensionNotBuiltError as exc:
        _error = exc
        raise
    return _loaded


def load_error() -> str | None:
    """Why the extension is not loaded (None when it is)."""
    try:
        load()
    except ExtensionNotBuiltError as exc:
        return str(exc)
    return None


def loaded() -> Extension | None:
    """The extension when it is built and loads, else None (the reason stays in ``load()``)."""
    try:
        return load()
    except ExtensionNotBuiltError:
        return None


def require(device: torch.device) -> None:
    """Raise a clear error unless fused kernels for ``device`` are loaded.

    Cheap after the first call, so it can sit on the fused ops' path (also under
    ``torch.compile``).
    """
    if _loaded is None:
        load()
    assert _loaded is not None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if _loaded.cuda_library is None:
            reason = _loaded.cuda_error or "this is a CPU build (no _ops_cuda library)"
            raise RuntimeError(
                f"egovlpv2 fused ops on CUDA need the CUDA kernels, which are not loaded: "
                f"{reason}. Use impl='reference', or rebuild with nvcc and a CUDA torch."
            )
        return
    raise RuntimeError(f"egovlpv2 fused ops have no kernels for device {device}")


def build_info() -> dict[str, object]:
    """Facts about the compiled extension; see :func:`egovlpv2_rt.build_info`."""
    try:
        ext = load()
    except ExtensionNotBuiltError as exc:
        return {
            "build": "not built",
            "cuda": False,
            "cuda_kernels_loaded": False,
            "torch_runtime": torch.__version__,
            "error": str(exc),
        }
    facts = dict(ext.facts)
    cuda = bool(facts.get("cuda"))
    isas = str(facts.get("cpu_isas_compiled", ""))
    facts.update(
        build="cuda" if cuda else "cpu",
        cuda_kernels_loaded=ext.cuda_library is not None,
        cuda_load_error=ext.cuda_error if cuda else None,
        cpu_isas_compiled=[s for s in isas.split(",") if s],
        torch_runtime=torch.__version__,
        torch_runtime_cuda=torch.version.cuda,
        libraries=[str(p) for p in (ext.cpu_library, ext.cuda_library) if p is not None],
    )
    return facts
