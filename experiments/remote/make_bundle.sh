#!/usr/bin/env bash
# Prepares what a bare accelerator machine needs to train vdsr_jax, in one
# folder to carry there (about 25 MB; see experiments/remote/README.md):
#   BUNDLE/train/     train291 as 8-bit luminance PNGs (export_luminance.py)
#   BUNDLE/set5/      Set5 likewise, for the periodic evaluation
#   BUNDLE/wheels/    pure-Python wheels of the pinned flax, optax,
#                     orbax-checkpoint and tensorboardX (requirements.txt),
#                     for a machine whose own versions differ
#   BUNDLE/run.tgz    optional: a run to continue (experiments/carry_run.py),
#                     packed from a workdir or copied from a run archive
#
# Usage: bash experiments/remote/make_bundle.sh BUNDLE [WORKDIR_OR_RUN_TGZ]
# Needs the shared datasets (VDSR_DATA_DIR or ../shared/datasets) and pip
# access to the package index. BUNDLE must not exist.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 BUNDLE [WORKDIR_OR_RUN_TGZ]" >&2
  exit 2
fi
bundle=$1
if [[ -e "$bundle" ]]; then
  echo "error: $bundle already exists; choose a new folder." >&2
  exit 2
fi
python=${PYTHON:-python}
tmp=$(mktemp -d "${bundle%/}.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$python" experiments/export_luminance.py --dataset=train291 --out="$tmp/train"
"$python" experiments/export_luminance.py --dataset=set5 --out="$tmp/set5"
pins=()
for name in flax optax orbax-checkpoint tensorboardX; do
  pin=$(grep -i "^${name}==" requirements.txt) || {
    echo "error: requirements.txt pins no $name" >&2; exit 1; }
  pins+=("$pin")
done
"$python" -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation py --abi none --platform any \
  -d "$tmp/wheels" "${pins[@]}"
if [[ $# -eq 2 && -f "$2" ]]; then
  cp "$2" "$tmp/run.tgz"
elif [[ $# -eq 2 ]]; then
  "$python" experiments/carry_run.py --pack --workdir="$2" \
    --archive="$tmp/run.tgz"
fi
git rev-parse HEAD > "$tmp/COMMIT" 2>/dev/null || echo unknown > "$tmp/COMMIT"
mv "$tmp" "$bundle"
trap - EXIT
du -sh "$bundle"
