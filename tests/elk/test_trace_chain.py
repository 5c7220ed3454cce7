"""The chain a user clicks through, on real services: metric exemplar → trace → log lines.

An instrumented service (tests/trace_app.py) exports its spans to a real Jaeger v2 over OTLP,
ships its logs straight into the real Elasticsearch 8.19 (``PYOBS_ELASTICSEARCH_URL``, the
committed index templates) and is scraped by a real Prometheus with exemplar storage
(OpenMetrics). From an exemplar's trace id in Prometheus the test finds the trace in Jaeger
and that request's log lines in Elasticsearch by ``trace.id``: with one process (Werkzeug)
and with gunicorn running 4 workers in multiprocess mode.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.elk.esnodes import http_json
from tests.elk.helpers import install_templates
from tests.helpers import http_status, wait_until
from tests.prometheus.conftest import query, start_prometheus, tool
from tests.stack.validate import parse_env_file
from tests.tracing_backends import Jaeger, get_json, serve, span_service

pytestmark = pytest.mark.service
REPO = Path(__file__).resolve().parents[2]

REQUESTS = 60


def _exemplars(prom_port: int, job: str, since: float) -> list[dict[str, Any]]:
    """Every exemplar Prometheus stored for the job's request-duration buckets."""
    params = urllib.parse.urlencode(
        {
            "query": f'http_server_request_duration_seconds_bucket{{job="{job}"}}',
            "start": f"{since:.3f}",
            "end": f"{time.time() + 60:.3f}",
        }
    )
    data = get_json(f"http://127.0.0.1:{prom_port}/api/v1/query_exemplars?{params}")["data"]
    return [exemplar for series in data for exemplar in series["exemplars"]]


