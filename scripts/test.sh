#!/usr/bin/env bash
# Runs every test from a fresh clone; this is what CI runs (.ci/run).
#
#   bash scripts/test.sh                 # everything (see below)
#   bash scripts/test.sh tests/x.py -k y # the same installs, then only these pytest args, on 3.11
#
# 1. Installs uv (pinned) with the interpreter's own pip, however old, into .cache/.
# 2. Makes one virtual environment per tested Python from the committed uv.lock
#    (`uv sync --locked --all-extras`): .venv for Python 3.11 (the full suite), and
#    .venv-3.X for the oldest and newest other supported Pythons found on PATH as
#    python3.X (no interpreter is downloaded).
# 3. Runs the extra installers in scripts/setup.d (Debian packages, Maven artifacts, Go builds).
# 4. ruff and mypy, then the full pytest suite on 3.11 on two workers (it includes the wheel
#    test), then the library's own tests (LIBRARY_TESTS) on the other Pythons, then the
#    compatibility smoke run (oldest and newest Flask, scripts/compat.py --smoke).
# Any failing step fails the command; pytest collecting no test is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

export PYOBS_REQUIRE_SERVICES="${PYOBS_REQUIRE_SERVICES:-1}"
UV_VERSION=0.13.9
FULL_PYTHON=3.11                       # the full suite runs here
SUPPORTED_PYTHONS="3.10 3.11 3.12 3.13" # as pyproject.toml's classifiers
# The full suite runs on two pytest-xdist workers, each file on one worker; tests/conftest.py
# also keeps the Elasticsearch and Kafka users together (their services start once).
FULL_SUITE_ARGS=(-n 2 --dist loadfile)
# The library's own tests: everything but the stack, Elasticsearch/Logstash, Prometheus-asset
# and Kubernetes suites (those test files this repository ships, not the library, and need
# Python 3.11 tools), the overhead benchmarks (performance, measured on 3.11) and the tests
# marked slow (many processes or a service stack each; the code paths they drive are the
# ones the remaining tests run on every Python).
LIBRARY_TESTS=(tests --ignore=tests/stack --ignore=tests/elk --ignore=tests/prometheus
    --ignore=tests/k8s --ignore=tests/test_benchmarks.py -m "not slow")

# Compiled bytecode is kept, under .cache/pycache rather than beside the sources: the tests
# start hundreds of fresh interpreters, and with PYTHONDONTWRITEBYTECODE set each one compiled
# the OTel SDK, the frameworks and pyobs again (1.6 s instead of 0.8 s per import of
# pyobs.flask on our machines).
export PYTHONPYCACHEPREFIX="$ROOT/.cache/pycache"
unset PYTHONDONTWRITEBYTECODE
# Interpreters come from this machine only: uv must never download one.
export UV_PYTHON_DOWNLOADS=never
export UV_PYTHON_PREFERENCE=only-system
unset VIRTUAL_ENV PYTHONPATH

find_python() {  # find_python 3.X: print the path of a working Python 3.X, or nothing
    local version="$1" found candidate
    if found="$("python$version" -c 'import sys; print(sys.executable)' 2>/dev/null)"; then
        echo "$found"
        return
    fi
    # pyenv puts a shim for every installed version on PATH, but only the selected ones run.
    if command -v pyenv >/dev/null; then
        for candidate in $(pyenv versions --bare 2>/dev/null | grep -E "^${version//./\\.}(\\.[0-9]+)?$" \
                | sort -t. -k3,3n -r); do
            if found="$(PYENV_VERSION="$candidate" pyenv which "python$version" 2>/dev/null)"; then
                echo "$found"
                return
            fi
        done
    fi
}

FULL_INTERPRETER="$(find_python "$FULL_PYTHON")"
if [ -z "$FULL_INTERPRETER" ]; then
    echo "python$FULL_PYTHON was not found: the full suite needs it" >&2
    exit 1
fi
# The Pythons to test on: FULL_PYTHON, then the oldest and newest other supported one present.
declare -A INTERPRETER=(["$FULL_PYTHON"]="$FULL_INTERPRETER")
others=()
for version in $SUPPORTED_PYTHONS; do
    [ "$version" = "$FULL_PYTHON" ] && continue
    found="$(find_python "$version")"
    [ -n "$found" ] || continue
    INTERPRETER["$version"]="$found"
    others+=("$version")
