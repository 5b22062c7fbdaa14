#!/usr/bin/env bash
# README's test command: set-up (venv, pinned torch, gphm[dev]) and the CPU test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/render -k gaussian`.
set -euo pipefail
. "$(dirname "$0")/_setup_env.sh"
cd "$GPHM_ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
workers="${GPHM_TEST_WORKERS:-2}"
exec python -m pytest -n "$workers" --dist loadfile "$@"
