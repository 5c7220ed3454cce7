"""Run Flask's tutorial app (flaskr) and its own tests with pyobs instrumented, on two Flasks.

    python scripts/realapps/flaskr.py FLASK_SOURCE [--commit SHA] [--oldest 2.3.0]

FLASK_SOURCE is a source tree of Flask (a git clone of github.com/pallets/flask, or a
``.tar.gz`` of one, such as GitHub's archive of a commit). Nothing of it is kept in this
repository: the script copies flaskr (``examples/tutorial``) into a temporary directory and
builds two throwaway virtual environments with uv:

- ``source``: Flask installed from FLASK_SOURCE (its main branch, say);
- ``oldest``: the lowest Flask pyobs supports, from the package index (with Werkzeug 2.3,
  the one it was released with: Flask 2.3 does not run on Werkzeug 3).

Each gets this checkout of pyobs, pytest, and a ``conftest.py`` next to flaskr's own tests
that instruments the app the documented way (``pyobs.flask.instrument(app)`` on what
``create_app`` returns). flaskr's tests run unchanged; the run fails when one of them
fails or when pyobs observed no request. Exit code 0 when both Flasks pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OLDEST = "2.3.0"  # the lower bound of the flask extra in pyproject.toml
# Flask 2.3 reads werkzeug.__version__, which Werkzeug 3 removed: it runs with Werkzeug 2.3.
OLDEST_WERKZEUG = "werkzeug>=2.3,<3"

CONFTEST = '''\
"""Instruments flaskr the documented way; checks at the end that pyobs saw its requests."""

import flaskr
import pyobs
import pyobs.flask

_create_app = flaskr.create_app


def create_app(test_config=None):
    return pyobs.flask.instrument(_create_app(test_config))


flaskr.create_app = create_app


def pytest_sessionfinish(session, exitstatus):
    from prometheus_client import REGISTRY

    # The test client never closes its responses, so most requests stay in flight.
    seen = {"finished": 0.0, "in flight": 0.0}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == "http_server_request_duration_seconds_count":
                seen["finished"] += s.value
            elif s.name == "http_server_active_requests":
                seen["in flight"] += s.value
    print(f"\\npyobs observed {int(sum(seen.values()))} requests "
          f"({int(seen['finished'])} finished)")
    if sum(seen.values()) == 0:
        session.exitstatus = 1
'''


def flask_tree(source: Path, workdir: Path) -> Path:
    """The Flask source tree: ``source`` itself, or the tarball unpacked into ``workdir``."""
    if source.is_dir():
        return source
    with tarfile.open(source) as archive:
        archive.extractall(workdir / "flask-src", filter="data")
    (tree,) = [p for p in (workdir / "flask-src").iterdir() if p.is_dir()]
    return tree


def commit_of(tree: Path, given: str | None) -> str:
    """The commit the tree comes from: --commit, else git's answer, else "unknown"."""
    if given:
        return given
    result = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def check(name: str, flask_spec: list[str], tree: Path, workdir: Path) -> tuple[bool, str]:
    """Build one venv with ``flask_spec``, run flaskr's tests; (passed, the pytest summary)."""
    venv = workdir / f"venv-{name}"
    uv = [sys.executable, "-m", "uv"]
    if run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)]).returncode:
        return False, "could not create the virtual environment"
    python = str(venv / "bin" / "python")
    install = [*uv, "pip", "install", "--quiet", "--python", python]
    if run([*install, str(REPO), "pytest", *flask_spec]).returncode:
        return False, "could not install pyobs and Flask"
    app = workdir / f"flaskr-{name}"
    shutil.copytree(tree / "examples" / "tutorial", app)
    (app / "conftest.py").write_text(CONFTEST)
    version = run(
        [python, "-c", "import importlib.metadata as m; print(m.version('flask'))"],
        capture_output=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.update(PYTHONPATH=str(app), PYOBS_SERVICE_NAME="flaskr", PYOBS_LOG_LEVEL="WARNING")
    result = run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=app,
        env=env,
        capture_output=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    observed = next((line for line in lines if line.startswith("pyobs observed")), "")
    summary = f"Flask {version}: {lines[-1] if lines else 'no output'}; {observed}"
    if result.returncode:
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
    return result.returncode == 0, summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Flask source tree or .tar.gz of one")
    parser.add_argument("--commit", help="the commit of a tarball source (for the report)")
    parser.add_argument("--oldest", default=OLDEST, help=f"oldest Flask (default {OLDEST})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pyobs-flaskr-"))
    try:
        tree = flask_tree(args.source.resolve(), workdir)
        commit = commit_of(tree, args.commit)
        results = [
            check("source", [str(tree)], tree, workdir),
            check("oldest", [f"flask=={args.oldest}", OLDEST_WERKZEUG], tree, workdir),
        ]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nflaskr from Flask commit {commit}")
    for label, (passed, summary) in zip(("source", "oldest"), results, strict=True):
        print(f"  {label:7} {'PASS' if passed else 'FAIL'}  {summary}")
    return 0 if all(passed for passed, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
