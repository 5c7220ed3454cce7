"""Runtime behaviour: multiprocess sums, disconnects, the metrics port, OTel interplay."""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import pyobs
import pyobs.exposition
import pyobs.testing
from tests.conftest import import_or_require, run_python
from tests.core_apps import FACTORIES, Client, json_lines, sample, series
from tests.helpers import (
    PortTaken,
    asgi_get_scope,
    kill_tree,
    running,
    start_with_retry,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
DURATION = "http_server_request_duration_seconds"


WORKER = textwrap.dedent(
    """
    import sys
    from tests.core_apps import FACTORIES, Client
    framework, n = sys.argv[1], int(sys.argv[2])
    client = Client(framework, FACTORIES[framework]())
    for i in range(n):
        assert client.get(f"/items/{i}").status == 200
    client.get("/boom")
    """
)


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_multiprocess_counts_sum_exactly(
    framework: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two worker processes with PROMETHEUS_MULTIPROC_DIR add up exactly in one scrape."""
    import_or_require(framework)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    counts = (137, 211)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, framework, str(n)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n in counts
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        for proc in procs:
            kill_tree(proc)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    from prometheus_client.parser import text_string_to_metric_families

    from pyobs import exposition

    status, _, body = exposition.render(pyobs.setup(), None, None)
    assert status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == f"{DURATION}_count":
                key = s.labels["http_response_status_code"]
                totals[key] = totals.get(key, 0) + s.value
            if s.name == "pyobs_http_server_exceptions_total":
                totals["exceptions"] = totals.get("exceptions", 0) + s.value
    assert totals == {"200": sum(counts), "500": 2, "exceptions": 2}
    assert b"process_cpu_seconds_total" in body


def _stream_environ() -> dict[str, Any]:
    """A WSGI environ for GET /stream (the Flask app of tests/core_apps.py streams it)."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/stream",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": __import__("io").BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def test_wsgi_client_gone_is_499() -> None:
    """A WSGI client that disconnects mid-stream is counted as 499."""
    import_or_require("flask")
    app = FACTORIES["flask"]()
    body = app.wsgi_app(_stream_environ(), lambda status, headers, exc_info=None: None)
    next(iter(body))  # the client reads one chunk, then goes away
    body.close()
    assert sample(
        f"{DURATION}_count",
        http_request_method="GET",
        http_route="/stream",
        http_response_status_code="499",
    )


@pytest.mark.parametrize("server", ["closes first", "drops its iterator first", "reads all"])
def test_wsgi_body_end_is_told_apart_from_a_client_that_left(server: str) -> None:
    """However the server lets go of the body, a response it stopped sending is a 499 and one
    it sent to the end a 200: it closes the body while still holding its iterator (its
    loop left by a failed write), its iterator is gone first (the loop's frame unwound, the
    generator closed before close()), or it read every chunk and the end."""
    import_or_require("flask")
    app = FACTORIES["flask"]()
    before = {
        code: sample(
            f"{DURATION}_count",
            http_request_method="GET",
            http_route="/stream",
            http_response_status_code=code,
        )
        or 0
        for code in ("200", "499")
    }
    body = app.wsgi_app(_stream_environ(), lambda status, headers, exc_info=None: None)
    chunks = iter(body)
    if server == "reads all":
        assert b"".join(chunks)
    else:
        next(chunks)
        if server == "drops its iterator first":
            del chunks
    body.close()
    expected = "200" if server == "reads all" else "499"
    for code in ("200", "499"):
        now = sample(
            f"{DURATION}_count",
            http_request_method="GET",
            http_route="/stream",
            http_response_status_code=code,
        )
        assert (now or 0) - before[code] == (1 if code == expected else 0), code


@pytest.mark.parametrize("how", ["receive", "send"])
def test_asgi_client_gone_is_499(how: str) -> None:
    """An ASGI client that disconnects mid-stream is counted as 499."""
    import_or_require("fastapi")
    app = FACTORIES["fastapi"]()
    scope = asgi_get_scope("/stream", "testserver", client_port=5000)
    state = {"received": 0, "bodies": 0}

    async def receive() -> dict[str, Any]:
        state["received"] += 1
        if state["received"] == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        if how == "receive":
            await asyncio.sleep(0.15)
            return {"type": "http.disconnect"}
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            state["bodies"] += 1
            if how == "send" and state["bodies"] >= 2:
                raise OSError("connection reset by peer")

    async def main() -> None:
        try:
            await app(scope, receive, send)
        except OSError:
            pass

    asyncio.run(main())
    assert sample(
        f"{DURATION}_count",
        http_request_method="GET",
        http_route="/stream",
        http_response_status_code="499",
    )


def _own_port(**options: Any) -> tuple[Any, int]:
    """setup() with PYOBS_METRICS_PORT on a free port (another one if the port got taken)."""
    from pyobs import exposition

    def start(port: int) -> tuple[Any, int]:
        pyobs.setup(metrics_port=port, metrics_addr="127.0.0.1", **options)
        server = exposition.serving_in_this_process()
        if server is None:
            pyobs.testing.reset()
            raise PortTaken(str(port))
        return server, port

    return start_with_retry(start)


def test_metrics_on_own_port_with_auth() -> None:
    """PYOBS_METRICS_PORT serves /metrics on its own port, behind the same auth."""
    import_or_require("flask")

    def start(port: int) -> tuple[Client, int]:
        app = FACTORIES["flask"](metrics_port=port, metrics_auth="bearer:tok")
        if pyobs.exposition.serving_in_this_process() is None:
            pyobs.testing.reset()
            raise PortTaken(str(port))
        return Client("flask", app), port

    client, port = start_with_retry(start)
    client.get("/items/1")
    assert client.get("/metrics").status == 404  # not on the app any more
    url = f"http://127.0.0.1:{port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": "Bearer tok"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read().decode()
    assert 'http_route="/items/<int:item_id>"' in body


def _scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert b"pyobs_info" in response.read()
        return int(response.status)


def test_metrics_port_binds_the_configured_address() -> None:
    """PYOBS_METRICS_ADDR is the address the metrics port listens on."""
    server, port = _own_port()
    assert server.server_address[0] == "127.0.0.1"
    assert _scrape(port) == 200


def test_idle_connections_cost_no_threads_and_scrapes_still_work() -> None:
    """600 idle connections leave the thread count bounded, and a scrape is still answered."""
    from pyobs import exposition

    before = threading.active_count()
    _, port = _own_port()
    idle = []
    try:
        for _ in range(600):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert _scrape(port) == 200  # the server took every connection and still serves
        grown = threading.active_count() - before
        assert grown <= exposition.MAX_THREADS + 1, grown  # the pool and the accept loop
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("sent", [b"", b"GET /metr"], ids=["idle", "stalled-mid-request"])
def test_silent_connections_are_closed(sent: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends nothing, or stalls inside its request, is disconnected."""
    from pyobs import exposition

    monkeypatch.setattr(exposition, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(exposition._MetricsHandler, "timeout", 0.3)
    _, port = _own_port()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(sent)
        assert sock.recv(1024) == b""  # closed by the server, no answer
    assert _scrape(port) == 200


class _Holder(http.server.BaseHTTPRequestHandler):
    """Some other program on the port; records what it was sent."""

    seen: list[dict[str, str]] = []
    body = b"hello from another program\n"

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_port_taken_by_another_program_is_named_and_no_secret_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A port held by a non-pyobs program: the warning says so; credentials never leave."""
    _Holder.seen = []
    holder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Holder)
    thread = threading.Thread(target=holder.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="pyobs"):
            pyobs.setup(
                metrics_port=holder.server_port,
                metrics_addr="127.0.0.1",
                metrics_auth="basic:scraper:s3cret-pass",
            )
    finally:
        holder.shutdown()
        holder.server_close()
    messages = [r.getMessage() for r in caplog.records if r.name == "pyobs"]
    taken = [m for m in messages if "metrics port" in m]
    assert taken and "another program" in taken[0], messages
    assert "another worker" not in taken[0]
    assert f"127.0.0.1:{holder.server_port}" in taken[0]
    assert not any("s3cret" in m for m in messages)
    assert _Holder.seen and all("Authorization" not in h for h in _Holder.seen)


SIBLING = textwrap.dedent(
    """
    import sys, time
    import pyobs
    pyobs.setup(service_name=sys.argv[2], metrics_port=int(sys.argv[1]), metrics_addr="127.0.0.1")
    from pyobs import exposition
    print("serving" if exposition.serving_in_this_process() else "taken", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize(
    ("service", "expected"),
    [("shop", "another worker of service 'shop'"), ("billing", "another pyobs service")],
)
def test_port_taken_by_pyobs_says_which(
    service: str, expected: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A port held by a pyobs process: a worker of this service, or another service."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def start(port: int) -> tuple[Any, int]:
        out = tmp_path / f"sibling-{port}.out"
        with (
            out.open("w") as stdout,
            running(
                [sys.executable, "-c", SIBLING, str(port), service], env=env, stdout=stdout
            ) as proc,
        ):
            said = wait_until(lambda: out.read_text().strip(), 30, "the sibling to start")
            if said == "taken":
                raise PortTaken(str(port))
            with caplog.at_level(logging.INFO, logger="pyobs"):
                pyobs.setup(service_name="shop", metrics_port=port, metrics_addr="127.0.0.1")
            assert proc.poll() is None
        return None, port

    start_with_retry(start)
    taken = [r for r in caplog.records if r.name == "pyobs" and "metrics port" in r.getMessage()]
    assert len(taken) == 1 and expected in taken[0].getMessage(), taken[0].getMessage()
    assert "another program" not in taken[0].getMessage()


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_otel_contrib_active_means_one_server_span(framework: str) -> None:
    """With the OTel contrib instrumentation also on, a request still has one SERVER span."""
    import_or_require(framework)
    from pyobs.testing import span_exporter

    pyobs.setup()
    exporter = span_exporter()
    app: Any
    contrib: Any
    if framework == "flask":
        pytest.importorskip("opentelemetry.instrumentation.flask")
        from flask import Flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        from pyobs import flask as pyobs_flask

        app = Flask("both")
        app.get("/items/<int:item_id>")(lambda item_id: {"id": item_id})
        contrib = FlaskInstrumentor()
        contrib.instrument_app(app)
        pyobs_flask.instrument(app)
    else:
        pytest.importorskip("opentelemetry.instrumentation.fastapi")
        from fastapi import FastAPI
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        from pyobs import fastapi as pyobs_fastapi

        fastapi_app = FastAPI()

        @fastapi_app.get("/items/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        app = fastapi_app
        contrib = FastAPIInstrumentor
        contrib.instrument_app(app)
        pyobs_fastapi.instrument(app)
    try:
        assert Client(framework, app).get("/items/3").status == 200
        server_spans = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
        assert len(server_spans) == 1, [s.name for s in server_spans]
    finally:
        contrib.uninstrument_app(app)


def test_existing_tracer_provider_is_adopted() -> None:
    """An app's own global TracerProvider is kept, and pyobs's spans go through it."""
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider(resource=Resource.create({"service.name": "users-own"}))
        trace.set_tracer_provider(mine)
        import pyobs
        pyobs.setup(service_name="pyobs-name")
        assert trace.get_tracer_provider() is mine
        from pyobs.tracing import get_tracer
        span = get_tracer().start_span("x")
        assert span.resource.attributes["service.name"] == "users-own"
        print("adopted")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "adopted" in out.stdout


def test_trusted_proxy_client_ip(capsys: pytest.CaptureFixture[str]) -> None:
    """X-Forwarded-For is honoured only when the peer is a trusted proxy."""
    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"](trusted_proxies="127.0.0.0/8"))
    client.get("/items/1", headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.2"})
    untrusted = Client("flask", FACTORIES["flask"](trusted_proxies="10.0.0.0/8"))
    untrusted.get("/items/1", headers={"X-Forwarded-For": "203.0.113.9"})
    ips = [
        r["client.ip"]
        for r in json_lines(capsys.readouterr().out)
        if r["log.logger"] == "pyobs.access"
    ]
    assert ips == ["203.0.113.9", "127.0.0.1"]


def test_mounted_and_prefixed_routes_keep_full_templates() -> None:
    """Routers, prefixes and mounts (with parameters) are labelled with the whole template."""
    import_or_require("fastapi")
    from fastapi import APIRouter, FastAPI
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from pyobs import fastapi as pyobs_fastapi

    router = APIRouter(prefix="/v1")

    @router.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    async def inner(request: Any) -> PlainTextResponse:
        return PlainTextResponse("inner")

    sub = Starlette(routes=[Route("/things/{thing}", inner)])
    app = FastAPI()
    app.include_router(router)
    app.mount("/tenants/{tenant}", sub)
    pyobs_fastapi.instrument(app)
    client = Client("fastapi", app)
    assert client.get("/v1/orders/3").status == 200
    assert client.get("/tenants/acme/things/7").status == 200
    routes = {dict(labels)["http_route"] for labels in series(f"{DURATION}_count")}
    assert routes == {"/v1/orders/{order_id}", "/tenants/{tenant}/things/{thing}"}


def test_asgi_header_names_are_lower_cased_whatever_the_server_sends() -> None:
    """Header lookups work for upper-case names from a non-conforming server, repeated or not."""
    from pyobs._observer import headers_from_pairs

    assert headers_from_pairs([(b"X-Request-ID", b"abc"), (b"host", b"h")]) == {
        "x-request-id": "abc",
        "host": "h",
    }
    assert headers_from_pairs([(b"accept", b"a"), (b"Accept", b"b")]) == {"accept": "a,b"}
    assert headers_from_pairs(iter([(b"host", b"h")])) == {"host": "h"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_generated_request_ids_differ_across_forked_workers() -> None:
    """Pre-fork servers (gunicorn --preload) must not hand two workers the same id sequence,
    and an app that seeds `random` for its own reasons must not make ids repeat."""
    import random

    from pyobs._observer import request_id_for

    random.seed(7)
    first = request_id_for({})
    random.seed(7)
    assert request_id_for({}) != first
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id goes to the parent, then it leaves at once
        try:
            os.write(write_end, ",".join(request_id_for({}) for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent_ids = [request_id_for({}) for _ in range(3)]
    assert len(child_ids) == 3 and all(len(i) == 32 for i in child_ids)
    assert not set(child_ids) & set(parent_ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_counts_requests_though_the_parent_held_the_metrics_lock() -> None:
    """A parent thread may hold pyobs's metrics lock at the fork (gunicorn --preload with a
    thread logging or serving): the child gets a fresh lock, and both the in-flight gauge's
    +1 at the start of a request and its -1 at the end take that one. The child serves a
    request within 10 s (SIGALRM ends it otherwise) and its gauge is back at 0."""
    script = textwrap.dedent(
        r"""
        import os, re, signal
        from flask import Flask
        import pyobs.flask
        from pyobs.metrics import get_metrics

        app = Flask("fork")
        app.get("/x")(lambda: "ok")
        pyobs.flask.instrument(app, tracing=False, access_log=False)
        client = app.test_client()
        assert client.get("/x", buffered=True).status_code == 200  # the gauge's value cached
        held = get_metrics().lock
        held.acquire()  # as another parent thread holds it at the moment of the fork
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)
            served = client.get("/x", buffered=True).status_code == 200
            page = client.get("/metrics").text
            gauge = re.search(r'^http_server_active_requests\{[^}]*method="GET"[^}]*\} (\S+)$',
                              page, re.M)
            os._exit(0 if served and gauge and float(gauge.group(1)) == 0 else 1)
        held.release()
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        """
    )
    import_or_require("flask")
    result = run_python(script)
    assert result.stdout.strip().endswith("child exit 0"), (result.stdout, result.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_pool_process_forked_while_pyobs_threads_held_their_locks_works(
    tmp_path: Path,
) -> None:
    """A Celery worker's main process (or any parent with pyobs's threads) forks new pool
    processes while its process sampler and scrapes sample (here a thread samples without
    pause) and a message thread holds the messaging families' locks. No child may inherit a
    lock held: each of 30 children starts its own sampler, counts on a prometheus_client
    counter, counts a message to a queue it has not seen and renders its page within 10 s
    (SIGALRM ends it otherwise), with its own ``process_*`` values on it.

    Before the fix every child waited forever in ``worker_process_init`` for the sampler's
    lock: the pool process never took a task, and the tasks sent to it never ran (a Celery
    test timed out). A sample also holds prometheus_client's one lock for multiprocess
    values, which prometheus_client does not renew in a child: no fork may land in one."""
    script = textwrap.dedent(
        r"""
        import os, signal, threading
        import pyobs
        from prometheus_client import Counter
        from pyobs import _interop, _messaging, _state, exposition

        pyobs.setup(tracing=False)
        config = _state.ensure_setup()
        assert exposition.file_backed()
        counter = Counter("forked_children", "children that counted")
        counter.inc()
        families = _messaging.get_metrics()
        families.record_consumed("celery", families.destination("seen"))
        held = [_messaging._metrics_lock, families._lock, _interop._lock]
        for lock in held:
            lock.acquire()  # as a message thread or a scrape holds it at the fork

        def sample_without_pause():
            while True:
                exposition.sample_process_metrics()  # as the sampler and every scrape do

        threading.Thread(target=sample_without_pause, daemon=True).start()
        failed = 0
        for n in range(30):
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)
                exposition.start_process_sampler()
                counter.inc()
                families = _messaging.get_metrics()
                families.record_consumed("celery", families.destination(f"new-{n}"))
                status, _, body = exposition.render(config, None, None)
                page = body.decode()
                ok = (
                    status == 200
                    and f'pid="{os.getpid()}"' in page
                    and f'messaging_destination_name="new-{n}"' in page
                )
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1
                break  # one is enough (and each hung child takes its 10 s)
        print("children failed", failed)
        """
    )
    result = run_python(script, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert result.stdout.strip() == "children failed 0", (result.stdout, result.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_from_inside_a_sample_goes_ahead() -> None:
    """A fork waits for a process sample in progress, but not for one its own thread is in
    (a signal handler that forks, run between two bytecodes of a sample): after at most
    ``FORK_WAIT`` the fork goes ahead, the child works, and the parent's thread still
    holds the sampler's lock it had and releases it as usual."""
    script = textwrap.dedent(
        r"""
        import os, time
        from pyobs import exposition

        exposition._process_lock.acquire()  # this thread is inside a sample
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            exposition.start_process_sampler()  # a fresh lock in the child
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        waited = time.monotonic() - began
        still_held = exposition._process_lock.locked()
        exposition._process_lock.release()
        began = time.monotonic()
        pid = os.fork()  # the next fork takes and gives back the lock at once
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), still_held, waited < exposition.FORK_WAIT + 5,
              time.monotonic() - began < 1.0, not exposition._process_lock.locked())
        """
    )
    result = run_python(script)
    assert result.stdout.split() == ["0", "True", "True", "True", "True"], result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_no_lock_pyobs_keeps_for_the_process_is_inherited_by_a_fork_child(
    tmp_path: Path,
) -> None:
    """Every lock pyobs keeps for the process (a module global, or a field of an object a
    module holds: the metrics families, the dropped-spans count) is a new one in a fork
    child, so a lock a parent thread held at the fork cannot hang the child. Checked after
    ``setup()`` and a message counted, so the lazily made objects exist. The one exception
    is the guard the forking thread itself takes just before the fork and releases on both
    sides. Locks of objects reached only through other objects (a span processor, a log
    handler) have fork hooks of their own, tested with them."""
    script = textwrap.dedent(
        r"""
        import importlib, os, pkgutil, threading
        import pyobs
        from pyobs import _messaging

        pyobs.setup()
        _messaging.get_metrics().destination("q")
        kinds = (type(threading.Lock()), type(threading.RLock()))
        modules = []
        for info in pkgutil.walk_packages(pyobs.__path__, "pyobs."):
            if info.name.endswith("__main__"):
                continue  # runs the CLI
            try:
                modules.append(importlib.import_module(info.name))
            except ImportError:
                pass  # an optional framework that is not installed
        def locks():
            found = {}
            for module in modules:
                for name, value in vars(module).items():
                    if isinstance(value, kinds):
                        found[f"{module.__name__}.{name}"] = id(value)
                    elif type(value).__module__.startswith("pyobs") and hasattr(value, "__dict__"):
                        for field, inner in vars(value).items():
                            if isinstance(inner, kinds):
                                found[f"{module.__name__}.{name}.{field}"] = id(inner)
            return found
        before = locks()
        for expected in ("pyobs._spans.DROPPED.lock", "pyobs._messaging._metrics._lock",
                         "pyobs.metrics._metrics.lock", "pyobs.exposition._process_lock"):
            assert expected in before, (expected, sorted(before))
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            kept = sorted(name for name, i in locks().items() if before.get(name) == i)
            os.write(write_end, ",".join(kept).encode())
            os._exit(0)
        os.close(write_end)
        print("kept:", os.read(read_end, 65536).decode())
        os.waitpid(pid, 0)
        """
    )
    result = run_python(script, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert result.stdout.strip() == "kept: pyobs._multiproc._fork_guard", result.stdout


def test_event_loop_lag_probe_on_every_new_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """One lag probe per event loop: a second loop in the same thread (``asyncio.run`` again,
    as test suites do) and a loop in another thread get their own. Requests on a loop already
    probed do not ask asyncio for the running loop: before Python 3.12 every
    ``get_running_loop()`` is a ``getpid()`` system call, which showed as one extra system
    call per request on uvicorn (strace) before this fast path."""
    from pyobs import asgi

    asked: list[int] = []
    real = asyncio.get_running_loop

    def spy() -> asyncio.AbstractEventLoop:
        asked.append(1)
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", spy)

    async def serve(requests: int) -> int:
        for _ in range(requests):
            asgi.ensure_loop_lag_monitor()
            await asyncio.sleep(0)
        return sum(1 for task in asyncio.all_tasks() if task.get_name() == "pyobs-loop-lag")

    assert asyncio.run(serve(50)) == 1
    assert len(asked) == 1  # the first request of the loop only
    assert asyncio.run(serve(50)) == 1  # a new loop in the same thread: probed again
    assert len(asked) == 2
    in_thread: list[int] = []
    worker = threading.Thread(target=lambda: in_thread.append(asyncio.run(serve(5))))
    worker.start()
    worker.join(10)
    assert in_thread == [1]


def test_generated_request_ids_are_distinct_across_threads() -> None:
    """Ids are drawn many at a time and handed out one by one: threads asking at once each
    get their own, every one 32 lowercase hex digits."""
    import re
    import threading

    from pyobs._observer import request_id_for

    taken: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        for _ in range(2_500):
            into.append(request_id_for({}))

    threads = [threading.Thread(target=take, args=(ids,)) for ids in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for chunk in taken for i in chunk]
    assert len(ids) == 10_000 == len(set(ids))
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
