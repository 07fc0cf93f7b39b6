#!/usr/bin/env bash
# Runs every check CI runs, in the current (already installed) environment:
# notebooks clean, cropkit/ in sync with nbs/, inline notebook tests, the docs site, then pytest (last: CI reads its line).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "nbdev-clean leaves no diff"
nbdev-clean
if [ -n "$(git status --porcelain -- nbs)" ]; then
  git status --porcelain -- nbs; git --no-pager diff --stat -- nbs
  echo "FAIL: notebooks are not clean; run nbdev-clean and commit" >&2; exit 1
fi

step "nbdev-export leaves no diff"
nbdev-export
if [ -n "$(git status --porcelain -- cropkit pyproject.toml)" ]; then
  git status --porcelain -- cropkit pyproject.toml; git --no-pager diff --stat -- cropkit pyproject.toml
  echo "FAIL: cropkit/ does not match nbs/; run nbdev-export and commit" >&2; exit 1
fi

step "nbdev-test (inline notebook tests; slow/cuda cells skipped)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nbdev-test --n-workers "${NBDEV_WORKERS:-2}" --timing

step "docs site builds into _site/ (tools/docs.sh; the browser test opens it)"
bash tools/docs.sh

step "pytest"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
