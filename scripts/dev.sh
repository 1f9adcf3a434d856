#!/usr/bin/env bash
# Developer entry point. Creates (or reuses) the virtual environments in the repo root:
#   .venv     Python 3.11 (Blender 4.2-5.0) with bpy 5.0.1
#   .venv313  Python 3.13 (Blender 5.1+) with bpy 5.1.2, when a Python 3.13 is found
#
#   bash scripts/dev.sh demo      set up .venv, fit the bundled demo photo, write demo_out/ and a .blend
#   bash scripts/dev.sh test      set up, run the whole test suite on 3.11, then on 3.13
#   bash scripts/dev.sh test311   only the 3.11 run        bash scripts/dev.sh test313   only the 3.13 run
#   bash scripts/dev.sh setup     only set up (both venvs)
#   bash scripts/dev.sh texture-model [DATA]   rebuild the shipped texture model from ../shared/faces
#                                 (scripts/build_texture_model.sh; ~45 min on 2 cores, resumable)
#   bash scripts/dev.sh blas-matrix   the BLAS/thread-sensitive tests (numerics, the correspondence
#                                     asset, fitting units) with OPENBLAS_CORETYPE=$BLAS_CORETYPE
#                                     (default Haswell) and unset, x 1 and 2 threads, on 3.11
# Extra arguments after test/test311/test313 go to pytest.
#
# Environment:
#   PYTHON        the Python 3.11 to build .venv from (default python3)
#   PYTHON313     the Python 3.13 to build .venv313 from (default: python3.13 on PATH, then pyenv's)
#   GANFIT_SKIP_313=1        leave the 3.13 run out of `test` (not allowed under CI)
#   GANFIT_TORCH_INDEX_URL   index with a CPU torch 2.13.0 for Python 3.13 (e.g. PyTorch's CPU index)
#   GANFIT_313_NO_PYPI_TORCH=1  never take PyPI's torch for 3.13 (the CUDA build on Linux): the 3.13 run then skips the torch tests
#   CI            set by CI: no Python 3.13, a missing bpy or missing ../shared fail instead of skipping
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"

log() { echo "[dev] $*" >&2; }
in_ci() { case "${CI:-}" in ""|0|false|no) return 1 ;; *) return 0 ;; esac; }

stamp() {  # what the installed set depends on
    cat pyproject.toml engine/requirements.txt | sha256sum | cut -c1-16
}

# The test extras of pyproject.toml, one requirement a line (markers included).
test_extras() {
    "$1" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))
EOF
}

setup311() {
    local venv=.venv vpy=.venv/bin/python
    if [ ! -x "$vpy" ]; then
        log "creating $venv with $($PY --version)"
        "$PY" -m venv "$venv"
    fi
    if [ "$(cat "$venv/.ganfit-stamp" 2>/dev/null)" != "$(stamp)" ]; then
        log "installing the engine and test dependencies into $venv (a few minutes the first time)"
        "$vpy" -m pip install -q --upgrade pip
        # torch first and pinned, so that nothing resolves a bare (CUDA) torch.
        "$vpy" -m pip install -q "$TORCH_PIN"
        "$vpy" -m pip install -q -e ".[test]"
        stamp > "$venv/.ganfit-stamp"
    fi
}

# Print the path of a Python 3.13 interpreter, or nothing.
find_python313() {
    local c
    for c in ${PYTHON313:-} "$(command -v python3.13 || true)" "$HOME"/.pyenv/versions/3.13*/bin/python; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        # a pyenv shim whose version is not active fails here
        if "$c" -c 'import sys, venv; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    return 0
}

