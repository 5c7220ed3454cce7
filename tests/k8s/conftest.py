"""Fixtures for the Kubernetes tests: the helm binary (skipped locally when absent)."""

from __future__ import annotations

import pytest

from tests.k8s import kube


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The helm 3 binary scripts/setup.d/50-helm.sh builds; skips (fails in CI) without it."""
    return kube.helm_binary()
