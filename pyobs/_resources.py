"""Locate files shipped beside the code: the repository in a checkout, package data in a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent
_DATA_DIR = _PACKAGE_DIR / "_data"


def repo_file(relative: str) -> Path:
    """Path of a stack file (e.g. "elk/index-template.json") from a checkout or an installed wheel.

    Examples live under ``examples/`` in a checkout and ``_data/examples`` in a wheel;
    the stack files under the repository root and ``_data/stack`` respectively.
    """
    checkout = _REPO_ROOT / relative
    if (_REPO_ROOT / "pyproject.toml").is_file() and checkout.exists():
        return checkout
    if relative == "examples" or relative.startswith("examples/"):
        return _DATA_DIR / relative
    return _DATA_DIR / "stack" / relative
