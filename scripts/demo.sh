#!/usr/bin/env bash
# Set up, then run the quick start (examples/quickstart.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
exec .venv/bin/python examples/quickstart.py
