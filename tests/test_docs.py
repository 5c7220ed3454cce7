"""Every ```python snippet in README.md and docs/*.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib


ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
README = (ROOT / "README.md").read_text()


def snippets() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, match in enumerate(BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), snippets(), ids=[w for w, _ in snippets()])
def test_snippet_runs(where: str, code: str, tmp_path: Path) -> None:
    """The documented snippet runs without error in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"


def test_readme_has_the_two_fresh_clone_commands() -> None:
    """The README names the demo command and the test command that CI runs."""
    readme = (ROOT / "README.md").read_text()
    assert "pyobs demo" in readme
    assert "bash scripts/test.sh" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run's one command is the README's `bash scripts/test.sh`, with no other arguments."""
    readme_commands = [line for b in _bash_blocks(README) for line in b.splitlines()]
    assert "bash scripts/test.sh" in readme_commands
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    runs = [ln for ln in ci_lines if "scripts/test.sh" in ln]
    assert runs == ["exec bash scripts/test.sh"]


def test_the_readme_demo_command_uses_a_virtual_environment() -> None:
    """The first command works on a Python that refuses installs outside a venv (Debian's)."""
    first = _bash_blocks(README)[0].strip()
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")
    assert first.endswith(".venv/bin/pyobs demo --duration 60")
    extras = re.search(r'-e "\.\[([^\]]*)\]"', first)
    assert extras is not None
    declared = _pyproject()["project"]["optional-dependencies"]
    assert all(extra in declared for extra in extras.group(1).split(","))


def test_the_readme_names_every_supported_python() -> None:
    """The supported Pythons in the README are the classifiers of pyproject.toml."""
    project = _pyproject()["project"]
    prefix = "Programming Language :: Python :: "
    versions = [
        c.removeprefix(prefix)
        for c in project["classifiers"]
        if re.fullmatch(r"3\.\d+", c.removeprefix(prefix))
    ]
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
    assert project["requires-python"] == f">={versions[0]}"
    section = README.split("## Supported Python", 1)[1].split("\n## ", 1)[0]
    assert f"CPython {', '.join(versions[:-1])} and {versions[-1]}" in section


def test_the_distribution_is_pyobs_kit_and_the_readme_says_why() -> None:
    """`pip install "pyobs-kit[...]"`: the name, the `all` extra and the README's clash note."""
    project = _pyproject()["project"]
    assert project["name"] == "pyobs-kit"
    (everything,) = project["optional-dependencies"]["all"]
    assert everything.startswith("pyobs-kit[")
    named = set(everything.removeprefix("pyobs-kit[").rstrip("]").split(","))
    assert named == set(project["optional-dependencies"]) - {"all", "dev"}
    assert 'pip install "pyobs-kit[fastapi]"' in README
    assert "pyobs-core" in README


# An install hint naming the old distribution (the index's `pyobs` is an unrelated project).
OLD_HINT = re.compile(r"""install\s+["']?pyobs\[""")


def test_every_install_hint_names_pyobs_kit() -> None:
    """No README, doc, example, script or message tells users to install `pyobs[...]`."""
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]  # .git, .venv, ...
        files += [Path(dirpath) / name for name in filenames]
    offenders = []
    for path in files:
        if not path.is_file() or path.suffix not in {".md", ".py", ".sh", ".toml", ".yml", ""}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OLD_HINT.search(line) and "OLD_HINT" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == [], f"install hints still name pyobs[...]: {offenders}"


def _anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings (lower case, punctuation
    dropped, spaces to hyphens, ``-1``, ``-2`` ... on repeats)."""
    seen: dict[str, int] = {}
    anchors = set()
    for match in re.finditer(r"^#+ (.*)$", doc.read_text(), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_link_between_the_docs_resolves() -> None:
    """Each relative link in README.md, CHANGELOG.md and docs/*.md names a file that exists
    and, with a ``#fragment``, a heading that file has (sections move between pages)."""
    broken = []
    for doc in [*DOCS, ROOT / "CHANGELOG.md"]:
        outside_code = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.DOTALL | re.M)
        for target in LINK.findall(outside_code):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, fragment = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert broken == []


# A section named in prose or a comment: docs/benchmarks.md, "Scale" (a heading's start).
SECTION_REFERENCE = re.compile(r'docs/([\w-]+\.md)\)?,\s+"([^"]+)"')


def test_every_section_named_in_the_project_is_a_heading_of_that_doc() -> None:
    """References such as ``docs/benchmarks-journal.md, "Sixth round"`` in the docs, the
    changelog and the code name the start of a heading the named page has."""
    headings = {
        doc.name: [h.lower() for h in re.findall(r"^#+ (.*)$", doc.read_text(), re.M)]
        for doc in (ROOT / "docs").glob("*.md")
    }
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")]
    for folder in ("pyobs", "benchmarks", "tests", "scripts"):
        files += sorted((ROOT / folder).rglob("*.py"))
    found, unknown = 0, []
    for file in files:
        # A name may wrap onto the next line, in prose or in a comment.
        text = re.sub(r"\n\s*(#\s*)?", " ", file.read_text())
        for page, title in SECTION_REFERENCE.findall(text):
            found += 1
            start = " ".join(title.split()).lower()
            if not any(h.startswith(start) for h in headings.get(page, [])):
                unknown.append(f"{file.relative_to(ROOT)}: docs/{page}, {title!r}")
    assert found > 20  # the pattern still finds the project's references
    assert unknown == []
