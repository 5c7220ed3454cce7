"""Session fixtures: the real Elasticsearch nodes, started at once and stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import require_service
from tests.elk.esnodes import Es8Node, IngestNode

# name -> node class. "fresh" is a second 8.19 node nothing indexes into, for `elk setup`.
_NODES: dict[str, Any] = {"es": Es8Node, "ingest": IngestNode, "fresh": Es8Node}


@pytest.fixture(scope="session")
def _nodes() -> Iterator[dict[str, Any]]:
    """Start every node at once (JVM start-up dominates); a node that fails is a reason string."""
    started: dict[str, Any] = {}

    def start(name: str) -> Any:
        cls = _NODES[name]
        reason = cls.missing_reason()
        if reason:
            return reason
        node = cls()
        try:
            node.start()
        except Exception as exc:
            return f"{cls.__name__} failed to start: {exc}"
        return node

    with ThreadPoolExecutor(len(_NODES)) as pool:
        for name, result in zip(_NODES, pool.map(start, _NODES), strict=True):
            started[name] = result
    yield started
    for node in started.values():
        if not isinstance(node, str):
            node.stop()


def _url(nodes: dict[str, Any], name: str) -> str:
    node = nodes[name]
    if isinstance(node, str):
        require_service(False, node)
    return str(node.url)


@pytest.fixture
def es_url(_nodes: dict[str, Any]) -> str:
    """Base URL of the real Elasticsearch 8.19 node (skips locally, fails in CI if missing)."""
    return _url(_nodes, "es")


@pytest.fixture
def ingest_url(_nodes: dict[str, Any]) -> str:
    """Base URL of the real Elasticsearch 7.10 node that runs ingest pipelines."""
    return _url(_nodes, "ingest")


@pytest.fixture
def fresh_es(_nodes: dict[str, Any]) -> str:
    """A second Elasticsearch 8.19 node without data: `elk setup` runs on a pristine cluster."""
    return _url(_nodes, "fresh")


@pytest.fixture
def handlers() -> Iterator[list[Any]]:
    """Shipping handlers a test made; closed at the end even when it fails."""
    made: list[Any] = []
    yield made
    for handler in made:
        handler.close()
