#!/usr/bin/env bash
# Carry NVIDIA DALI to the GPU machine, which has no DALI and no network and takes at most
# 64 MiB of ignored files per call (../shared/design/BUILD-NOTES.md, "Carrying DALI").
#
#   bash scripts/carry_dali.sh prepare [DIR]   # here: download the wheels for the GPU machine's
#                                              # Python 3.12, split them into call folders
#                                              # (WHEELS_FROM=folder: use those wheels instead)
#   bash scripts/carry_dali.sh check [DIR]     # reassemble and check sizes and sha256 only
#   bash scripts/carry_dali.sh install [DIR]   # there, after every call folder has arrived:
#                                              # reassemble, check sha256, pip install --no-deps
#
# prepare writes DIR/callN/ and DIR/manifest.txt (one line per wheel: sha256, size, name,
# parts). A call carries the working tree too and 64 MiB in all, so a call folder holds at most
# 64 MiB - the working tree - 2 MiB (CALL_MIB overrides). Carry one call folder per device call
# while the machine stays warm (ignored paths already there are kept between calls), e.g.
# run(command="ls .dali", carry=[".dali/call1"]), then .dali/call2, ...; the last one runs
# `bash scripts/carry_dali.sh install` with DIR/manifest.txt carried, which installs into
# DIR/site (kept while the machine is warm): later commands start with
# `export PYTHONPATH=$PWD/.dali/site`. DIR defaults to .dali (git-ignored).
#
# Other wheels travel the same way: SPEC names what to download, IMPORT the module install
# checks. Ray for bench/bench_engines.py on the GPU machine (scripts/gpu_check.sh, step
# ray-bench; ~143 MiB without numpy: 4 calls beside a ~20 MiB working tree):
#   SPEC='ray[data]==2.60.0' IMPORT=ray.data bash scripts/carry_dali.sh prepare .ray
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}
dir=${2:-.dali}
SPEC=${SPEC:-${DALI_SPEC:-nvidia-dali-cuda130==2.4.0}}
IMPORT=${IMPORT:-nvidia.dali}
tree_bytes() {  # what travels with every call: tracked and untracked-not-ignored files
  { git ls-files -z; git ls-files -z -o --exclude-standard; } | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}'
}
CALL_MIB=${CALL_MIB:-$(( (64 * 1048576 - $(tree_bytes)) / 1048576 - 2 ))}
PART_MIB=${PART_MIB:-$CALL_MIB}

prepare() {
  [ "$CALL_MIB" -ge 8 ] || { echo "the working tree leaves only $CALL_MIB MiB per call" >&2; exit 1; }
  echo "call folders of at most $CALL_MIB MiB (the working tree travels with each)"
  rm -rf "$dir" && mkdir -p "$dir/wheels"
  if [ -n "${WHEELS_FROM:-}" ]; then  # wheels already downloaded (or a test's)
    cp "$WHEELS_FROM"/*.whl "$dir/wheels/"
  else
    python3 -m pip download -q --only-binary :all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
      -d "$dir/wheels" "$SPEC"
  fi
  # The GPU machine's image has these already (BUILD-NOTES): do not carry them.
  rm -f "$dir"/wheels/numpy-* "$dir"/wheels/PyYAML-* "$dir"/wheels/pyyaml-* \
    "$dir"/wheels/six-* "$dir"/wheels/packaging-* "$dir"/wheels/typing_extensions-*
  mkdir -p "$dir/parts"
  : > "$dir/manifest.txt"
  for whl in "$dir"/wheels/*.whl; do
    name=$(basename "$whl")
    size=$(stat -c %s "$whl")
    sum=$(sha256sum "$whl" | cut -d' ' -f1)
    split -b "${PART_SIZE:-${PART_MIB}M}" -d -a 2 "$whl" "$dir/parts/$name.part"
    parts=$(cd "$dir/parts" && ls "$name".part* | tr '\n' ' ')
    echo "$sum $size $name $parts" >> "$dir/manifest.txt"
  done
  # First-fit decreasing: parts into call folders of at most CALL_MIB.
  python3 - "$dir" "${CALL_BYTES:-$((CALL_MIB * 1048576))}" <<'PY'
import os, shutil, sys
d, limit = sys.argv[1], int(sys.argv[2])
parts = sorted(os.listdir(f"{d}/parts"), key=lambda p: -os.path.getsize(f"{d}/parts/{p}"))
calls: list[list[str]] = []
sizes: list[int] = []
for p in parts:
    s = os.path.getsize(f"{d}/parts/{p}")
    if s > limit:
        sys.exit(f"{p}: {s} bytes, more than one call carries ({limit})")
    for i, used in enumerate(sizes):
        if used + s <= limit:
            calls[i].append(p)
            sizes[i] += s
            break
    else:
        calls.append([p])
        sizes.append(s)
for i, (names, used) in enumerate(zip(calls, sizes), start=1):
    os.makedirs(f"{d}/call{i}")
    for p in names:
        shutil.move(f"{d}/parts/{p}", f"{d}/call{i}/{p}")
    print(f"{d}/call{i}: {len(names)} parts, {used / 2**20:.1f} MiB")
PY
  rmdir "$dir/parts"
  rm -rf "$dir/wheels"
  echo "manifest: $dir/manifest.txt ($(wc -l < "$dir/manifest.txt") wheels)"
}

reassemble() {
  [ -f "$dir/manifest.txt" ] || { echo "$dir/manifest.txt: missing (run prepare here)" >&2; exit 1; }
  mkdir -p "$dir/wheels"
  while read -r sum size name parts; do
    out="$dir/wheels/$name"
    : > "$out"
    for p in $parts; do
      src=$(ls "$dir"/call*/"$p" 2>/dev/null | head -1 || true)
      [ -n "$src" ] || { echo "$p: not carried yet (its call folder is missing)" >&2; exit 1; }
      cat "$src" >> "$out"
    done
    got=$(sha256sum "$out" | cut -d' ' -f1)
    [ "$(stat -c %s "$out")" = "$size" ] && [ "$got" = "$sum" ] ||
      { echo "$name: size or sha256 differs from the manifest" >&2; exit 1; }
  done < "$dir/manifest.txt"
  echo "$(wc -l < "$dir/manifest.txt") wheels reassembled in $dir/wheels, sizes and sha256 as the manifest"
}

install() {
  reassemble
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$dir/site" "$dir"/wheels/*.whl
  PYTHONPATH="$PWD/$dir/site${PYTHONPATH:+:$PYTHONPATH}" \
    python3 -c "import $IMPORT as m; print('$IMPORT', getattr(m, '__version__', ''), 'in $dir/site')"
}

case "$cmd" in
  prepare) prepare ;;
  check) reassemble ;;
  install) install ;;
  *) sed -n 2,24p "$0" >&2; exit 2 ;;
esac
