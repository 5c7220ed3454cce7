"""Every framework's example service runs with its usual server and keeps the contract."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import import_or_require
from tests.helpers import health_ready, kill_tree, start_server, wait_until

ROOT = Path(__file__).resolve().parents[2]
# example folder -> (module it needs, the item route label)
EXAMPLES = {
    "starlette": (("starlette", "uvicorn"), "/items/{item_id:int}"),
    "flask_restful": (("flask_restful",), "/items/<int:item_id>"),
    "django": (("django", "rest_framework"), "/items/(?P<pk>[^/.]+)"),
    "tornado": (("tornado",), "/items/([0-9]+)"),
    "falcon": (("falcon",), "/items/{item_id:int}"),
    "pyramid": (("pyramid",), "/items/{item_id}"),
    "aiohttp": (("aiohttp",), "/items/{item_id}"),
    "sanic": (("sanic",), "/items/<item_id:int>"),
}
CALLS = [
    ("GET", "/items/3", 200),
    ("GET", "/items/99", 404),
    ("POST", "/items", 201),
    ("GET", "/boom", 500),
    ("GET", "/stream", 200),
    ("GET", "/slow", 200),
    ("GET", "/no/such/page", 404),
]


def _request(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = b'{"name": "widget"}' if method == "POST" else None
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_serves_the_contract(example: str, tmp_path: Path) -> None:
    """The example answers its routes, labels them with templates and prints only JSON lines."""
    modules, item_route = EXAMPLES[example]
    for module in modules:
        import_or_require(module)
    out = tmp_path / "stdout"
    proc, port = start_server(
        lambda port: [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
        health_ready,
        out,
        stderr_log=tmp_path / "stderr",
        cwd=ROOT / "examples" / example,
    )
    try:
        for method, path, expected in CALLS:
            status, body = _request(port, method, path)
            assert status == expected, (method, path, body[:200])
            if path == "/stream":
                assert body == b"".join(f"chunk {i}\n".encode() for i in range(5))
        labels = (
            f'http_route="{item_route}"',
            'http_route="/boom"',
            'http_route="<unmatched>"',
            f'framework="{example.replace("_", "-")}"',
        )

        # A WSGI server records a request when it closes the body, just after the last byte.
        def recorded() -> str | None:
            text = _request(port, "GET", "/metrics")[1].decode()
            return text if all(label in text for label in labels) else None

        with contextlib.suppress(AssertionError):
            wait_until(recorded, 5, "every request in /metrics")
        text = _request(port, "GET", "/metrics")[1].decode()
        for label in labels:
            assert label in text, label
    finally:
        proc.send_signal(signal.SIGTERM)  # a clean stop flushes the last log lines
        try:
            proc.wait(10)
        finally:
            kill_tree(proc)
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # stdout is pure JSON lines
    service = f"example-{example.replace('_', '-')}"
    access = [r for r in records if r.get("log.logger") == "pyobs.access"]
    assert {r["service.name"] for r in records} == {service}
    assert {r["url.path"] for r in access} == {p for _, p, _ in CALLS}
