"""Sizing the stack for a service: measured per-pod figures, scaled to a request rate.

    python benchmarks/sizing.py                          # 1,000 requests/s over 20 pods
    python benchmarks/sizing.py --rps 250 --pods 4 --routes 40 --sampling 0.1
    python benchmarks/sizing.py --es http://127.0.0.1:9200   # + Elasticsearch bytes on disk
    python benchmarks/sizing.py --json out.json

What is measured, in a child process running a real instrumented Flask app (pyobs with
metrics, the SERVER span and the ECS access log) through Flask's test client:

- series per pod: the app serves the traffic mix of the compose stack's generator
  (pyobs/_traffic.py: items, creates, 404s, 500s, slow, streamed, health), then its /metrics
  page is fetched as Prometheus asks for it (OpenMetrics) and every sample is counted; a
  second pass adds routes to measure what one more (route, status) costs;
- bytes per ECS access-log line, as the app wrote them to stdout;
- bytes per span in OTLP protobuf (the exporter's own encoder, batches of 512 and alone);
- with ``--es``: the access lines indexed into a real Elasticsearch with pyobs's index
  template (best_compression), force-merged, and its store size per document.

The table then scales these to ``--rps`` and ``--pods`` with the scrape interval and
retentions given. Prometheus's bytes per sample on disk and memory per series are rules of
thumb from Prometheus's documentation, marked as such; everything else is measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

# Prometheus documentation, storage: "on average, Prometheus uses only around 1-2 bytes per
# sample". Memory per head series: a rule of thumb (a few KiB per active series).
PROM_BYTES_PER_SAMPLE = 2.0
PROM_HEAD_BYTES_PER_SERIES = 8 * 1024

CHILD = r"""
import json, os, random, sys
os.environ["PYOBS_SERVICE_NAME"] = "sizing"
os.environ["OTEL_SERVICE_NAME"] = "sizing"
from flask import Flask, Response, abort, request
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
import pyobs.flask
from pyobs._traffic import MIX

exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create({"service.name": "sizing",
    "service.version": "1.4.2", "deployment.environment.name": "production",
    "k8s.namespace.name": "shop", "k8s.pod.name": "shop-7d9f8b6c5d-x2kq9",
    "k8s.node.name": "node-pool-a-1234"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

app = Flask("sizing")
ITEMS = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}

@app.get("/items/<int:item_id>")
def get_item(item_id):
    if item_id not in ITEMS:
        abort(404)
    return ITEMS[item_id]

@app.post("/items")
def create_item():
    body = request.get_json(silent=True) or {}
    return {"id": 11, "name": str(body.get("name"))}, 201

@app.get("/boom")
def boom():
    raise RuntimeError("the warehouse is on fire")

@app.get("/slow")
def slow():
    return {"status": "slow but fine"}

@app.get("/stream")
def stream():
    return Response((f"chunk {i}\n" for i in range(5)), mimetype="text/plain")

@app.get("/health")
def health():
    return {"status": "ok"}

extra = int(sys.argv[2])
def make(i):
    app.add_url_rule(f"/extra/{i}/<int:item_id>", f"extra{i}", lambda item_id: {"id": item_id})
for i in range(extra):
    make(i)

pyobs.flask.instrument(app)
client = app.test_client()
rng = random.Random(1)
agents = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36", "python-requests/2.32.3", "okhttp/4.12.0"]
requests = int(sys.argv[1])
for n in range(requests):
    _, method, template, body = rng.choices(MIX, weights=[m[0] for m in MIX])[0]
    path = template.format(n=rng.randint(1, 14), r="%08x" % rng.getrandbits(32))
    headers = {"User-Agent": rng.choice(agents)}
    if rng.random() < 0.2:
        headers["traceparent"] = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
    response = client.open(path, method=method, data=body, headers=headers,
                           content_type="application/json" if body else None)
    response.get_data()
    response.close()
for i in range(extra):
    response = client.get(f"/extra/{i}/1")
    response.get_data()
    response.close()
page = client.get("/metrics", headers={"Accept": sys.argv[3]})
spans = exporter.get_finished_spans()
batch = [spans[i:i + 512] for i in range(0, len(spans), 512)]
batch_bytes = sum(len(encode_spans(b).SerializeToString()) for b in batch)
alone = [len(encode_spans([s]).SerializeToString()) for s in spans[:200]]
result = {
    "requests": requests, "spans": len(spans), "otlp_batch_bytes": batch_bytes,
    "otlp_alone_bytes": alone, "page": page.get_data(as_text=True),
    "content_type": page.headers.get("Content-Type"),
}
with open(sys.argv[4], "w") as out:
    json.dump(result, out)
"""


def _count_series(page: str) -> dict[str, int]:
    """Samples on a metrics page by family; `_created` samples apart (Prometheus drops them)."""
    counts: dict[str, int] = {}
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = "_created" if name.endswith("_created") else name
        counts[key] = counts.get(key, 0) + 1
    return counts


def measure(requests: int, extra_routes: int) -> dict[str, Any]:
    """Run the instrumented app in a child process; return what it measured and wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYOBS_", "OTEL_", "PROMETHEUS_MULTIPROC"))
        }
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(requests), str(extra_routes), OPENMETRICS, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"the measuring app failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
    access: list[int] = []
    other: list[int] = []
    for line in done.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        size = len(line.encode()) + 1  # with its newline
        (access if record.get("event.dataset") == "pyobs.access" else other).append(size)
    result["access_line_bytes"] = access
    # Other ECS lines the mix made (the error record of each 500), per request.
    result["other_line_bytes_per_request"] = sum(other) / max(len(access), 1)
    result["other_lines_per_request"] = len(other) / max(len(access), 1)
    page = result.pop("page")
    series = _count_series(page)
    result["created_samples"] = series.pop("_created", 0)
    result["series_by_family"] = series
    result["series"] = sum(series.values())
    # Each (method, route, status) served has one request-duration count series.
    result["combos"] = len(
        {
            line.split("}")[0]
            for line in page.splitlines()
            if line.startswith("http_server_request_duration_seconds_count{")
        }
    )
    return result


