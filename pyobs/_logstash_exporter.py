"""Logstash's monitoring API (``GET /_node/stats``) as Prometheus metrics, for the compose stack.

Logstash has no Prometheus endpoint. This bridge reads its node stats on every scrape and
serves them on ``/metrics``; the stack runs it as ``logstash-exporter``:
``python -m pyobs._logstash_exporter --logstash http://logstash:9600 --port 9198``.
A scrape while Logstash is down answers ``logstash_up 0`` (and nothing else), so alerts can
tell "Logstash down" from "exporter down" (``up``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Per pipeline: (metric, kind, help, path in the pipeline's stats, scale).
PIPELINE_SERIES: tuple[tuple[str, str, str, tuple[str, ...], float], ...] = (
    ("logstash_pipeline_events_in", "counter", "Events received by the pipeline's inputs.",
     ("events", "in"), 1.0),
    ("logstash_pipeline_events_filtered", "counter", "Events through the filters.",
     ("events", "filtered"), 1.0),
    ("logstash_pipeline_events_out", "counter", "Events sent by the outputs.",
     ("events", "out"), 1.0),
    ("logstash_pipeline_queue_push_duration_seconds", "counter",
     "Time inputs spent waiting to put events in the queue (back-pressure).",
     ("events", "queue_push_duration_in_millis"), 0.001),
    ("logstash_pipeline_queue_events", "gauge", "Events waiting in the queue.",
     ("queue", "events_count"), 1.0),
    ("logstash_pipeline_queue_size_bytes", "gauge", "Bytes the persisted queue uses on disk.",
     ("queue", "queue_size_in_bytes"), 1.0),
    ("logstash_pipeline_queue_max_size_bytes", "gauge", "The persisted queue's size limit.",
     ("queue", "max_queue_size_in_bytes"), 1.0),
    ("logstash_pipeline_dead_letter_queue_size_bytes", "gauge",
     "Bytes in the pipeline's dead letter queue.",
     ("dead_letter_queue", "queue_size_in_bytes"), 1.0),
)  # fmt: skip


def _lookup(stats: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = stats
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _queue_value(stats: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    # Logstash 8 reports the persisted queue's sizes both at queue.* and queue.capacity.*.
    found = _lookup(stats, path)
    if found is None and path[0] == "queue":
        found = _lookup(stats, ("queue", "capacity", *path[1:]))
    return found


def metrics_from_stats(stats: Mapping[str, Any] | None) -> list[Metric]:
    """The metric families for one ``_node/stats`` answer (None: Logstash did not answer)."""
    up = GaugeMetricFamily("logstash_up", "1 if Logstash's monitoring API answered.")
    up.add_metric([], 0.0 if stats is None else 1.0)
    if stats is None:
        return [up]
    out: list[Metric] = [up]
    pipelines = stats.get("pipelines") or {}
    for name, kind, help_text, path, scale in PIPELINE_SERIES:
        family: Metric
        if kind == "counter":
            family = CounterMetricFamily(name, help_text, labels=["pipeline"])
        else:
            family = GaugeMetricFamily(name, help_text, labels=["pipeline"])
        for pipeline, body in sorted(pipelines.items()):
            if not isinstance(body, Mapping):
                continue
            value = _queue_value(body, path)
            if value is not None:
                family.add_metric([str(pipeline)], value * scale)
        out.append(family)
    heap = _lookup(stats, ("jvm", "mem", "heap_used_percent"))
    if heap is not None:
        out.append(
            GaugeMetricFamily(
                "logstash_jvm_heap_used_ratio", "Share of the JVM heap in use.", value=heap / 100
            )
        )
    return out


class LogstashCollector:
    """Reads ``_node/stats`` at every scrape (bounded by ``timeout``)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.url = base_url.rstrip("/") + "/_node/stats"
        self.timeout = timeout

    def fetch(self) -> Mapping[str, Any] | None:
        """The node stats, or None when Logstash does not answer with JSON."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                data = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, Mapping) else None

    def collect(self) -> Iterator[Metric]:
        """Prometheus's collector protocol."""
        yield from metrics_from_stats(self.fetch())


def main(argv: list[str] | None = None) -> int:
    """Serve the bridge until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logstash", default="http://logstash:9600", help="monitoring API URL")
    parser.add_argument("--host", default="0.0.0.0", help="address to serve /metrics on")
    parser.add_argument("--port", type=int, default=9198, help="port to serve /metrics on")
    args = parser.parse_args(argv)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LogstashCollector(args.logstash))
    server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    print(f"serving Logstash metrics from {args.logstash} on {args.host}:{args.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
