#!/usr/bin/env bash
# Set up .venv for trainkit: idempotent, and quick when nothing changed.
#
# torch is installed first and pinned exactly: `torch==2.13.0` is a CPU wheel this machine has
# on disk, while any other spec (or a package that pulls torch in) downloads a multi-GB CUDA
# build. Once 2.13.0 is there, pyproject's torch range is already satisfied.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
venv=.venv
py="$PWD/$venv/bin/python"
stamp="$venv/.trainkit-setup-stamp"

if [ ! -x "$py" ]; then
  echo "setup: creating $venv with $(python3 --version)" >&2
  python3 -m venv "$venv"
fi

if ! "$py" - <<'PY' 2>/dev/null
import importlib.metadata as m
raise SystemExit(m.version("torch").split("+")[0] != "2.13.0")
PY
then
  echo "setup: installing torch==2.13.0 (CPU)" >&2
  "$py" -m pip install -q torch==2.13.0
fi

# Re-install only when pyproject.toml or this script changed, or the venv cannot import
# trainkit from outside the checkout (so the editable install is missing or stale).
# Extras: "test" by default; scripts/test.sh adds "ray" (the Ray backend's tests).
extras="${TRAINKIT_EXTRAS:-test}"
want="$( (cat pyproject.toml scripts/setup.sh; echo "$extras") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
  || ! (cd / && "$py" -c 'import trainkit.cli' 2>/dev/null); then
  echo "setup: installing trainkit (editable) with extras [$extras]" >&2
  "$py" -m pip install -q -e ".[$extras]"
  echo "$want" > "$stamp"
fi

# The dashboard's browser tests (tests/test_dashboard_browser.py) drive Debian's chromium in
# headless mode. Installed only for the test extras, only where apt-get exists and we are
# root, and never fatal: without it those tests skip, saying how to install it.
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium (apt-get) for the dashboard's browser tests" >&2
  { apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "setup: chromium could not be installed; the browser tests will skip" >&2
fi
echo "setup: $venv ready" >&2
