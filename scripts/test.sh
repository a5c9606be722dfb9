#!/usr/bin/env bash
# The test command of README.md (and of CI): builds the environment from nothing if needed, lints, runs pytest.
#   bash scripts/test.sh [pytest args...]      e.g.  bash scripts/test.sh -m "not slow"   or   test/unit -k geometry
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
VENV="${D3_VENV:-$ROOT/.venv}"
echo "[test] ruff check"
"$VENV/bin/ruff" check .
echo "[test] pytest"
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider --timeout=900 "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit $rc
