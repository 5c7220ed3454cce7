"""The package's structure: no import circle, and docs/architecture.md names what exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyobs"
DOC = ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """pyobs modules that ``name`` imports anywhere (functions too), but under TYPE_CHECKING."""
    found: set[str] = set()
    package = (
        name
        if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists()
        else (name.rpartition(".")[0])
    )

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")
                    parent = parent[: len(parent) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                if base in known:
                    found.add(base)
                for alias in node.names:
                    if f"{base}.{alias.name}" in known:
                        found.add(f"{base}.{alias.name}")
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        if isinstance(child, ast.ExceptHandler):
                            visit(child.body)
                        elif isinstance(child, ast.stmt):
                            visit([child])

    visit(tree.body)
    found.discard(name)
    return found


def test_no_import_circle() -> None:
    """No pyobs module imports (even lazily, inside a function) a module that imports it back."""
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, tree, known) for name, tree in modules.items()}
    # A package's __init__ importing its own submodules is not a circle of concern.
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def _definitions() -> dict[str, list[list[str]]]:
    """Every function, method and class name in pyobs -> the parameter names of each."""
    found: dict[str, list[list[str]]] = {}
    for tree in _modules().values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
                found.setdefault(node.name, []).append([n for n in names if n != "self"])
            elif isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append([])
    return found


def test_architecture_doc_paths_exist() -> None:
    """Every file path docs/architecture.md cites exists in the repository."""
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:pyobs|tests|benchmarks|scripts|docs)/[\w/.-]+)`", text))
    assert paths, "the architecture doc cites no file"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md cites files that do not exist: {missing}"


def test_architecture_doc_names_and_signatures_exist() -> None:
    """Every `name(params)` the doc cites exists in pyobs with exactly those parameters."""
    text = DOC.read_text()
    definitions = _definitions()
    problems = []
    for call in re.findall(r"`([A-Za-z_][\w.]*)\(([^`()]*)\)(?: -> [^`]*)?`", text):
        dotted, params = call
        name = dotted.rsplit(".", 1)[-1]
        if name not in definitions:
            problems.append(f"{dotted}: no such function or class in pyobs")
            continue
        cited = [p.strip().split("=")[0].split(":")[0].lstrip("*") for p in params.split(",")]
        cited = [p for p in cited if p and p != "..."]
        if cited and not any(cited == sig[: len(cited)] or set(cited) <= set(sig)
                             for sig in definitions[name]):  # fmt: skip
            problems.append(f"{dotted}({params}): signatures in code: {definitions[name]}")
    foreign = {
        "ReadableSpan",
        "ContextVar",
        "LogRecord",
        "SpanLimits",
        "Exemplar",
        "BatchSpanProcessor",
        "SpanProcessor",
    }
    for name in set(re.findall(r"`([A-Z][A-Za-z]+)`", text)):
        if name not in definitions and name not in foreign:
            problems.append(f"{name}: no such class in pyobs")
    assert not problems, "docs/architecture.md has drifted:\n" + "\n".join(problems)
