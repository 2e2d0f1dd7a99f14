#!/usr/bin/env bash
# A bounded sample of `make mutants` for CI: N random mutants of the trust boundary
# (default 12); fails if one survives that mutation/equivalent.txt does not list.
# The seed is printed, so a failing sample can be rerun exactly:
#   scripts/mutants-sample.sh 12 --seed 1234
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-12}
shift || true
exec "${PYTHON:-.venv/bin/python}" scripts/mutants.py --sample "$n" --jobs 2 "$@"
