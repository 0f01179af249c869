"""Builds and drives the CPU emulation of the CUDA kernels (csrc/kernels/emu/).

The kernel sources are compiled with the host C++ compiler and ``EGO_EMULATE`` into a shared
library whose C entry points mirror ``csrc/kernels/egovlpv2_kernels.h``. Tensors are CPU torch
tensors; strides are passed in elements, exactly as the CUDA registration passes them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "csrc" / "kernels"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def cuda_include_dir() -> Path | None:
    """Directory holding cuda_fp16.h / cuda_runtime_api.h, or None."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parents[1] / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for c in candidates:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_runtime_api.h").is_file():
            return c
    return None


def why_unavailable() -> str | None:
    """Reason the emulator cannot be built here, or None."""
    if os.uname().machine != "x86_64":
        return "the kernel emulator switches x86-64 stacks; this machine is " + os.uname().machine
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no host C++ compiler (g++) to build the kernel emulator"
    if cuda_include_dir() is None:
        return "no CUDA headers (cuda_fp16.h) to build the kernel emulator"
    return None


def _sources() -> list[Path]:
    return sorted(KERNELS.glob("*.cu")) + sorted((KERNELS / "emu").glob("*.cpp"))


def build() -> Path:
    """Compiles the emulator library once per source state; returns its path."""
    files = _sources() + sorted(KERNELS.glob("*.cuh")) + sorted(KERNELS.glob("*.h"))
    files += sorted((KERNELS / "emu").glob("*.h"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    cache = Path(os.environ.get("EGOVLPV2_EMU_CACHE", Path(tempfile.gettempdir()) / "egovlpv2_emu"))
    out_dir = cache / digest.hexdigest()[:16]
    lib = out_dir / "libego_emu.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir))  # private to this process (parallel workers)
    cxx = os.environ.get("CXX", "g++")
    flags = [
        "-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-DEGO_EMULATE",
        "-Wno-unknown-pragmas", f"-I{KERNELS}", f"-I{cuda_include_dir()}",
    ]

    def compile_one(src: Path) -> Path:
        obj = work / (src.name + ".o")
        cmd = [cxx, *flags, "-x", "c++", "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"emulator build failed for {src.name}:\n{res.stderr}")
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, _sources()))
    tmp = work / "libego_emu.so"
    res = subprocess.run(
        [cxx, "-shared", "-Wl,--no-undefined", "-o", str(tmp), *map(str, objs)],
        check=False, capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"emulator link failed:\n{res.stderr}")
    tmp.replace(lib)  # atomic: a concurrent build of the same sources is identical
    shutil.rmtree(work, ignore_errors=True)
    return lib


_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class Emulator:
    """ctypes face of the emulator library; every call raises on a kernel or launch error."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.ego_emu_error.restype = ctypes.c_char_p
        lib.ego_emu_set_seed.argtypes = [ctypes.c_uint64]
        lib.ego_emu_set_async_mode.argtypes = [_I]
        lib.ego_emu_divided_forward.argtypes = [_I, _P, _I64, _I64, _I64, _I64, _I, _I, _I, _I,
                                                _F, _P, _P]
        lib.ego_emu_divided_backward.argtypes = [_I, _P, _P, _I64, _I64, _P, _P, _I64, _I64, _I,
                                                 _I, _I, _I, _F, _P, _P]
        lib.ego_emu_cross_forward.argtypes = [_I, _P, _I64, _I64, _P, _I64, _I64, _P, _I64,
                                              _I64, _P, _I64, _I64, _I64, _I64, _I, _I, _F, _P, _P]
        lib.ego_emu_cross_backward.argtypes = [_I, _P, _P, _I64, _I64, _P, _I64, _I64, _P, _I64,
                                               _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I, _I,
                                               _F, _P, _P, _P, _P]
        lib.ego_emu_gate_residual.argtypes = [_I, _P, _P, _P, _I, _P, _I64]
        lib.ego_emu_launches_with_block.argtypes = [_I]
        self.lib = lib

    def tensor_core_launches(self) -> int:
        """Launches of the tensor-core kernels (128-thread blocks) since the last call."""
        n = self.lib.ego_emu_launches_with_block(128)
        self.lib.ego_emu_reset_launches()
        return n

    def schedule(self, seed: int, async_mode: int) -> None:
        """seed 0: lock-step; odd: warp-greedy; even: shuffled. async_mode: see cuda_emu.h."""
        self.lib.ego_emu_set_seed(seed)
        self.lib.ego_emu_set_async_mode(async_mode)

    def _check(self, rc: int, what: str) -> None:
        msg = self.lib.ego_emu_error().decode()
        if rc != 0 or msg:
            raise RuntimeError(f"{what}: cudaError {rc} {msg}")

    def divided_forward(self, qkv: torch.Tensor, heads: int, frames: int, temporal: bool,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = qkv.shape
        d = c // 3
        assert qkv.stride(2) == 1
        out = torch.full((b, t, d), float("nan"), dtype=qkv.dtype)
        lse = torch.full((b, heads, t), float("nan"), dtype=torch.float32)
        rc = self.lib.ego_emu_divided_forward(
            DTYPE_CODE[qkv.dtype], _ptr(qkv), qkv.stride(0), qkv.stride(1), b, t, heads,
            d // heads, frames, int(temporal), scale, _ptr(out), _ptr(lse))
        self._check(rc, "divided_forward")
        return out, lse

    def divided_backward(self, grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, heads: int, frames: int, temporal: bool,
                         scale: float) -> torch.Tensor:
        b, t, c = qkv.shape
        d = c // 3
        grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
        delta = torch.full((b, heads, t), float("nan"), dtype=torch.float32)
        grad = torch.full((b, t, c), float("nan"), dtype=qkv.dtype)
        rc = self.lib.ego_emu_divided_backward(
            DTYPE_CODE[qkv.dtype], _ptr(grad_out), _ptr(qkv), qkv.stride(0), qkv.stride(1),
            _ptr(out), _ptr(lse), b, t, heads, d // heads, frames, int(temporal), scale,
            _ptr(delta), _ptr(grad))
        self._check(rc, "divided_backward")
        return grad

    def cross_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None, heads: int,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        b, lq, d = q.shape
        lk = k.shape[1]
        attn = torch.full((b, lq, d), float("nan"), dtype=q.dtype)
        lse = torch.full((b, heads, lq), float("nan"), dtype=torch.float32)
        rc = self.lib.ego_emu_cross_forward(
            DTYPE_CODE[q.dtype], _ptr(q), q.stride(0), q.stride(1), _ptr(k), k.stride(0),
            k.stride(1), _ptr(v), v.stride(0), v.stride(1), _ptr(mask),
            0 if mask is None else mask.stride(0), b, lq, lk, heads, d // heads, scale,
            _ptr(attn), _ptr(lse))
        self._check(rc, "cross_forward")
        return attn, lse

    def cross_backward(self, grad_attn: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor, mask: torch.Tensor | None, attn: torch.Tensor,
                       lse: torch.Tensor, heads: int,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, lq, d = q.shape
        lk = k.shape[1]
        grad_attn, attn, lse = grad_attn.contiguous(), attn.contiguous(), lse.contiguous()
        delta = torch.full((b, heads, lq), float("nan"), dtype=torch.float32)
        gq = torch.full((b, lq, d), float("nan"), dtype=q.dtype)
        gk = torch.full((b, lk, d), float("nan"), dtype=q.dtype)
        gv = torch.full((b, lk, d), float("nan"), dtype=q.dtype)
        rc = self.lib.ego_emu_cross_backward(
            DTYPE_CODE[q.dtype], _ptr(grad_attn), _ptr(q), q.stride(0), q.stride(1), _ptr(k),
            k.stride(0), k.stride(1), _ptr(v), v.stride(0), v.stride(1), _ptr(mask),
            0 if mask is None else mask.stride(0), _ptr(attn), _ptr(lse), b, lq, lk, heads,
            d // heads, scale, _ptr(delta), _ptr(gq), _ptr(gk), _ptr(gv))
        self._check(rc, "cross_backward")
        return gq, gk, gv

    def gate_residual(self, residual: torch.Tensor, lin: torch.Tensor,
                      gate: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(residual, float("nan"))
        rc = self.lib.ego_emu_gate_residual(
            DTYPE_CODE[residual.dtype], _ptr(residual), _ptr(lin), _ptr(gate),
            int(gate.dtype == torch.float32), _ptr(out), residual.numel())
        self._check(rc, "gate_residual")
        return out
