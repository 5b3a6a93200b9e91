#!/usr/bin/env bash
# The pipeline as CI runs it (make ci-pipeline): `dvc exp run -n NAME` in the project folder DIR, its
# output also written to LOG (kept as an artifact when the job fails). dvc must be on PATH.
# Usage: scripts/ci_pipeline.sh DIR NAME LOG [dvc exp run options, e.g. -S key=value ...]
set -euo pipefail
dir=$1 name=$2 log=$3
shift 3
mkdir -p "$(dirname "$log")"
cd "$dir"
# `dvc exp run` commits the experiment: a fresh CI clone has no git identity.
git config user.email >/dev/null || git config user.email ci@lesionseg.invalid
git config user.name >/dev/null || git config user.name "lesionseg CI"
dvc exp run -n "$name" "$@" 2>&1 | tee "$log"
