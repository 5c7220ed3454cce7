"""The metrics module's fast paths agree with prometheus_client's own API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from pyobs.metrics import DURATION_BUCKETS, PyobsMetrics


def test_direct_observe_matches_prometheus_client() -> None:
    """The bisecting observe() fills the same buckets, sum and exemplars as Histogram.observe."""
    ours, theirs = PyobsMetrics(CollectorRegistry()), PyobsMetrics(CollectorRegistry())
    values = [0.0, 0.005, 0.0050001, 0.3, 1.0, 9.99, 10.0, 11.0, 1e9, *DURATION_BUCKETS]
    for i, value in enumerate(values):
        exemplar = {"trace_id": f"{i:032x}"}
        a = ours.request_children("GET", "/x", "200")[0]
        b = theirs.request_duration.labels("GET", "/x", "200")
        ours.observe(a, value, exemplar)
        b.observe(value, exemplar)

    def samples(metrics: PyobsMetrics) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for family in metrics.registry.collect()
            for s in family.samples
            if s.name.startswith("http_server_request_duration") and not s.name.endswith("_created")
        ]

    assert samples(ours) == samples(theirs)
    a_buckets = [v._value for v in ours.request_children("GET", "/x", "200")[0]._buckets]
    b_buckets = [v._value for v in theirs.request_duration.labels("GET", "/x", "200")._buckets]
    assert a_buckets == b_buckets
    a_ex = [v._exemplar for v in ours.request_children("GET", "/x", "200")[0]._buckets]
    b_ex = [v._exemplar for v in theirs.request_duration.labels("GET", "/x", "200")._buckets]
    assert [e and (e.labels, e.value) for e in a_ex] == [e and (e.labels, e.value) for e in b_ex]


def test_active_gauge_steps() -> None:
    """The in-flight gauge goes up and back down through the direct value."""
    metrics = PyobsMetrics(CollectorRegistry())
    value = metrics.active("GET")
    value.inc(1)
    value.inc(1)
    value.inc(-1)
    sample = metrics.registry.get_sample_value(
        "http_server_active_requests", {"http_request_method": "GET"}
    )
    assert sample == 1


def test_unknown_layout_falls_back_to_the_public_api() -> None:
    """A prometheus_client without the expected internals still gets correct counts."""

    class Opaque:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float, exemplar: object = None) -> None:
            self.seen.append(amount)

    metrics = PyobsMetrics(CollectorRegistry())
    child = Opaque()
    metrics.observe(child, 0.25)
    assert child.seen == [0.25]
