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
from dataclasses import dataclass
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
        "-std=c++17",
        "-O1",
        "-fPIC",
        "-fvisibility=hidden",
        "-DEGO_EMULATE",
        "-Wno-unknown-pragmas",
        f"-I{KERNELS}",
        f"-I{cuda_include_dir()}",
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
        check=False,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"emulator link failed:\n{res.stderr}")
    tmp.replace(lib)  # atomic: a concurrent build of the same sources is identical
    shutil.rmtree(work, ignore_errors=True)
    return lib


_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_MAX_PLAN_STEPS = 8


class _PlanRequest(ctypes.Structure):
    """PlanRequest of csrc/kernels/emu/emu_capi.cpp."""

    _fields_ = [
        ("workspace_bytes", ctypes.c_int64),
        ("has_mma", ctypes.c_int32),
        ("num_steps", ctypes.c_int32),
        ("steps", (ctypes.c_int64 * 6) * _MAX_PLAN_STEPS),
        ("text", ctypes.c_char * 512),
    ]


@dataclass(frozen=True)
class PlanStep:
    """One step of a kernel plan (PlanStep of csrc/kernels/attention_plan.h)."""

    kernel: str  # "rows", "tensor_cores", "columns", ... (kernel_name)
    rows: tuple[int, int] | None  # [begin, end) of a "rows" step
    split: int  # warps per row of a "rows" step
    vec: bool  # lane-chunk loads ("rows", "columns")
    chunks: int  # 16-byte chunks per head ("delta_rows")


# Kernel launches per step kind: the CLS partial kernels are followed by their combine.
_LAUNCHES = {"none": 0, "fused": 0, "vec_columns_cls": 2, "cls_partials": 2}


@dataclass(frozen=True)
class Plan:
    """What an entry point launches for given inputs: its steps by name, in launch order."""

    valid: bool
    steps: dict[str, PlanStep]
    text: str  # describe()

    @property
    def kernels(self) -> dict[str, str]:
        return {name: s.kernel for name, s in self.steps.items()}

    def launches(self) -> int:
        return sum(_LAUNCHES.get(s.kernel, 1) for s in self.steps.values())

    def tensor_core_launches(self) -> int:
        return sum(s.kernel == "tensor_cores" for s in self.steps.values())


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _rows(t: torch.Tensor) -> tuple[ctypes.c_void_p | None, int, int]:
    """A [B, L, ...] view as the kernels take it: pointer, batch stride, row stride (elements)."""
    return _ptr(t), t.stride(0), t.stride(1)


