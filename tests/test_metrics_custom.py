"""Metric customisation: buckets, static labels, a per-request label hook, a name prefix, an
injected registry, body-size histograms switched off, and pyobs_info's one series."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import pyobs
from tests.core_apps import Client, make_fastapi, make_flask, sample, series

ROOT = Path(__file__).resolve().parents[1]
ITEM = {"http_request_method": "GET", "http_route": "/items/<int:item_id>"}


def _all_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_duration_buckets_per_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYOBS_DURATION_BUCKETS sets the duration histogram's bucket bounds (plus +Inf)."""
    monkeypatch.setenv("PYOBS_DURATION_BUCKETS", "0.1,0.5,2")
    client = Client("flask", make_flask(request_size_buckets=[10, 1000]))
    client.get("/items/1")
    page = _all_samples(client.get("/metrics").text)
    bounds = {labels["le"] for labels, _ in page["http_server_request_duration_seconds_bucket"]}
    assert bounds == {"0.1", "0.5", "2.0", "+Inf"}
    client.request("POST", "/items", body=b"x" * 50)
    page = _all_samples(client.get("/metrics").text)
    sizes = {labels["le"] for labels, _ in page["http_server_request_body_size_bytes_bucket"]}
    assert sizes == {"10.0", "1000.0", "+Inf"}


def test_malformed_buckets_fail_setup_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buckets that are not increasing numbers fail setup() with the variable's name."""
    monkeypatch.setenv("PYOBS_DURATION_BUCKETS", "1,0.5")
    with pytest.raises(pyobs.ConfigError, match="PYOBS_DURATION_BUCKETS"):
        pyobs.setup()


def test_static_labels_on_every_http_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYOBS_METRICS_LABELS adds constant labels to the HTTP series and the exceptions counter."""
    monkeypatch.setenv("PYOBS_METRICS_LABELS", "team=payments,region=eu")
    client = Client("flask", make_flask())
    client.get("/items/1")
    client.get("/boom")
    labels = {**ITEM, "http_response_status_code": "200", "team": "payments", "region": "eu"}
    assert sample("http_server_request_duration_seconds_count", **labels) == 1
    assert sample("http_server_response_body_size_bytes_count", **labels) == 1
    assert sample("http_server_active_requests", http_request_method="GET", team="payments",
                  region="eu") == 0  # fmt: skip
    assert (
        sample(
            "pyobs_http_server_exceptions_total",
            http_request_method="GET",
            http_route="/boom",
            error_type="RuntimeError",
            team="payments",
            region="eu",
        )
        == 1
    )


def test_static_label_may_not_shadow_a_pyobs_label() -> None:
    """A static label named like one of pyobs's own labels is refused with a clear message."""
    with pytest.raises(pyobs.ConfigError, match="http_route"):
        pyobs.setup(metrics_labels={"http_route": "x"})


def test_request_label_hook_is_cardinality_guarded() -> None:
    """The hook's values become labels; past max_routes distinct values they are <overflow>."""

    def tenant(request: Any) -> dict[str, str]:
        return {"tenant": request.headers.get("x-tenant", "none")}

    client = Client(
        "flask",
        make_flask(request_label_names=("tenant",), request_label_hook=tenant, max_routes=3),
    )
    for name in ("a", "b", "c", "d", "e"):
        client.get("/items/1", headers={"X-Tenant": name})
    tenants = {
        dict(labels).get("tenant")
        for labels in series("http_server_request_duration_seconds_count")
    }
    assert tenants == {"a", "b", "c", "<overflow>"}
    overflow = sample(
        "http_server_request_duration_seconds_count",
        **ITEM,
        http_response_status_code="200",
        tenant="<overflow>",
    )
    assert overflow == 2
    assert (sample("pyobs_cardinality_overflow_total") or 0) >= 2


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_label_hook_sees_query_scheme_and_client_with_metrics_only(framework: str) -> None:
    """docs/configuration.md promises the hook the request's query, scheme and client; with
    tracing and the access log off (metrics only) it once got empty defaults instead."""
    seen: list[tuple[str, str, str | None]] = []

    def plan(facts: Any) -> dict[str, str]:
        seen.append((facts.query, facts.scheme, facts.client_addr))
        return {"plan": facts.query.partition("=")[2]}

    options: dict[str, Any] = {
        "request_label_names": ("plan",),
        "request_label_hook": plan,
        "tracing": False,
        "access_log": False,
    }
    app = make_flask(**options) if framework == "flask" else make_fastapi(**options)
    assert Client(framework, app).get("/items/1?plan=gold").status == 200
    query, scheme, client = seen[0]
    assert (query, scheme) == ("plan=gold", "http")
    assert client  # the test client's peer address
    plans = {
        dict(labels).get("plan") for labels in series("http_server_request_duration_seconds_count")
    }
    assert plans == {"gold"}


