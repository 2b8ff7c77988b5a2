#!/usr/bin/env bash
# Set up, then run the quick start (examples/quickstart.py) and the DDP training example
# (examples/train_ddp.py: 2 CPU workers; run it again and it resumes from its checkpoint).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
.venv/bin/python examples/quickstart.py
exec .venv/bin/python examples/train_ddp.py
