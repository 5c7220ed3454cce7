"""Metrics only (tracing and the access log off) on every framework: the same metrics as full.

With both signals off pyobs reads fewer request facts, and each adapter has its own way of
doing so. Each framework's tiny app, on its own server, gets the same requests in both
configurations; the ``http_server_*`` and exception samples on /metrics (durations by count,
their values being times), the statuses, the X-Request-ID of each response and the request
id on the app's own log lines must agree, and metrics-only makes no span and no access line.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.core_apps import SampleKey, compared_samples, id_kind
from tests.frameworks.conftest import FRAMEWORKS, Framework, Served, serving

DURATION_COUNT = "http_server_request_duration_seconds_count"
# (path, headers, observed): /health and /items/99 (PYOBS_EXCLUDED_PATHS) are not.
REQUESTS: list[tuple[str, dict[str, str], bool]] = [
    ("/items/3", {}, True),
    ("/items/4", {"X-Request-ID": "req-signals-4"}, True),
    ("/items/5?page=2", {"X-Request-ID": "not a safe id"}, True),
    ("/items/0", {}, True),
    ("/no/such/page/7", {}, True),
    ("/boom", {}, True),
    ("/stream", {}, True),
    ("/health", {}, False),
    ("/items/99", {}, False),
]
OBSERVED = sum(observed for _, _, observed in REQUESTS)


def _samples(served: Served) -> dict[SampleKey, float]:
    """The samples compared, from a scrape of the app's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    return compared_samples(text_string_to_metric_families(served.metrics()))


def _run(framework: Framework, monkeypatch: pytest.MonkeyPatch, metrics_only: bool) -> Any:
    from pyobs import testing

    testing.reset()
    for name in ("PYOBS_TRACING", "PYOBS_ACCESS_LOG"):
        if metrics_only:
            monkeypatch.setenv(name, "false")
        else:
            monkeypatch.delenv(name, raising=False)
    with serving(framework, monkeypatch) as served:
        replies = [served.get(path, headers) for path, headers, _ in REQUESTS]

        def counted() -> float:
            return sum(v for k, v in _samples(served).items() if k[0] == DURATION_COUNT)

        assert served.wait_for(lambda: counted() == OBSERVED), counted()
        samples = _samples(served)
        app_ids = [r.get("http.request.id") for r in served.logs if r["message"] == "item fetched"]
        spans = len(served.spans.get_finished_spans())
        access = len(served.access_logs())
    kinds = [
        id_kind(headers.get("x-request-id"), sent.get("X-Request-ID"))
        for (_, headers, _), (_, sent, _) in zip(replies, REQUESTS, strict=True)
    ]
    echoed = {headers.get("x-request-id") for _, headers, _ in replies}
    return [status for status, _, _ in replies], kinds, samples, app_ids, echoed, spans, access


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=[f.name for f in FRAMEWORKS])
def test_metrics_only_counts_what_full_counts(
    framework: Framework, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _run(framework, monkeypatch, metrics_only=False)
    lean = _run(framework, monkeypatch, metrics_only=True)
    statuses, kinds, samples, app_ids, echoed, spans, access = lean
    assert statuses == full[0]
    assert kinds == full[1]
    # /boom may have no id: where the exception reaches the server, the server writes the 500.
    del kinds[5]
    assert kinds == ["generated", "echoed", "generated"] + ["generated"] * 3 + ["none"] * 2
    assert samples == full[2]
    assert any(k[0] == "pyobs_http_server_exceptions_total" for k in samples)
    assert {v for k, v in samples.items() if k[0] == "http_server_active_requests"} == {0.0}
    # The app's lines carry the request's id in both (the excluded /items/99 has none).
    assert len(app_ids) == len(full[3]) == 4
    assert set(app_ids) - {None} <= echoed
    assert app_ids.count(None) == full[3].count(None) == 1
    assert (spans, access) == (0, 0)
    assert full[5] > 0 and full[6] == OBSERVED
