"""`pyobs elk setup` and `pyobs logs search` against the real Elasticsearch nodes."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pyobs._elk import assets, kibana, setup
from pyobs.cli import main
from tests.elk.esnodes import http_json
from tests.elk.helpers import bulk_create, install_pipeline, install_templates, run_pipeline


def _template(url: str) -> dict[str, Any]:
    answer = http_json("GET", f"{url}/_index_template/{assets.TEMPLATE_NAME}")
    template: dict[str, Any] = answer["index_templates"][0]["index_template"]
    return template


def test_elk_setup_installs_and_is_idempotent(
    fresh_es: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Running setup twice succeeds both times; a new --retention updates the template."""
    for _ in range(2):
        assert main(["elk", "setup", "--es", fresh_es, "--without-pipeline"]) == 0
        out = capsys.readouterr().out
        assert "FAIL" not in out
        assert f"ok   index template {assets.TEMPLATE_NAME}" in out
    assert _template(fresh_es)["template"]["lifecycle"]["data_retention"] == "30d"
    assert main(["elk", "setup", "--es", fresh_es, "--without-pipeline", "--retention", "7d"]) == 0
    assert _template(fresh_es)["template"]["lifecycle"]["data_retention"] == "7d"
    failures = http_json("GET", f"{fresh_es}/_index_template/{assets.FAILURE_TEMPLATE_NAME}")
    assert failures["index_templates"]


