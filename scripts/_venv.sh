# Sourced by scripts/demo and scripts/test: make .venv with Python 3.11+ and
# install stocksync into it (editable), with the extras named in $EXTRAS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  py=${PYTHON:-}
  if [ -z "$py" ]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
      if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py=$candidate
        break
      fi
    done
  fi
  [ -n "$py" ] || { echo "stocksync needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
# Bytecode for stocksync's own modules, as installing a wheel writes it: where
# PYTHONDONTWRITEBYTECODE is set, every process the demo or the tests start would
# compile them again (~0.1 s of CPU each). A stale file is only recompiled in memory.
# Only a speed-up: a source tree it cannot write to (or a full disk) is said, not fatal.
.venv/bin/python -m compileall -q agent hub stocksync tools protos >/dev/null 2>&1 ||
  echo "note: could not write stocksync's bytecode; every process compiles it instead" >&2