done
extra_pythons=()
if [ "${#others[@]}" -gt 0 ]; then
    extra_pythons+=("${others[0]}")
    last="${others[${#others[@]}-1]}"
    [ "$last" != "${others[0]}" ] && extra_pythons+=("$last")
fi
echo "== Pythons: $FULL_PYTHON (full suite) ${extra_pythons[*]/%/ (library tests)}"

echo "== install: uv $UV_VERSION"
install_started=$SECONDS
UV_HOME="$ROOT/.cache/uv-$UV_VERSION"
UV="$UV_HOME/bin/uv"
if ! [ -x "$UV" ] || ! "$UV" --version 2>/dev/null | grep -q "^uv $UV_VERSION\b"; then
    # --target works with any pip (23.x included) and also beside an externally managed
    # (Debian) Python, since it writes only into .cache.
    rm -rf "$UV_HOME"
    "$FULL_INTERPRETER" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$UV_HOME" "uv==$UV_VERSION"
fi
"$UV" --version

venv_of() {  # the environment directory of one Python version
    if [ "$1" = "$FULL_PYTHON" ]; then echo "$ROOT/.venv"; else echo "$ROOT/.venv-$1"; fi
}

for version in "$FULL_PYTHON" "${extra_pythons[@]}"; do
    echo "== install: Python $version packages from uv.lock into $(basename "$(venv_of "$version")")"
    started=$SECONDS
    UV_PROJECT_ENVIRONMENT="$(venv_of "$version")" "$UV" sync --locked --all-extras \
        --quiet --python "${INTERPRETER[$version]}"
    echo "   ($((SECONDS - started)) s)"
done
echo "== install: Python packages done in $((SECONDS - install_started)) s"
VENV="$(venv_of "$FULL_PYTHON")"
PYTHON="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"   # `pyobs`, `uv`, `twine` of the locked environment

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
"$PYTHON" -m mypy tests benchmarks scripts/compat.py  # default strictness for the rest
for example in examples/*/app.py; do          # every example is app.py: one at a time
    "$PYTHON" -m mypy "$example"
done

failed=()
run_pytest() {  # run_pytest LABEL PYTHON ARGS...: pytest, where "no test collected" fails
    local label="$1" python="$2"
    shift 2
    echo "== pytest on Python $label"
    set +e
    PATH="$(dirname "$python"):$PATH" "$python" -m pytest "$@"   # its own `pyobs` first
    local rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests on Python $label: that is a failure" >&2
    fi
    [ "$rc" -eq 0 ] || failed+=("pytest on Python $label (exit $rc)")
}

if [ "$#" -gt 0 ]; then
    run_pytest "$FULL_PYTHON" "$PYTHON" "$@"
else
    run_pytest "$FULL_PYTHON (full suite)" "$PYTHON" "${FULL_SUITE_ARGS[@]}"
    # The other Pythons' library runs go side by side, one per core (each is CPU-bound);
    # each writes its own log, shown when both are done.
    logs="$(mktemp -d)"
    pids=()
    for version in "${extra_pythons[@]}"; do
        python="$(venv_of "$version")/bin/python"
        (
            set +e
            PATH="$(dirname "$python"):$PATH" "$python" -m pytest -p no:cacheprovider \
                "${LIBRARY_TESTS[@]}" >"$logs/$version.log" 2>&1
            echo $? >"$logs/$version.rc"
        ) &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for version in "${extra_pythons[@]}"; do
        echo "== pytest on Python $version (library tests)"
        cat "$logs/$version.log"
        rc="$(cat "$logs/$version.rc" 2>/dev/null || echo 1)"
        if [ "$rc" -eq 5 ]; then
            echo "pytest collected no tests on Python $version: that is a failure" >&2
        fi
        [ "$rc" -eq 0 ] || failed+=("pytest on Python $version (library tests) (exit $rc)")
    done
    rm -rf "$logs"
    echo "== compatibility smoke run: oldest and newest Flask (scripts/compat.py --smoke)"
    "$PYTHON" scripts/compat.py --smoke || failed+=("compatibility smoke run")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "== all steps passed"
