#!/usr/bin/env bash
# Compiles every CUDA source under csrc/kernels/ with nvcc for sm_80 and sm_90, treating every
# warning as an error (ptxas register spills and local-memory use included). For CI machines
# without a GPU: nothing runs, a failing compile fails the job.
#
# Also compiles csrc/torch/cuda_impl.cu against the stable-ABI headers of the torch in the active
# Python, when there is one (a CPU torch ships the same headers).
#
# Usage: scripts/check_cuda_compile.sh [-j JOBS]      (env NVCC overrides the compiler)
set -euo pipefail

cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
if [[ "${1:-}" == "-j" && -n "${2:-}" ]]; then jobs=$2; fi
nvcc=${NVCC:-nvcc}
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

common=(-std=c++17 -O3 -Icsrc
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  -Werror all-warnings -Xptxas -warn-spills,-warn-lmem-usage
  -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fPIC)

sources=(csrc/kernels/*.cu)
extra=()
torch_include=""
if python=$(command -v python3 || command -v python); then
  torch_include=$("$python" -c "import importlib.util as u, os; s = u.find_spec('torch'); \
print(os.path.join(s.submodule_search_locations[0], 'include') if s else '')" 2>/dev/null || true)
fi
if [[ -n "$torch_include" && -f "$torch_include/torch/csrc/stable/library.h" ]]; then
  sources+=(csrc/torch/cuda_impl.cu)
  extra=(-isystem "$torch_include" -DUSE_CUDA -DTORCH_TARGET_VERSION=0x020b000000000000)
else
  echo "check_cuda_compile: no torch headers found; skipping csrc/torch/cuda_impl.cu"
fi

echo "check_cuda_compile: $("$nvcc" --version | tail -1)"
echo "check_cuda_compile: ${#sources[@]} sources, sm_80 + sm_90, $jobs jobs"
start=$SECONDS
fail=0
pids=()
names=()
running=0
for src in "${sources[@]}"; do
  name=$(basename "$src")
  flags=("${common[@]}")
  if [[ "$src" == csrc/torch/* ]]; then flags+=("${extra[@]}"); fi
  ( t0=$SECONDS
    if "$nvcc" "${flags[@]}" -c "$src" -o "$out/$name.o" >"$out/$name.log" 2>&1; then
      echo "  ok    $src ($((SECONDS - t0)) s)"
    else
      echo "  FAIL  $src"
      sed 's/^/        /' "$out/$name.log"
      exit 1
    fi ) &
  pids+=($!)
  names+=("$src")
  running=$((running + 1))
  if (( running >= jobs )); then
    wait -n || fail=1
    running=$((running - 1))
  fi
done
while (( running > 0 )); do
  wait -n || fail=1
  running=$((running - 1))
done
echo "check_cuda_compile: $((SECONDS - start)) s"
if (( fail )); then
  echo "check_cuda_compile: FAILED" >&2
  exit 1
fi
echo "check_cuda_compile: all sources compile without warnings"