def es_bytes_per_doc(url: str, lines: list[str]) -> float:
    """Index access lines into a real Elasticsearch with pyobs's template; store bytes per doc."""
    from elasticsearch import Elasticsearch, helpers

    from pyobs._elk.setup import install_elasticsearch

    es = Elasticsearch(url, request_timeout=120)
    steps = install_elasticsearch(es, pipeline=True)
    failed = [f"{step.name}: {step.detail}" for step in steps if not step.ok]
    # Without the ingest-common module (a minimal distribution) the lines go in unprocessed.
    pipeline = steps[0].ok
    if [f for f in failed if not f.startswith("ingest pipeline") and "retention" not in f]:
        raise SystemExit(f"elk setup failed: {failed}")
    stream = f"logs-pyobs-sizing{secrets.token_hex(4)}"
    helpers.bulk(
        es,
        (
            {
                "_op_type": "create",
                "_index": stream,
                "_source": line,
                **({"pipeline": "pyobs-logs"} if pipeline else {}),
            }
            for line in lines
        ),
        chunk_size=2000,
    )
    es.indices.refresh(index=stream)
    es.indices.forcemerge(index=stream, max_num_segments=1, wait_for_completion=True)
    stats = es.indices.stats(index=stream, metric="store,docs")["_all"]["primaries"]
    size = stats["store"]["size_in_bytes"] / max(stats["docs"]["count"], 1)
    print(f"Elasticsearch: {stats['docs']['count']} lines, ingest pipeline {pipeline}")
    try:
        es.indices.delete_data_stream(name=stream)
    except Exception as exc:  # a leftover test stream is not a failed measurement
        print(f"(could not delete the data stream {stream}: {exc})", file=sys.stderr)
    return float(size)


