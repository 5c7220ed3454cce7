"""The Elasticsearch test nodes: a port taken while the JVM starts means another start."""

from __future__ import annotations

import pytest

from tests.conftest import require_service
from tests.elk.esnodes import Es8Node
from tests.helpers import PortTaken, free_port, listening_socket, port_taken_in


def test_a_taken_transport_port_is_reported_as_a_lost_bind_race() -> None:
    """The node whose transport port was taken (the Netty4Transport.bind failure) says so."""
    reason = Es8Node.missing_reason()
    require_service(reason is None, reason or "")
    node = Es8Node()
    try:
        with listening_socket() as held, pytest.raises(PortTaken) as lost:
            node._start_on(free_port(), held.getsockname()[1])
    finally:
        node.stop()
    assert port_taken_in(str(lost.value)), str(lost.value)
    assert node.proc is not None and node.proc.poll() is not None
