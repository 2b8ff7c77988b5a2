#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, import-linter, pytest. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow" -x tests/runtime`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TRAINKIT_EXTRAS=test,ray bash scripts/setup.sh
bin=.venv/bin

echo "== ruff check" >&2
"$bin/ruff" check .

echo "== lint-imports" >&2
"$bin/lint-imports" --no-logo

echo "== mypy --strict" >&2
"$bin/mypy"

echo "== pytest" >&2
rc=0
"$bin/python" -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5); that is a failure, not a pass." >&2
  exit 1
fi
exit "$rc"
