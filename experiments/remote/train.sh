#!/usr/bin/env bash
# Trains from a bundle (make_bundle.sh) on a machine without the datasets,
# then packs the run into OUT so that it can be continued anywhere.
#
# Usage, from the repository root of a copy of the repository:
#   BUNDLE=path OUT=path bash experiments/remote/train.sh FLAGFILE [flags...]
# Extra flags go to experiments/train.py (e.g. --time_limit=540s).
#
# Writes to OUT: run.tgz (flags, metrics and newest checkpoint; continue with
# experiments/carry_run.py --unpack) and, once training has finished,
# params.npz and curves.png: nothing that run.tgz already holds, since a
# device call returns at most 8 files (two runs and their logs fit). Exits
# with train.py's status: 0 finished, 75 stopped by --time_limit (continue
# from OUT/run.tgz), anything else a failure (the run is still packed if it
# has a checkpoint).
set -uo pipefail
cd "$(dirname "$0")/../.."

: "${BUNDLE:?set BUNDLE to the folder made by make_bundle.sh}"
: "${OUT:?set OUT to the folder for the results}"
if [[ $# -lt 1 ]]; then
  echo "usage: BUNDLE=... OUT=... $0 FLAGFILE [train.py flags...]" >&2
  exit 2
fi
flagfile=$1
shift
python=${PYTHON:-python3}
workdir=${WORKDIR:-/tmp/vdsr_remote_run}

if compgen -G "$BUNDLE/wheels/*.whl" > /dev/null; then
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target "$site" "$BUNDLE"/wheels/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# A copy of the repository without .git cannot name its commit itself; one
# with .git records git's answer, and the bundle's beside it where the two
# differ (git metadata older than the files: see README.md).
if [[ -z "${VDSR_GIT_COMMIT:-}" && -f "$BUNDLE/COMMIT" ]]; then
  export VDSR_GIT_COMMIT=$(cat "$BUNDLE/COMMIT")
fi
head=$(git rev-parse HEAD 2>/dev/null || true)
if [[ -n "$head" && -n "${VDSR_GIT_COMMIT:-}" && "$head" != "$VDSR_GIT_COMMIT" ]]; then
  echo "warning: git names commit $head here, the bundle $VDSR_GIT_COMMIT;" \
    "both go into the run's session record" >&2
fi
if [[ -f "$BUNDLE/run.tgz" && ! -e "$workdir" ]]; then
  "$python" experiments/carry_run.py --unpack --archive="$BUNDLE/run.tgz" \
    --workdir="$workdir" || exit 1
fi

export PYTHONUNBUFFERED=1
"$python" experiments/train.py --flagfile="$flagfile" --workdir="$workdir" \
  --train_images_dir="$BUNDLE/train" --eval_images_dir="$BUNDLE/set5" \
  --noprogress "$@"
status=$?

mkdir -p "$OUT"
"$python" experiments/carry_run.py --pack --workdir="$workdir" \
  --archive="$OUT/run.tgz" || echo "no checkpoint to pack" >&2
for f in params.npz curves.png; do
  [[ -f "$workdir/$f" ]] && cp "$workdir/$f" "$OUT/"
done
exit "$status"
