#!/usr/bin/env bash
# README's test command: set-up (venv, pinned torch, gphm[dev]) and the CPU test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/render -k gaussian`.
set -euo pipefail
. "$(dirname "$0")/_setup_env.sh"
cd "$GPHM_ROOT"
workers="${GPHM_TEST_WORKERS:-2}"
# One intra-op thread per pytest worker (2 workers on CI's 2 cores), and no busy-waiting
# OpenMP threads: spinning threads of one worker stall the other by seconds.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python -m pytest -n "$workers" --dist loadfile "$@"