def _scraped_all(prom_port: int, job: str, sent: int) -> bool:
    """True once Prometheus scraped a page counting every request the test sent."""
    promql = f'sum(http_server_request_duration_seconds_count{{job="{job}"}})'
    result = query(prom_port, promql)["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == sent


def _exemplars_after(prom_port: int, job: str, since: float, sent: int) -> list[dict[str, Any]]:
    """The stored exemplars, once Prometheus has scraped a page counting all `sent`."""
    wait_until(
        functools.partial(_scraped_all, prom_port, job, sent),
        60,
        f"a scrape that counts all {sent} requests",
    )
    return _exemplars(prom_port, job, since)


def _pids_of(output: Path, exemplars: list[dict[str, Any]]) -> set[int]:
    """The processes whose access lines (in the service's output) carry the exemplars'
    trace ids."""
    wanted = {e["labels"]["trace_id"] for e in exemplars}
    pids = set()
    for line in output.read_text(errors="replace").splitlines():
        if '"pyobs.access"' in line:
            with contextlib.suppress(ValueError, KeyError):
                record = json.loads(line)
                if record["trace.id"] in wanted:
                    pids.add(int(record["process.pid"]))
    return pids


def _logs(es_url: str, stream: str, trace_id: str) -> list[dict[str, Any]]:
    """The documents of one trace in the data stream, oldest first."""
    http_json("POST", f"{es_url}/{stream}/_refresh")
    body = {
        "query": {"term": {"trace.id": trace_id}},
        "sort": [{"@timestamp": "asc"}],
        "size": 100,
    }
    hits = http_json("POST", f"{es_url}/{stream}/_search", body)["hits"]["hits"]
    return [hit["_source"] for hit in hits]


def _two_or_more(es_url: str, stream: str, trace_id: str) -> list[dict[str, Any]]:
    """The trace's log lines once there are at least two (the app's and the access line)."""
    found = _logs(es_url, stream, trace_id)
    return found if len(found) >= 2 else []


def _sample(es_url: str, stream: str) -> str:
    """What the data stream holds (for a failure message)."""
    try:
        return json.dumps(http_json("POST", f"{es_url}/{stream}/_search", {"size": 3}))[:3000]
    except Exception as exc:  # a diagnostic only
        return f"cannot search: {exc}"


@pytest.mark.parametrize("workers", [0, 4], ids=["single-process", "gunicorn-4-workers"])
def test_exemplar_to_trace_to_logs(
    es_url: str, jaeger: Jaeger, tmp_path: Path, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every exemplar trace id Prometheus scraped is a trace in Jaeger (the request's SERVER
    span, under the service's name) whose log lines, the app's and the access line, are in
    Elasticsearch under that trace.id; under gunicorn the exemplars come from more than one
    worker."""
    tool("prometheus")
    started = time.monotonic()
    install_templates(es_url)
    namespace = f"chain{secrets.token_hex(4)}"
    stream = f"logs-pyobs-{namespace}"
    service = f"chain-{'gunicorn' if workers else 'single'}-{secrets.token_hex(3)}"
    env = {
        **jaeger.env(service),
        "PYOBS_SERVICE_NAME": service,
        "PYOBS_ELASTICSEARCH_URL": es_url,
        "PYOBS_LOG_NAMESPACE": namespace,
        "PYOBS_LOG_SPOOL_DIR": str(tmp_path / "spool"),
        "PYOBS_LOG_LEVEL": "info",
    }
    timings: dict[str, float] = {}
    with serve(tmp_path, env, workers=workers) as app:
        port = app.base.rsplit(":", 1)[1]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: {service}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        )
        since = time.time() - 5
        prometheus = start_prometheus(config, tmp_path)
        try:
            timings["services up"] = time.monotonic() - started
            for n in range(REQUESTS):  # spread over several scrapes
                assert app.get_plain(f"/items/{n % 7 + 1}") == 200
                time.sleep(0.05)
            sent = REQUESTS
            exemplars = _exemplars_after(prometheus.port, service, since, sent)
            # The merged page shows one exemplar per bucket, the newest of any worker, and
            # the kernel may hand most connections to one worker: keep sending concurrent
            # rounds, one scrape apart (bounded), until the stored exemplars name two workers.
            for _ in range(30 if workers else 0):
                if len(_pids_of(app.output, exemplars)) >= 2:
                    break
                with ThreadPoolExecutor(4) as pool:
                    statuses = list(pool.map(app.get_plain, ["/items/1"] * 8))
                assert statuses == [200] * 8
                sent += 8
                exemplars = _exemplars_after(prometheus.port, service, since, sent)
            assert len(exemplars) >= 2, exemplars
            timings["exemplars in Prometheus"] = time.monotonic() - started
        finally:
            prometheus.stop()
        trace_ids = sorted({e["labels"]["trace_id"] for e in exemplars})
        pids: set[int] = set()
        for trace_id in trace_ids:
            trace = jaeger.wait_trace(trace_id)
            (span,) = trace["spans"]
            assert span_service(trace, span) == service
            assert span["operationName"] == "GET /items/<int:item_id>"
            try:
                lines = wait_until(
                    functools.partial(_two_or_more, es_url, stream, trace_id),
                    60,
                    f"the log lines of trace {trace_id} in Elasticsearch",
                )
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n{stream}: {_sample(es_url, stream)}\n"
                    f"service output: {app.output.read_text(errors='replace')[-3000:]}"
                ) from None
            assert [(d["log.logger"], d["message"]) for d in lines] == [
                ("shop", "item served"),
                ("pyobs.access", f"GET {lines[-1].get('url.path')} 200"),
            ], json.dumps(lines)[:2000]
            assert lines[-1]["http.route"] == "/items/<int:item_id>"
            assert {d["span.id"] for d in lines} == {span["spanID"]}
            assert {d["service.name"] for d in lines} == {service}
            pids.add(lines[0]["process.pid"])
        timings["every trace and its logs found"] = time.monotonic() - started
    if workers:
        assert len(pids) >= 2, f"every exemplar came from one worker: {pids}"
    with capsys.disabled():
        print(f"\nchain ({len(trace_ids)} exemplar traces, {service}): " + ", ".join(
            f"{what} after {seconds:.1f} s" for what, seconds in timings.items()
        ))  # fmt: skip


def test_kibana_trace_id_links_to_the_trace_in_jaeger(jaeger: Jaeger, tmp_path: Path) -> None:
    """The logs data view formats trace.id as a link to the Jaeger UI where the compose file
    publishes it; the link's path is Jaeger's trace page, served by a real Jaeger for a
    stored trace (whose query API, behind that page, finds it)."""
    from pyobs._elk import kibana

    (view,) = [o for o in kibana.saved_objects() if o["id"] == kibana.DATA_VIEW_ID]
    formats = json.loads(view["attributes"]["fieldFormatMap"])
    assert formats["trace.id"]["id"] == "url"
    template = formats["trace.id"]["params"]["urlTemplate"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["jaeger"]
    ui_port = parse_env_file(REPO / ".env.example")["JAEGER_UI_PORT"]
    published = f":${{JAEGER_UI_PORT:-{ui_port}}}:16686"
    assert any(port.endswith(published) for port in compose["ports"]), compose["ports"]
    trace_id = secrets.token_hex(16)
    link = template.replace("{{value}}", trace_id)
    assert link == f"http://localhost:{ui_port}/trace/{trace_id}"
    # The same page on the test's Jaeger, for a trace it holds.
    with serve(tmp_path, jaeger.env(f"kibana-link-{secrets.token_hex(3)}")) as app:
        assert app.get("/items/1", trace_id, secrets.token_hex(8)) == 200
        jaeger.wait_trace(trace_id)
    page = urllib.parse.urlsplit(link).path
    assert http_status(f"http://127.0.0.1:{jaeger.query}{page}") == 200
