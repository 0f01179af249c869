#!/usr/bin/env bash
# The CPU op tests against a build of the extension with AddressSanitizer and
# UndefinedBehaviorSanitizer (`make sanitize`; CI runs it).
#
#   1. configures and builds _ops_cpu and _C with -DEGOVLPV2_SANITIZE=address,undefined into
#      build/sanitize/ (cmake + ninja of the venv, against the venv's torch; CPU only, the
#      installed package is left alone);
#   2. runs the CPU op tests with EGOVLPV2_EXTENSION_DIR=build/sanitize (python/egovlpv2_rt/
#      _extension.py then loads only that build) and the sanitizer runtimes preloaded;
#   3. fails on any sanitizer report, also one written by a test's subprocess.
#
# Usage: scripts/sanitize_ops.sh [PYTEST_ARGS...]     (env VENV: the virtual environment, default
#        .venv; EGOVLPV2_SANITIZE_BUILD: the build folder, default build/sanitize)
set -euo pipefail

cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
if [[ ! -d "$venv" ]]; then
  echo "sanitize_ops: no virtual environment at $venv (run make venv)" >&2
  exit 2
fi
venv=$(cd "$venv" && pwd)
py=$venv/bin/python
build=${EGOVLPV2_SANITIZE_BUILD:-build/sanitize}
for tool in "$py" "$venv/bin/cmake" "$venv/bin/ninja"; do
  if [[ ! -x "$tool" ]]; then
    echo "sanitize_ops: $tool not found (make sanitize installs cmake, ninja and pybind11" \
      "into the venv)" >&2
    exit 2
  fi
done
t0=$SECONDS

# ---- 1. build ----------------------------------------------------------------------------------
# -O1 -g: file:line in reports; -O1 compiles the three CPU kernel variants in 2/3 of the time
# of -O2 under the sanitizers, and the small test shapes do not need more.
"$venv/bin/cmake" -S . -B "$build" -G Ninja -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" \
  -DPython_EXECUTABLE="$py" -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DEGOVLPV2_CUDA=OFF \
  -DEGOVLPV2_SANITIZE=address,undefined >"$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; exit 1; }
"$venv/bin/cmake" --build "$build"
build=$(cd "$build" && pwd)
echo "sanitize_ops: built in $((SECONDS - t0)) s"

# ---- 2. the runtimes to preload ----------------------------------------------------------------
# Python is not built with ASan, so its runtime has to come first of all libraries (ASan checks
# this). libstdc++ is preloaded too: Python does not link it, and ASan's __cxa_throw interceptor
# finds the real function only if libstdc++ is there when ASan starts (otherwise the first C++
# exception, e.g. a failed argument check of an op, aborts with "CHECK failed ...
# real___cxa_throw"). libubsan is linked by the libraries themselves and may load late.
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
asan=$(readlink -f "$("$cxx" -print-file-name=libasan.so)")
stdcxx=$(readlink -f "$("$cxx" -print-file-name=libstdc++.so)")
for lib in "$asan" "$stdcxx"; do
  if [[ ! -f "$lib" ]]; then
    echo "sanitize_ops: $cxx has no $(basename "$lib") (install the compiler's libasan)" >&2
    exit 2
  fi
done
if ! readelf -d "$build/_ops_cpu.so" | grep -q 'NEEDED.*libasan'; then
  echo "sanitize_ops: $build/_ops_cpu.so is not linked with ASan" >&2
  exit 1
fi

# ---- 3. the tests ------------------------------------------------------------------------------
# detect_leaks=0: CPython and torch keep interned objects, type caches and thread pools until
# exit by design, so LeakSanitizer would report thousands of "leaks" that are not ours; the
# kernels allocate through torch tensors, which ASan checks for overflow and use-after-free.
# Reports go to files (log_path): pytest captures stderr, and a report of a process that aborts
# would be lost with it.
reports="$build/reports"
rm -rf "$reports"
mkdir -p "$reports"
export EGOVLPV2_EXTENSION_DIR=$build
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
# The kernels' threads (torch's pool) stay on; OMP_NUM_THREADS=2 matches CI's cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
preload="$asan $stdcxx${LD_PRELOAD:+ $LD_PRELOAD}"

# The test process must run the sanitized build with ASan active, or a pass means nothing.
LD_PRELOAD=$preload "$py" - "$build" <<'EOF'
import sys
from pathlib import Path

import egovlpv2_rt

libraries = egovlpv2_rt.build_info().get("libraries", [])
assert libraries and all(Path(p).parent == Path(sys.argv[1]) for p in libraries), libraries
maps = Path("/proc/self/maps").read_text()
assert "libasan" in maps and "libubsan" in maps, "the sanitizer runtimes are not loaded"
print("sanitize_ops: the tests load", *libraries)
EOF

t1=$SECONDS
rc=0
# Every test of the CPU kernels (both ops, forward and backward, float32/float64, every shape
# class and memory layout, masks, the softmax LSE outputs, fully masked rows, bad arguments, and
# each compiled ISA variant in its own process) but three: the gradchecks and torch.compile
# run the same kernels on the same small shapes again, through finite differences and a traced
# graph, and would double the time under ASan (about 60 s of 110 s on 2 cores).
deselect=(
  --deselect tests/test_ops_cpu.py::test_space_time_gradcheck
  --deselect tests/test_ops_cpu.py::test_cross_attention_gradcheck
  --deselect tests/test_ops_cpu.py::test_torch_compile_fullgraph
)
LD_PRELOAD=$preload "$py" -m pytest -q -p no:cacheprovider tests/test_ops_cpu.py \
  "${deselect[@]}" "$@" || rc=$?
echo "sanitize_ops: tests ran in $((SECONDS - t1)) s"

if compgen -G "$reports/*" >/dev/null; then
  for f in "$reports"/*; do
    echo "==== sanitizer report $f"
    cat "$f"
  done
  echo "sanitize_ops: FAILED, $(ls "$reports" | wc -l) sanitizer report(s) in $reports" >&2
  exit 1
fi
if ((rc != 0)); then
  echo "sanitize_ops: FAILED, the tests failed (rc=$rc) without a sanitizer report" >&2
  exit "$rc"
fi
echo "sanitize_ops: passed with 0 sanitizer reports ($((SECONDS - t0)) s in all)"
