"""What compiling pyobs's request path would save (issue 18): the in-process benchmark with
some of pyobs's modules compiled by mypyc, next to pyobs as it ships (pure Python).

    python benchmarks/compiled.py                       # Flask, 12 rounds, 2 replicas
    python benchmarks/compiled.py --frameworks flask,django --rounds 20 --replicas 3
    python benchmarks/compiled.py --quick               # smoke run: build, then a few requests

pyobs ships as pure Python; this is a measurement, not a build option. The script copies
the package and the benchmarks into a scratch directory, compiles the modules named by
``--modules`` there (mypyc, from the mypy the test command installs; it needs a C compiler
and the interpreter's headers), checks that those modules really load compiled, and runs
``benchmarks/overhead.py`` from the copy with ``--baseline`` pointing at this checkout
(every worker reports the pyobs modules it ran compiled, and that is checked too). So
one interleaved run has ``pyobs-metrics`` and ``pyobs-full`` compiled and
``pyobs-metrics@baseline`` and ``pyobs-full@baseline`` pure, next to the bare app and the
peers. It prints overhead.py's report, then per framework the compiled build's added time
as a share of the pure build's (below 1: compiling saves that much).

Modules left out of the default set, and why (docs/benchmarks-journal.md, "Compiling the request
path"): ``tracing`` (its module-level ``__getattr__``, which mypyc does not support, crashes
the import), ``metrics`` (a method alias and weak references to a native class fail),
``_span`` (compiled, the request span costs more, not less).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULES = ("_observer", "wsgi", "logs", "_internals", "_context", "flask")

# Run in the scratch copy: compile the named modules next to their sources.
_BUILD = """\
import sys
from setuptools import setup
from mypyc.build import mypycify

paths = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--inplace"]
setup(name="pyobs-compiled", packages=[], ext_modules=mypycify(paths, opt_level="3", separate=True))
"""


def missing_tools() -> str | None:
    """Why the compiled build cannot be made here, or None."""
    try:
        import mypyc.build  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as exc:
        return f"mypyc or setuptools is not installed ({exc.name}); pip install mypy setuptools"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "the interpreter's C headers (Python.h) are missing"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler (cc or gcc) on PATH"
    return None


def build(scratch: Path, modules: list[str]) -> None:
    """Copy pyobs and the benchmarks into ``scratch`` and compile ``modules`` there."""

    def skip(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or n.endswith((".so", ".pyd"))}

    shutil.copytree(ROOT / "pyobs", scratch / "pyobs", ignore=skip)
    shutil.copytree(ROOT / "benchmarks", scratch / "benchmarks", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")  # mypy's settings
    (scratch / "_build_compiled.py").write_text(_BUILD)
    paths = [f"pyobs/{name}.py" for name in modules]
    done = subprocess.run(
        [sys.executable, "_build_compiled.py", *paths],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SystemExit(f"compiling {', '.join(modules)} failed:\n{tail}")


def loaded_from(scratch: Path, modules: list[str]) -> dict[str, str]:
    """Where each module is imported from in the copy (a compiled one: an extension file)."""
    probe = (
        "import importlib, json, sys\n"
        "print(json.dumps({m: importlib.import_module('pyobs.' + m).__file__ "
        "for m in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *modules],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"the compiled package does not import:\n{done.stderr[-2000:]}")
    files: dict[str, str] = json.loads(done.stdout)
    return files


def check_workers(results: dict[str, Any], modules: list[str]) -> list[str]:
    """What is wrong with where the workers took pyobs from: the compiled rows must run
    every compiled module, the @baseline rows none (an empty list: as intended)."""
    wanted = sorted(f"pyobs.{name}" for name in modules)
    problems = []
    for framework, rows in results["frameworks"].items():
        for config, row in rows.items():
            if not config.startswith("pyobs") or row.get("error"):
                continue
            loaded = row["facts"].get("pyobs_compiled", [])
            expected = [] if config.endswith("@baseline") else wanted
            if [m for m in loaded if m in wanted] != expected:
                problems.append(f"{framework} {config}: compiled modules loaded: {loaded}")
    return problems


def shares(results: dict[str, Any]) -> list[str]:
    """Per framework and configuration: compiled added us / pure added us."""
    lines = []
    for framework, rows in results["frameworks"].items():
        bare = (rows.get("bare") or {}).get("us_per_request")
        for config in ("pyobs-metrics", "pyobs-full"):
            compiled = (rows.get(config) or {}).get("us_per_request")
            pure = (rows.get(config + "@baseline") or {}).get("us_per_request")
            if bare is None or compiled is None or pure is None:
                lines.append(f"{framework} {config}: not measured (a row failed)")
                continue
            added_c, added_p = compiled - bare, pure - bare
            # A pure cost at or below the bare app is noise larger than the cost itself: the
            # added times are still printed, the ratio would mean nothing.
            ratio = (
                f"= {added_c / added_p:.2f} x pure"
                if added_p > 0
                else "(no ratio: pure is within noise of the bare app)"
            )
            lines.append(
                f"{framework} {config}: compiled {added_c:+.1f} us, pure {added_p:+.1f} us {ratio}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frameworks", default="flask")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--modules",
        default=",".join(DEFAULT_MODULES),
        help="pyobs modules to compile, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few requests each")
    parser.add_argument("--json", metavar="PATH", help="also write overhead.py's JSON results")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if not (ROOT / "pyobs" / f"{m}.py").is_file()]
    if unknown:
        parser.error(f"--modules: no such module in pyobs/: {', '.join(unknown)}")
    why = missing_tools()
    if why is not None:
        print(f"cannot build the compiled variant: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pyobs-compiled-") as tmp:
        scratch = Path(tmp)
        print(f"# compiling pyobs.{', pyobs.'.join(modules)} with mypyc ...", flush=True)
        build(scratch, modules)
        files = loaded_from(scratch, modules)
        pure = [m for m, f in files.items() if f.endswith(".py")]
        if pure:
            raise SystemExit(f"not compiled after the build: {', '.join(pure)}")
        print("# rows pyobs-*: compiled; rows pyobs-*@baseline: pure Python (as shipped);")
        print("# each worker reports which pyobs modules it ran compiled, and that is checked")
        out = scratch / "results.json"
        command = [
            sys.executable,
            str(scratch / "benchmarks" / "overhead.py"),
            "--frameworks",
            args.frameworks,
            "--baseline",
            str(ROOT),
            "--json",
            str(out),
        ]
        command += ["--quick"] if args.quick else ["--rounds", str(args.rounds)]
        command += ["--replicas", str(args.replicas)]
        done = subprocess.run(command, cwd=scratch, timeout=3600)
        if done.returncode != 0:
            return done.returncode
        results = json.loads(out.read_text())
        if args.json:
            Path(args.json).write_text(json.dumps(results))
    problems = check_workers(results, modules)
    if problems:
        print("the workers did not run the builds they should:", *problems, sep="\n  ")
        return 1
    print("\n## compiled vs pure (added time over the bare app, same run)")
    for line in shares(results):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
