"""Session fixtures: the real Elasticsearch nodes, started once and stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_service
from tests.elk.esnodes import Es8Node, IngestNode


@pytest.fixture(scope="session")
def _es8_node() -> Iterator[Es8Node | str]:
    reason = Es8Node.missing_reason()
    if reason:
        yield reason
        return
    node = Es8Node()
    try:
        node.start()
    except Exception as exc:
        yield f"Elasticsearch 8 failed to start: {exc}"
        return
    yield node
    node.stop()


@pytest.fixture(scope="session")
def _ingest_node() -> Iterator[IngestNode | str]:
    reason = IngestNode.missing_reason()
    if reason:
        yield reason
        return
    node = IngestNode()
    try:
        node.start()
    except Exception as exc:
        yield f"ingest node failed to start: {exc}"
        return
    yield node
    node.stop()


@pytest.fixture
def es_url(_es8_node: Es8Node | str) -> str:
    """Base URL of the real Elasticsearch 8.19 node (skips locally, fails in CI if missing)."""
    if isinstance(_es8_node, str):
        require_service(False, _es8_node)
    assert isinstance(_es8_node, Es8Node)
    return _es8_node.url


@pytest.fixture
def ingest_url(_ingest_node: IngestNode | str) -> str:
    """Base URL of the real Elasticsearch 7.10 node that runs ingest pipelines."""
    if isinstance(_ingest_node, str):
        require_service(False, _ingest_node)
    assert isinstance(_ingest_node, IngestNode)
    return _ingest_node.url