def test_elk_setup_says_when_ingest_processors_are_missing(
    fresh_es: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On an Elasticsearch without ingest-common the pipeline step fails with a plain hint."""
    assert main(["elk", "setup", "--es", fresh_es]) == 1
    out = capsys.readouterr().out
    assert "FAIL ingest pipeline pyobs-logs" in out
    assert "ingest-common" in out


def test_elk_setup_reports_an_unreachable_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong URL gives exit status 1 and says the cluster cannot be reached."""
    assert main(["elk", "setup", "--es", "http://127.0.0.1:9", "--without-pipeline"]) == 1
    assert "cannot reach Elasticsearch at http://127.0.0.1:9" in capsys.readouterr().out


class _FakeKibana(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    rules: set[str] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _FakeKibana.seen.append(
            {"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body}
        )
        status = 200
        if self.path.startswith("/api/alerting/rule/"):
            # Kibana's alerting API: a second create with the same id is a conflict.
            status = 409 if self.path in _FakeKibana.rules else 200
            _FakeKibana.rules.add(self.path)
        answer = json.dumps({"success": True, "successCount": 6}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _FakeKibana.seen.append(
            {"method": "PUT", "path": self.path, "headers": dict(self.headers), "body": body}
        )
        self.send_response(200 if self.path in _FakeKibana.rules else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def test_elk_setup_imports_kibana_objects(
    fresh_es: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --kibana the NDJSON goes to the saved objects import API with overwrite and auth.

    A loopback HTTP server stands in for Kibana (no Kibana can run here): this proves the
    request pyobs sends, not that Kibana accepts the objects.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKibana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeKibana.seen.clear()
    _FakeKibana.rules.clear()
    try:
        url = f"http://elastic:s3cret@127.0.0.1:{server.server_address[1]}"
        argv = ["elk", "setup", "--es", fresh_es, "--without-pipeline", "--kibana", url]
        assert main(argv) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "ok   Kibana saved objects" in out
    assert "ok   Kibana rule 'pyobs: log events rejected by Elasticsearch' (created)" in out
    request, rule = _FakeKibana.seen
    assert request["path"] == "/api/saved_objects/_import?overwrite=true"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["kbn-xsrf"]
    assert headers["authorization"] == "Basic " + base64.b64encode(b"elastic:s3cret").decode()
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert kibana.render_ndjson().encode() in request["body"]
    assert rule["path"] == f"/api/alerting/rule/{setup.REJECTED_RULE_ID}"
    body = json.loads(rule["body"])
    assert body["rule_type_id"] == ".es-query"
    assert body["params"]["index"] == kibana.FAILURES_PATTERN.split(",")
    assert body["params"]["thresholdComparator"] == ">" and body["params"]["threshold"] == [0]
    uuid.UUID(setup.REJECTED_RULE_ID)  # Kibana takes only a UUID as a rule id


def test_elk_setup_updates_the_kibana_rule_on_a_second_run(
    fresh_es: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Running setup twice keeps one rule: the second create is a conflict, then an update."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKibana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeKibana.seen.clear()
    _FakeKibana.rules.clear()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        argv = ["elk", "setup", "--es", fresh_es, "--without-pipeline", "--kibana", url]
        assert main(argv) == 0
        assert main(argv) == 0
    finally:
        server.shutdown()
    assert "(updated)" in capsys.readouterr().out
    rule_calls = [(c["method"], c["path"]) for c in _FakeKibana.seen if "alerting" in c["path"]]
    path = f"/api/alerting/rule/{setup.REJECTED_RULE_ID}"
    assert rule_calls == [("POST", path), ("POST", path), ("PUT", path)]
    update = json.loads(_FakeKibana.seen[-1]["body"])
    assert "rule_type_id" not in update and update["name"] == setup.REJECTED_RULE_NAME


@pytest.fixture
def logs_in_es(es_url: str, ingest_url: str) -> dict[str, Any]:
    """One service's logs in the data stream: two traces, an error, an old line, flat and nested."""
    install_templates(es_url)
    install_pipeline(ingest_url)
    service = f"svc-{uuid.uuid4().hex[:8]}"
    now = time.time()

    def ts(offset: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + offset)) + ".000Z"

    trace_a, trace_b = uuid.uuid4().hex, uuid.uuid4().hex
    base = {"service.name": service, "ecs.version": "8.17.0"}
    raw: list[dict[str, Any]] = [
        {**base, "@timestamp": ts(-5), "log.level": "info", "log.logger": "shop",
         "message": "item created", "trace.id": trace_a},
        {**base, "@timestamp": ts(-4), "log.level": "info", "log.logger": "pyobs.access",
         "message": "POST /items 201", "trace.id": trace_a, "http.response.status_code": 201,
         "event.duration": 1_500_000},
        {**base, "@timestamp": ts(-3), "log.level": "ERROR", "log.logger": "app",
         "message": "the warehouse is on fire", "trace.id": trace_b,
         "error.type": "RuntimeError"},
        {**base, "@timestamp": ts(-7200), "log.level": "info", "log.logger": "shop",
         "message": "an old line"},
    ]  # fmt: skip
    docs = run_pipeline(
        ingest_url, [{**d, "event.id": uuid.uuid4().hex} for d in raw], "logs-pyobs-default"
    )
    # And one event indexed as flat dotted keys (no pipeline), as other shippers may do.
    flat = {**base, "@timestamp": ts(-2), "log.level": "warning", "log.logger": "shop",
            "message": "low stock"}  # fmt: skip
    docs.append({"_index": "logs-pyobs-default", "_id": None, "_source": flat})
    assert bulk_create(es_url, docs)["created"] == 5
    return {"service": service, "trace_a": trace_a, "trace_b": trace_b}


def _search(capsys: pytest.CaptureFixture[str], es_url: str, *args: str) -> tuple[int, str]:
    code = main(["logs", "search", "--es", es_url, *args])
    return code, capsys.readouterr().out


def test_logs_search_by_service_reads_like_a_log(
    es_url: str, logs_in_es: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Recent lines of one service come oldest first, one readable line each."""
    code, out = _search(capsys, es_url, "*", "--service", logs_in_es["service"])
    assert code == 0
    lines = out.splitlines()
    assert [line.split(": ", 1)[1].split("  ")[0] for line in lines] == [
        "item created",
        "POST /items 201",
        "the warehouse is on fire",
        "low stock",
    ]
    assert "ERROR" in lines[2] and "error=RuntimeError" in lines[2]
    assert "1.5ms" in lines[1]
    assert f"trace={logs_in_es['trace_a']}" in lines[0]


def test_logs_search_filters(
    es_url: str, logs_in_es: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """--level, --trace-id, QUERY and --since narrow the result; nothing found exits 1."""
    service = logs_in_es["service"]
    code, out = _search(capsys, es_url, "--service", service, "--level", "error")
    assert code == 0 and len(out.splitlines()) == 1 and "warehouse" in out
    code, out = _search(capsys, es_url, "--trace-id", logs_in_es["trace_a"].upper())
    assert code == 0 and len(out.splitlines()) == 2
    code, out = _search(capsys, es_url, "message:stock", "--service", service)
    assert code == 0 and "low stock" in out and len(out.splitlines()) == 1
    code, out = _search(capsys, es_url, "old", "--service", service)
    assert code == 1 and out == ""
    code, out = _search(capsys, es_url, "old", "--service", service, "--since", "3h")
    assert code == 0 and "an old line" in out
    code, out = _search(capsys, es_url, "*", "--service", service, "--limit", "2")
    assert [line.split(": ", 1)[1].split("  ")[0] for line in out.splitlines()] == [
        "the warehouse is on fire",
        "low stock",
    ]


def test_logs_search_json_output(
    es_url: str, logs_in_es: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one object per line with the flat ECS keys pyobs writes."""
    code, out = _search(capsys, es_url, "--trace-id", logs_in_es["trace_b"], "--json")
    assert code == 0
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["log.level"] == "error"  # normalised by the pipeline
    assert event["trace.id"] == logs_in_es["trace_b"]
    assert event["service.name"] == logs_in_es["service"]


def test_logs_search_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --since or an unreachable cluster is exit status 2 with a plain message."""
    assert main(["logs", "search", "x", "--since", "yesterday"]) == 2
    assert "--since takes a duration" in capsys.readouterr().err
    assert main(["logs", "search", "x", "--es", "http://127.0.0.1:9"]) == 2
    assert "cannot reach Elasticsearch" in capsys.readouterr().err
