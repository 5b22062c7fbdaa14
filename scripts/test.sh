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
# PlayCanvas splat-transform (npm) is the independent 3DGS PLY reader of
# tests/io/test_ply_external.py; installed once next to the venv, skipped without npm.
tools="$VENV/npm-tools"
if [ -z "${GPHM_SPLAT_TRANSFORM:-}" ] && command -v npm >/dev/null; then
    if [ ! -x "$tools/node_modules/.bin/splat-transform" ]; then
        echo "[gphm] installing @playcanvas/splat-transform (npm) for the PLY reader tests"
        npm install --silent --no-audit --no-fund --prefix "$tools" @playcanvas/splat-transform \
            >/dev/null 2>&1 || echo "[gphm] splat-transform unavailable; its tests will skip"
    fi
    [ -x "$tools/node_modules/.bin/splat-transform" ] \
        && export GPHM_SPLAT_TRANSFORM="$tools/node_modules/.bin/splat-transform"
fi
# The PlayCanvas engine (a web viewer of 3DGS PLYs) and playwright-core (drives the system
# chromium; downloads no browser) for tests/export/test_web_viewer.py (marker `browser`).
if command -v npm >/dev/null && { [ ! -f "$tools/node_modules/playcanvas/build/playcanvas.mjs" ] \
        || [ ! -d "$tools/node_modules/playwright-core" ]; }; then
    echo "[gphm] installing playcanvas and playwright-core (npm) for the web viewer test"
    npm install --silent --no-audit --no-fund --prefix "$tools" playcanvas@2.23.3 \
        playwright-core@1.65.2 >/dev/null 2>&1 || echo "[gphm] web viewer test will skip"
fi
export GPHM_NPM_TOOLS="$tools"
exec python -m pytest -n "$workers" --dist loadfile "$@"
