#!/usr/bin/env bash
# Rebuild the shipped texture model, engine/data/texture/default.pt, from ../shared/faces/.
#
#   bash scripts/dev.sh texture-model [DATA]   (sets up .venv, then runs this script)
#   DATA: the dataset folder, outside the repository (default ~/ganfit-texdata)
#
# 1. the dataset: every London/Canada photo and the congress-pd portraits inside that set's stricter
#    public-domain subset (--strict-licence), fitted with the fast preset (the same landmark accuracy
#    as balanced on this job at a fifth of the time, see engine/data/texture/MODEL_CARD.md); about
#    40 min on 2 CPU cores, resumable: run the same command again after a stop;
# 2. masked PPCA, components chosen by held-out error (a few minutes);
# 3. the held-out table and the sample/reconstruction sheets into docs/images/texture/.
# Deterministic under the seeds at a fixed thread count (--threads 2 here).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-$HOME/ganfit-texdata}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: no .venv; run it as: bash scripts/dev.sh texture-model" >&2; exit 2; }
SHARED=../shared/faces
for d in london-canada congress-pd; do
    [ -d "$SHARED/$d" ] || { echo "error: $SHARED/$d not found (the shared face sets sit beside the repo)" >&2; exit 2; }
done
"$PY" -m engine texture dataset "$SHARED/london-canada" "$SHARED/congress-pd" -o "$DATA" \
    --preset fast --strict-licence --seed 0 --threads 2 --no-progress
"$PY" -m engine texture train "$DATA" --model ppca --strict-licence --seed 0 --threads 2 \
    -o engine/data/texture/default.pt --overwrite
"$PY" -m engine texture eval "$DATA" engine/data/texture/default.pt -o docs/images/texture --samples 8