def sizing(args: argparse.Namespace, base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """The per-pod measurements scaled to the service's rate, pods, routes and retentions."""
    per_combo = (more["series"] - base["series"]) / max(more["combos"] - base["combos"], 1)
    fixed = base["series"] - per_combo * base["combos"]
    combos = args.routes * args.statuses_per_route
    series_pod = fixed + per_combo * combos
    series_total = series_pod * args.pods
    samples_s = series_total / args.scrape_interval
    line = statistics.mean(base["access_line_bytes"])
    # Health checks are not logged: access lines per request served, as measured.
    access_per_request = len(base["access_line_bytes"]) / base["requests"]
    other_per_request = base["other_lines_per_request"] * access_per_request
    lines_day = args.rps * 86_400 * (access_per_request + other_per_request)
    lines_day += args.rps * 86_400 * args.app_lines_per_request
    log_raw_day = (
        args.rps
        * 86_400
        * (
            access_per_request * line
            + base["other_line_bytes_per_request"] * access_per_request
            + args.app_lines_per_request * line
        )
    )
    span_batch = base["otlp_batch_bytes"] / max(base["spans"], 1)
    # Health checks make no span either: spans per request served, as measured.
    spans_day = args.rps * 86_400 * args.sampling * base["spans"] / base["requests"]
    out: dict[str, Any] = {
        "measured": {
            "requests": base["requests"],
            "series_mix_routes": base["series"],
            "combos_mix": base["combos"],
            "series_fixed": round(fixed),
            "series_per_route_status": round(per_combo, 1),
            "created_samples_dropped": base["created_samples"],
            "access_line_bytes_mean": round(line),
            "access_line_bytes_p50": statistics.median(base["access_line_bytes"]),
            "access_line_bytes_max": max(base["access_line_bytes"]),
            "otlp_bytes_per_span_batched": round(span_batch),
            "otlp_bytes_per_span_alone": round(statistics.mean(base["otlp_alone_bytes"])),
            "access_lines_per_request": round(access_per_request, 3),
            "other_lines_per_request": round(base["other_lines_per_request"], 3),
            "other_bytes_per_request": round(base["other_line_bytes_per_request"]),
        },
        "input": {
            "rps": args.rps,
            "pods": args.pods,
            "routes": args.routes,
            "statuses_per_route": args.statuses_per_route,
            "scrape_interval_s": args.scrape_interval,
            "sampling": args.sampling,
            "log_retention_days": args.log_retention,
            "metrics_retention_days": args.metrics_retention,
            "trace_retention_days": args.trace_retention,
        },
        "series_per_pod": round(series_pod),
        "series_total": round(series_total),
        "samples_per_s": round(samples_s),
        "prometheus_disk_gb": round(
            samples_s * 86_400 * args.metrics_retention * PROM_BYTES_PER_SAMPLE / 1e9, 1
        ),
        "prometheus_head_gb": round(series_total * PROM_HEAD_BYTES_PER_SERIES / 1e9, 2),
        "log_lines_per_day": round(lines_day),
        "log_raw_gb_per_day": round(log_raw_day / 1e9, 1),
        "spans_per_day": round(spans_day),
        "span_otlp_gb_per_day": round(spans_day * span_batch / 1e9, 1),
        "span_otlp_gb_retained": round(spans_day * span_batch * args.trace_retention / 1e9, 1),
    }
    es_doc = base.get("es_bytes_per_doc")
    if es_doc:
        per_day = log_raw_day / line * es_doc
        out["measured"]["es_bytes_per_doc"] = round(es_doc)
        out["es_gb_per_day"] = round(per_day / 1e9, 1)
        out["es_gb_retained"] = round(per_day * args.log_retention / 1e9, 1)
        # A data stream rolls over at 50 GB per primary shard (Elasticsearch's default), one
        # primary per backing index: the shards that retention keeps, with one replica each.
        backing = max(1, math.ceil(per_day * args.log_retention / 50e9))
        out["es_primary_shards_retained"] = backing
    return out


def _table(result: dict[str, Any]) -> str:
    m, i = result["measured"], result["input"]
    rows = [
        ("measured: series per pod, traffic mix", f"{m['series_mix_routes']:,}"),
        ("measured: (method, route, status) in the mix", f"{m['combos_mix']}"),
        ("measured: series per pod, fixed part", f"{m['series_fixed']:,}"),
        ("measured: series per extra (method, route, status)", f"{m['series_per_route_status']}"),
        (
            "measured: ECS access line, bytes (mean / p50 / max)",
            f"{m['access_line_bytes_mean']} / {m['access_line_bytes_p50']:.0f} / "
            f"{m['access_line_bytes_max']}",
        ),
        (
            "measured: access lines per request (health checks are not logged)",
            f"{m['access_lines_per_request']}",
        ),
        (
            "measured: other ECS lines per request (on stdout)",
            f"{m['other_lines_per_request']} ({m['other_bytes_per_request']} bytes)",
        ),
        (
            "measured: span in OTLP protobuf, bytes (batched / alone)",
            f"{m['otlp_bytes_per_span_batched']} / {m['otlp_bytes_per_span_alone']}",
        ),
    ]
    if "es_bytes_per_doc" in m:
        rows.append(
            ("measured: Elasticsearch bytes per access line on disk", f"{m['es_bytes_per_doc']}")
        )
    rows += [
        (
            f"series per pod ({i['routes']} routes x {i['statuses_per_route']} statuses)",
            f"{result['series_per_pod']:,}",
        ),
        (f"series, {i['pods']} pods", f"{result['series_total']:,}"),
        (f"samples/s at a {i['scrape_interval_s']:g} s scrape", f"{result['samples_per_s']:,}"),
        (
            f"Prometheus disk, {i['metrics_retention_days']} d (rule: 2 bytes/sample)",
            f"{result['prometheus_disk_gb']} GB",
        ),
        ("Prometheus head memory (rule: 8 KiB/series)", f"{result['prometheus_head_gb']} GB"),
        (f"access-log lines per day at {i['rps']:,} req/s", f"{result['log_lines_per_day']:,}"),
        ("access log per day, raw JSON", f"{result['log_raw_gb_per_day']} GB"),
    ]
    if "es_gb_per_day" in result:
        rows += [
            ("Elasticsearch per day (primary, on disk)", f"{result['es_gb_per_day']} GB"),
            (
                f"Elasticsearch for {i['log_retention_days']} d, primaries (one replica: x2)",
                f"{result['es_gb_retained']} GB",
            ),
            ("primary shards kept (50 GB rollover)", f"{result['es_primary_shards_retained']}"),
        ]
    rows += [
        (f"spans per day (sampling {i['sampling']:g})", f"{result['spans_per_day']:,}"),
        ("spans per day, OTLP bytes", f"{result['span_otlp_gb_per_day']} GB"),
        (
            f"spans kept {i['trace_retention_days']} d, OTLP bytes",
            f"{result['span_otlp_gb_retained']} GB",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    """Measure, scale, print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, default=1000, help="requests/s, whole service")
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--routes", type=int, default=20, help="route templates of the service")
    parser.add_argument("--statuses-per-route", type=int, default=3)
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="seconds")
    parser.add_argument("--sampling", type=float, default=1.0, help="share of traces kept")
    parser.add_argument("--app-lines-per-request", type=float, default=0.0)
    parser.add_argument("--log-retention", type=int, default=30, help="days")
    parser.add_argument("--metrics-retention", type=int, default=30, help="days")
    parser.add_argument("--trace-retention", type=int, default=7, help="days")
    parser.add_argument("--requests", type=int, default=2000, help="requests measured")
    parser.add_argument("--es", default=None, help="Elasticsearch URL: measure bytes on disk")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    extra = 10
    base = measure(args.requests, 0)
    more = measure(args.requests, extra)
    if args.es:
        # The access lines themselves, measured again so that the indexed lines are real ones.
        lines = _access_lines(args.requests)
        base["es_bytes_per_doc"] = es_bytes_per_doc(args.es, lines)
    result = sizing(args, base, more)
    print(_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _access_lines(requests: int) -> list[str]:
    """The access lines of one run of the mix (for indexing)."""
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(requests), "0", OPENMETRICS, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    return [line for line in done.stdout.splitlines() if '"pyobs.access"' in line]


if __name__ == "__main__":
    sys.exit(main())
