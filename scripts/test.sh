#!/usr/bin/env bash
# Runs every test from a fresh clone: installs what the tests need, then lint, types, tests.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

export PYOBS_REQUIRE_SERVICES="${PYOBS_REQUIRE_SERVICES:-1}"
PYTHON="${PYTHON:-python3}"

echo "== install: Python packages"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[all,dev]"

# Extra installers (Debian packages, Maven artifacts, ...), one file per area, run in order.
for step in scripts/setup.d/*.sh; do
    [ -e "$step" ] || continue
    echo "== install: $step"
    bash "$step"
done

echo "== ruff"
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check pyobs
echo "== mypy"
"$PYTHON" -m mypy pyobs                      # strict (see pyproject.toml)
"$PYTHON" -m mypy tests benchmarks          # default strictness for the rest
for example in examples/*/app.py; do          # every example is app.py: one at a time
    "$PYTHON" -m mypy "$example"
done

echo "== pytest"
set +e
"$PYTHON" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
