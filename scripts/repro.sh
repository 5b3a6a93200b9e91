#!/usr/bin/env bash
# scripts/repro.sh NAME [-S key=value ...]: the whole pipeline as `dvc exp run -n NAME`, so the run has a name
# (`dvc exp show`, `lesionseg compare NAME <exp>`); DVC keeps its outputs in its cache and leaves them in the
# workspace as `dvc repro` would. An earlier experiment NAME of this commit is replaced (DVC refuses a name
# twice per commit); if the new run fails, the earlier one is put back.
set -euo pipefail
name=$1
shift
commit=$(git rev-parse HEAD)
ref="refs/exps/${commit:0:2}/${commit:2}/$name"
if ! git show-ref --verify --quiet "$ref"; then
  exec dvc exp run -n "$name" "$@"
fi
earlier=$(git rev-parse "$ref")
git update-ref -d "$ref"
if dvc exp run -n "$name" "$@"; then
  echo "repro: experiment $name replaces the earlier $name of commit ${commit:0:7} (${earlier:0:7})"
else
  status=$?
  git show-ref --verify --quiet "$ref" || git update-ref "$ref" "$earlier"
  echo "repro: the run failed; experiment $name is still the earlier one (${earlier:0:7})" >&2
  exit $status
fi