def test_a_failing_label_hook_still_counts_the_request() -> None:
    """A hook that raises costs only its label (empty): the request is counted, the gauge is 0."""

    def broken(request: Any) -> dict[str, str]:
        raise KeyError("no tenant")

    client = Client("flask", make_flask(request_label_names=("tenant",), request_label_hook=broken))
    assert client.get("/items/1").status == 200
    labels = {**ITEM, "http_response_status_code": "200", "tenant": ""}
    assert sample("http_server_request_duration_seconds_count", **labels) == 1
    assert sample("http_server_active_requests", http_request_method="GET") == 0


def test_metric_name_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYOBS_METRICS_PREFIX prefixes every pyobs metric (and only those)."""
    monkeypatch.setenv("PYOBS_METRICS_PREFIX", "shop_")
    client = Client("flask", make_flask())
    client.get("/items/1")
    page = _all_samples(client.get("/metrics").text)
    assert "shop_http_server_request_duration_seconds_count" in page
    assert "http_server_request_duration_seconds_count" not in page
    assert "shop_pyobs_info" in page
    assert "python_info" in page  # prometheus_client's own collectors keep their names


def test_injected_registry_is_the_one_served() -> None:
    """metrics_registry=: pyobs's instruments live there and /metrics renders it."""
    registry = CollectorRegistry()
    client = Client("flask", make_flask(metrics_registry=registry))
    client.get("/items/1")
    labels = {**ITEM, "http_response_status_code": "200"}
    assert registry.get_sample_value("http_server_request_duration_seconds_count", labels) == 1
    assert sample("http_server_request_duration_seconds_count", **labels) is None
    page = _all_samples(client.get("/metrics").text)
    assert page["http_server_request_duration_seconds_count"] == [(labels, 1.0)]


def test_body_size_histograms_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYOBS_BODY_SIZE_METRICS=false: no body-size families; durations still recorded."""
    monkeypatch.setenv("PYOBS_BODY_SIZE_METRICS", "false")
    client = Client("flask", make_flask())
    client.request("POST", "/items", body=b"abc")
    page = _all_samples(client.get("/metrics").text)
    assert not any(name.startswith("http_server_re") and "body_size" in name for name in page)
    assert page["http_server_request_duration_seconds_count"]


def test_native_histograms_are_not_offered_by_prometheus_client() -> None:
    """Documented limit: prometheus_client's Histogram has no native-histogram option yet.

    This fails when a release adds one, so pyobs can offer it (docs/configuration.md).
    """
    import inspect

    from prometheus_client import Histogram

    parameters = inspect.signature(Histogram.__init__).parameters
    assert not any("native" in name for name in parameters)


def _info_series(text: str) -> list[tuple[dict[str, str], float]]:
    return _all_samples(text).get("pyobs_info", [])


def test_pyobs_info_has_one_series_reading_one() -> None:
    """setup() before instrument(): one pyobs_info series, framework filled in, value 1."""
    pyobs.setup(service_name="shop")
    client = Client("flask", make_flask())
    info = _info_series(client.get("/metrics").text)
    assert len(info) == 1
    labels, value = info[0]
    assert (labels["framework"], labels["service_name"], value) == ("flask", "shop", 1.0)


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_pyobs_info_under_gunicorn_multiprocess(tmp_path: Path, preload: bool) -> None:
    """Under gunicorn with a multiprocess directory: one pyobs_info series, reading 1."""
    from tests.frameworks.servers import free_port

    app_file = tmp_path / "infoapp.py"
    app_file.write_text(
        textwrap.dedent(
            """
            import pyobs
            from flask import Flask
            import pyobs.flask

            pyobs.setup(service_name="info-check")
            app = Flask("info")

            @app.get("/")
            def index():
                return "ok"

            pyobs.flask.instrument(app)
            """
        )
    )
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from pyobs.gunicorn import child_exit, on_starting, post_fork  # noqa\n")
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    args = [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", "2",
            "-b", f"127.0.0.1:{port}", "infoapp:app"]  # fmt: skip
    if preload:
        args.insert(3, "--preload")
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        page = _get_when_up(f"http://127.0.0.1:{port}/metrics", proc)
        for _ in range(5):
            _get_when_up(f"http://127.0.0.1:{port}/", proc)
        page = _get_when_up(f"http://127.0.0.1:{port}/metrics", proc)
        info = _info_series(page)
        assert len(info) == 1, info
        assert info[0][0]["framework"] == "flask"
        assert info[0][1] == 1.0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get_when_up(url: str, proc: subprocess.Popen[bytes]) -> str:
    import time
    import urllib.error
    import urllib.request

    for _ in range(300):
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")