# 0 with .venv313 ready, 1 when there is no Python 3.13 (outside CI; under CI that is an error).
setup313() {
    local venv=.venv313 vpy=.venv313/bin/python py
    if [ ! -x "$vpy" ]; then
        py=$(find_python313)
        if [ -z "$py" ]; then
            if in_ci; then
                log "ERROR: no Python 3.13 found (set PYTHON313, or install one, e.g. 'pyenv install 3.13'):"
                log "       CI runs the suite on 3.11 and on 3.13 (Blender 5.1+)"
                exit 1
            fi
            log "no Python 3.13 found (set PYTHON313): the 3.13 run is left out"
            return 1
        fi
        log "creating $venv with $($py --version)"
        "$py" -m venv "$venv"
    fi
    if [ "$(cat "$venv/.ganfit-stamp" 2>/dev/null)" != "$(stamp)" ]; then
        log "installing the engine and test dependencies into $venv (a few minutes the first time)"
        "$vpy" -m pip install -q --upgrade pip
        # torch, always pinned: a CPU build from a local wheel folder (pip's find-links) or from
        # $GANFIT_TORCH_INDEX_URL when there is one. Otherwise PyPI's own torch 2.13.0 for 3.13,
        # which on Linux x86_64 is the CUDA build (~2.6 GB download, ~5 GB in the venv): it runs
        # on the CPU too, so the engine is tested on 3.13 as on 3.11. GANFIT_313_NO_PYPI_TORCH=1
        # leaves it out (then the 3.13 run skips, and counts, the tests that need torch).
        if [ -n "${GANFIT_TORCH_INDEX_URL:-}" ]; then
            "$vpy" -m pip install -q --only-binary=:all: --index-url "$GANFIT_TORCH_INDEX_URL" "$TORCH_PIN" \
                || log "no $TORCH_PIN for Python 3.13 at $GANFIT_TORCH_INDEX_URL"
        elif ! "$vpy" -m pip install -q --only-binary=:all: --no-index "$TORCH_PIN" 2>/dev/null; then
            if [ -z "${GANFIT_313_NO_PYPI_TORCH:-}" ]; then
                log "no local CPU wheel of $TORCH_PIN for Python 3.13: taking PyPI's (on Linux the CUDA build, ~5 GB; runs on the CPU)"
                "$vpy" -m pip install -q --only-binary=:all: "$TORCH_PIN" || log "could not install $TORCH_PIN for Python 3.13"
            else
                log "no local CPU wheel of $TORCH_PIN for Python 3.13 and GANFIT_313_NO_PYPI_TORCH is set"
            fi
        fi
        if "$vpy" -c 'import torch' 2>/dev/null; then
            "$vpy" -m pip install -q -e ".[test]"
        else
            "$vpy" -m pip uninstall -q -y torch 2>/dev/null || true
            # The engine's requirements without torch, the package itself without its deps.
            "$vpy" -m pip install -q -r engine/requirements.txt
            test_extras "$vpy" > "$venv/test-requirements.txt"
            "$vpy" -m pip install -q -r "$venv/test-requirements.txt"
            "$vpy" -m pip install -q --no-deps -e .
        fi
        stamp > "$venv/.ganfit-stamp"
    fi
    return 0
}

# Run pytest in one venv; a run that collected no test fails too (pytest exit 5).
run_suite() {
    local vpy=$1 label=$2 t0 rc=0
    shift 2
    local extra=()
    if ! "$vpy" -c 'import torch' 2>/dev/null; then
        log "$label: torch is not installed in this venv (no CPU torch 2.13.0 wheel for this Python"
        log "$label: here): the test modules that import it are reported as skipped, the rest runs"
        extra=(env GANFIT_TORCH_OPTIONAL=1)
    fi
    log "$label: $("$vpy" --version) -> pytest"
    t0=$(date +%s)
    "${extra[@]}" "$vpy" -m pytest -q "$@" || rc=$?
    log "$label: pytest exit $rc after $(( $(date +%s) - t0 )) s"
    return $rc
}

cmd=${1:-test}
shift || true
case "$cmd" in
    setup)
        setup311
        setup313 || true
        ;;
    test)
        setup311
        with313=0
        if [ -n "${GANFIT_SKIP_313:-}" ] && ! in_ci; then
            log "GANFIT_SKIP_313 is set: the 3.13 run is left out"
        elif setup313; then  # before the 3.11 run: its test_python313 uses .venv313
            with313=1
        fi
        rc=0
        run_suite .venv/bin/python "py3.11" "$@" || rc=$?
        if [ "$with313" = 1 ]; then
            run_suite .venv313/bin/python "py3.13" "$@" || rc=$?
        fi
        [ "$rc" = 0 ] || log "FAILED (exit $rc)"
        exit $rc
        ;;
    test311)
        setup311
        run_suite .venv/bin/python "py3.11" "$@"
        ;;
    test313)
        setup313 || { log "no Python 3.13: nothing to run"; exit 1; }
        run_suite .venv313/bin/python "py3.13" "$@"
        ;;
    blas-matrix)
        # A developer's check, not CI's: CI keeps the machine's OPENBLAS_* settings as they are.
        setup311
        tests=(tests/engine/test_correspondence.py tests/engine/test_camera.py
               tests/engine/test_align.py tests/engine/test_fit_units.py
               tests/engine/test_facemodel.py tests/engine/test_render.py
               tests/engine/test_landmarks.py tests/engine/test_recognizer.py)
        rc=0
        for core in "${BLAS_CORETYPE:-Haswell}" ""; do
            for th in 1 2; do
                if [ -n "$core" ]; then blas=(env OPENBLAS_CORETYPE="$core"); else blas=(env -u OPENBLAS_CORETYPE); fi
                log "OPENBLAS_CORETYPE=${core:-(unset)} OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=$th"
                "${blas[@]}" OMP_NUM_THREADS=$th OPENBLAS_NUM_THREADS=$th \
                    .venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}" "$@" || rc=1
            done
        done
        exit $rc
        ;;
    demo)
        setup311
        .venv/bin/python scripts/demo.py "$@"
        ;;
    texture-model)
        setup311
        bash scripts/build_texture_model.sh "$@"
        ;;
    *) echo "usage: bash scripts/dev.sh {demo|test|test311|test313|setup|blas-matrix|texture-model} [args]" >&2; exit 2 ;;
esac
