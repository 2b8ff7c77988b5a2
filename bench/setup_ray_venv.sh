#!/usr/bin/env bash
# Build the Ray 2.60 reference environment in bench/.venv-ray (idempotent).
#   bash bench/setup_ray_venv.sh
# Skips everything when bench/.venv-ray/bin/python can already `import ray`.
# The package set is the anchor's: ../shared/anchors/ray/requirements-anchor.txt
# (override with RAY_ANCHOR_REQ=/path/to/requirements-anchor.txt).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
VENV="$BENCH_DIR/.venv-ray"
REQ="${RAY_ANCHOR_REQ:-$ROOT/../shared/anchors/ray/requirements-anchor.txt}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import ray" >/dev/null 2>&1; then
    echo "setup_ray_venv: $VENV already has ray $("$VENV/bin/python" -c 'import ray; print(ray.__version__)'), nothing to do"
    exit 0
fi
if [ ! -f "$REQ" ]; then
    echo "setup_ray_venv: requirements file not found: $REQ" >&2
    exit 1
fi

python3 -m venv "$VENV"
# torch first, pinned to the CPU wheel kept on the machine (another version pulls CUDA builds)
"$VENV/bin/pip" install torch==2.13.0
"$VENV/bin/pip" install -r "$REQ"
"$VENV/bin/python" -c "import ray; print('setup_ray_venv: ray', ray.__version__, 'ready in $VENV')"
