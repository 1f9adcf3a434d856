#!/usr/bin/env bash
# Developer entry point. Creates (or reuses) the virtual environment .venv in the repo root.
#   bash scripts/dev.sh demo    set up, fit the bundled demo photo, write demo_out/ and a .blend
#   bash scripts/dev.sh test    set up, run the whole test suite
#   bash scripts/dev.sh setup   only set up
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
VPY=$VENV/bin/python

setup() {
    if [ ! -x "$VPY" ]; then
        echo "[dev] creating $VENV with $($PY --version)" >&2
        "$PY" -m venv "$VENV"
    fi
    local want
    want=$(cat pyproject.toml | sha256sum | cut -c1-16)
    if [ "$(cat "$VENV/.ganfit-stamp" 2>/dev/null)" != "$want" ]; then
        echo "[dev] installing the engine and test dependencies into $VENV (a few minutes the first time)" >&2
        "$VPY" -m pip install -q --upgrade pip
        # torch first and pinned, so that nothing resolves a bare (CUDA) torch.
        "$VPY" -m pip install -q "torch==2.13.0"
        "$VPY" -m pip install -q -e ".[test]"
        echo "$want" > "$VENV/.ganfit-stamp"
    fi
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup) setup ;;
    test)
        setup
        "$VPY" -m pytest -q "$@"
        ;;
    demo)
        setup
        "$VPY" scripts/demo.py "$@"
        ;;
    *) echo "usage: bash scripts/dev.sh {demo|test|setup}" >&2; exit 2 ;;
esac