class Emulator:
    """ctypes face of the emulator library; every call raises on a kernel or launch error.

    The plan_* methods take the arguments of the op they plan, plus ``workspace`` (bytes of
    scratch the divided ops get; -1: what they ask for, as a run gets) and ``has_mma``.
    """

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.ego_emu_error.restype = ctypes.c_char_p
        lib.ego_emu_kernel_name.restype = ctypes.c_char_p
        lib.ego_emu_kernel_name.argtypes = [_I]
        lib.ego_emu_set_seed.argtypes = [ctypes.c_uint64]
        lib.ego_emu_set_async_mode.argtypes = [_I]
        # One C signature per statement reads better packed than one type per line.
        # fmt: off
        lib.ego_emu_divided_forward.argtypes = [_I, _P, _I64, _I64, _I64, _I64, _I, _I, _I, _I, _F,
                                                _P, _P, _P]
        lib.ego_emu_divided_backward.argtypes = [_I, _P, _P, _I64, _I64, _P, _P, _I64, _I64, _I, _I,
                                                 _I, _I, _F, _P, _P, _P]
        lib.ego_emu_cross_forward.argtypes = [_I, _P, _I64, _I64, _P, _I64, _I64, _P, _I64, _I64,
                                              _P, _I64, _I64, _I64, _I64, _I, _I, _F, _P, _P, _P]
        lib.ego_emu_cross_backward.argtypes = [_I, _P, _P, _I64, _I64, _P, _I64, _I64, _P, _I64,
                                               _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I, _I, _F,
                                               _P, _P, _P, _P, _P]
        # fmt: on
        lib.ego_emu_gate_residual.argtypes = [_I, _P, _P, _P, _I, _P, _I64]
        lib.ego_emu_launches_with_block.argtypes = [_I]
        self.lib = lib

    def tensor_core_launches(self) -> int:
        """Launches of the tensor-core kernels (128-thread blocks) since the last reset."""
        return self.lib.ego_emu_launches_with_block(128)

    def launches(self) -> int:
        """Kernel launches since the last reset."""
        return self.lib.ego_emu_launch_count()

    def reset_launches(self) -> None:
        self.lib.ego_emu_reset_launches()

    def schedule(self, seed: int, async_mode: int) -> None:
        """seed 0: lock-step; odd: warp-greedy; even: shuffled. async_mode: see cuda_emu.h."""
        self.lib.ego_emu_set_seed(seed)
        self.lib.ego_emu_set_async_mode(async_mode)

    def _check(self, rc: int, what: str) -> None:
        msg = self.lib.ego_emu_error().decode()
        if rc != 0 or msg:
            raise RuntimeError(f"{what}: cudaError {rc} {msg}")

    def _plan(self, fn, args, workspace: int, has_mma: bool) -> Plan:
        req = _PlanRequest(workspace_bytes=workspace, has_mma=int(has_mma))
        self._check(fn(*args, ctypes.byref(req)), fn.__name__)
        text = req.text.decode()
        if req.num_steps < 0:
            return Plan(False, {}, text)
        names = [part.split(":")[0] for part in text.split("; ")]
        steps = {}
        for name, (kernel, begin, count, split, vec, chunks) in zip(
            names, req.steps[: req.num_steps], strict=True
        ):
            kind = self.lib.ego_emu_kernel_name(kernel).decode()
            steps[name] = PlanStep(
                kind, (begin, begin + count) if kind == "rows" else None, split, bool(vec), chunks
            )
        return Plan(True, steps, text)

    # ---- divided space-time attention
    def _divided_forward_args(self, qkv, heads, frames, temporal, scale):
        b, t, c = qkv.shape
        d = c // 3
        assert qkv.stride(2) == 1
        out = torch.full((b, t, d), float("nan"), dtype=qkv.dtype)
        lse = torch.full((b, heads, t), float("nan"), dtype=torch.float32)
        args = (
            DTYPE_CODE[qkv.dtype],
            *_rows(qkv),
            b,
            t,
            heads,
            d // heads,
            frames,
            int(temporal),
            scale,
            _ptr(out),
            _ptr(lse),
        )
        return args, (out, lse)

    def divided_forward(
        self, qkv: torch.Tensor, heads: int, frames: int, temporal: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        args, result = self._divided_forward_args(qkv, heads, frames, temporal, scale)
        self._check(self.lib.ego_emu_divided_forward(*args, None), "divided_forward")
        return result

    def plan_divided_forward(
        self,
        qkv: torch.Tensor,
        heads: int,
        frames: int,
        temporal: bool,
        workspace: int = -1,
        has_mma: bool = True,
    ) -> Plan:
        args, _ = self._divided_forward_args(qkv, heads, frames, temporal, 1.0)
        return self._plan(self.lib.ego_emu_divided_forward, args, workspace, has_mma)

    def _divided_backward_args(self, grad_out, qkv, out, lse, heads, frames, temporal, scale):
        b, t, c = qkv.shape
        d = c // 3
        grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
        delta = torch.full((b, heads, t), float("nan"), dtype=torch.float32)
        grad = torch.full((b, t, c), float("nan"), dtype=qkv.dtype)
        args = (
            DTYPE_CODE[qkv.dtype],
            _ptr(grad_out),
            *_rows(qkv),
            _ptr(out),
            _ptr(lse),
            b,
            t,
            heads,
            d // heads,
            frames,
            int(temporal),
            scale,
            _ptr(delta),
            _ptr(grad),
        )
        return args, grad, (grad_out, out, lse, delta)

    def divided_backward(
        self,
        grad_out: torch.Tensor,
        qkv: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        heads: int,
        frames: int,
        temporal: bool,
        scale: float,
    ) -> torch.Tensor:
        args, grad, _keep = self._divided_backward_args(
            grad_out, qkv, out, lse, heads, frames, temporal, scale
        )
        self._check(self.lib.ego_emu_divided_backward(*args, None), "divided_backward")
        return grad

    def plan_divided_backward(
        self,
        grad_out: torch.Tensor,
        qkv: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        heads: int,
        frames: int,
        temporal: bool,
        workspace: int = -1,
        has_mma: bool = True,
    ) -> Plan:
        args, _, _keep = self._divided_backward_args(
            grad_out, qkv, out, lse, heads, frames, temporal, 1.0
        )
        return self._plan(self.lib.ego_emu_divided_backward, args, workspace, has_mma)

    # ---- gated cross-attention core
    def _cross_forward_args(self, q, k, v, mask, heads, scale):
        b, lq, d = q.shape
        lk = k.shape[1]
        attn = torch.full((b, lq, d), float("nan"), dtype=q.dtype)
        lse = torch.full((b, heads, lq), float("nan"), dtype=torch.float32)
        args = (
            DTYPE_CODE[q.dtype],
            *_rows(q),
            *_rows(k),
            *_rows(v),
            _ptr(mask),
            0 if mask is None else mask.stride(0),
            b,
            lq,
            lk,
            heads,
            d // heads,
            scale,
            _ptr(attn),
            _ptr(lse),
        )
        return args, (attn, lse)

    def cross_forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        heads: int,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        args, result = self._cross_forward_args(q, k, v, mask, heads, scale)
        self._check(self.lib.ego_emu_cross_forward(*args, None), "cross_forward")
        return result

    def plan_cross_forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        heads: int,
        has_mma: bool = True,
    ) -> Plan:
        args, _ = self._cross_forward_args(q, k, v, mask, heads, 1.0)
        return self._plan(self.lib.ego_emu_cross_forward, args, 0, has_mma)

    def _cross_backward_args(self, grad_attn, q, k, v, mask, attn, lse, heads, scale):
        b, lq, d = q.shape
        lk = k.shape[1]
        grad_attn, attn, lse = grad_attn.contiguous(), attn.contiguous(), lse.contiguous()
        delta = torch.full((b, heads, lq), float("nan"), dtype=torch.float32)
        grads = tuple(torch.full((b, n, d), float("nan"), dtype=q.dtype) for n in (lq, lk, lk))
        args = (
            DTYPE_CODE[q.dtype],
            _ptr(grad_attn),
            *_rows(q),
            *_rows(k),
            *_rows(v),
            _ptr(mask),
            0 if mask is None else mask.stride(0),
            _ptr(attn),
            _ptr(lse),
            b,
            lq,
            lk,
            heads,
            d // heads,
            scale,
            _ptr(delta),
            *map(_ptr, grads),
        )
        return args, grads, (grad_attn, attn, lse, delta)

    def cross_backward(
        self,
        grad_attn: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        attn: torch.Tensor,
        lse: torch.Tensor,
        heads: int,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args, grads, _keep = self._cross_backward_args(
            grad_attn, q, k, v, mask, attn, lse, heads, scale
        )
        self._check(self.lib.ego_emu_cross_backward(*args, None), "cross_backward")
        return grads

    def plan_cross_backward(
        self,
        grad_attn: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        attn: torch.Tensor,
        lse: torch.Tensor,
        heads: int,
        has_mma: bool = True,
    ) -> Plan:
        args, _, _keep = self._cross_backward_args(grad_attn, q, k, v, mask, attn, lse, heads, 1.0)
        return self._plan(self.lib.ego_emu_cross_backward, args, 0, has_mma)

    def gate_residual(
        self, residual: torch.Tensor, lin: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        out = torch.full_like(residual, float("nan"))
        rc = self.lib.ego_emu_gate_residual(
            DTYPE_CODE[residual.dtype],
            _ptr(residual),
            _ptr(lin),
            _ptr(gate),
            int(gate.dtype == torch.float32),
            _ptr(out),
            residual.numel(),
        )
        self._check(rc, "gate_residual")
        return out
