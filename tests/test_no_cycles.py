"""pyobs leaves nothing per request to the cyclic garbage collector.

An object caught in a reference cycle is not freed when the request ends but by the cyclic
collector later, whose passes cost the host app CPU time on every thread (a closure on a
Django response once cost Django 3 us per request that way). Each framework's app from
benchmarks/ is driven in-process in a fresh interpreter (pyobs.setup() is per process),
bare and with pyobs (metrics, span and access log), with the collector off; then one
collection with ``gc.DEBUG_SAVEALL`` shows what the requests left to it.

Sanic is not listed: its request object sits in a cycle of its own, so whatever any
middleware keeps on ``request.ctx`` (pyobs's request handle included) is freed with it by
the collector, with or without pyobs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUESTS = 50

_PROBE = """
import gc, json, sys
sys.path.insert(0, "benchmarks")
import overhead

framework, config, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
bench = overhead.Bench(framework, config)


def one():
    return bench.loop.run_until_complete(bench.one()) if bench.is_async else bench.one()


for _ in range(20):  # first-use work (caches, lazy imports) is not per request
    one()
gc.collect()
gc.disable()
gc.set_debug(gc.DEBUG_SAVEALL)
for _ in range(n):
    assert one() == 200
gc.collect()
kinds = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage})
with open(out, "w") as f:
    json.dump({"objects": len(gc.garbage), "pyobs": [k for k in kinds if k.startswith("pyobs")]}, f)
"""


def _left_to_collector(framework: str, config: str, tmp_path: Path) -> dict[str, object]:
    out = tmp_path / f"{config}.json"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, framework, config, str(out), str(REQUESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, object] = json.loads(out.read_text())
    return data


@pytest.mark.parametrize(
    "framework",
    [
        "flask",
        "flask-restful",
        "django",
        "drf",
        "fastapi",
        "starlette",
        "tornado",
        "falcon",
        "pyramid",
        "aiohttp",
    ],
)
def test_requests_leave_no_pyobs_object_in_a_reference_cycle(
    framework: str, tmp_path: Path
) -> None:
    bare = _left_to_collector(framework, "bare", tmp_path)
    observed = _left_to_collector(framework, "pyobs-full", tmp_path)
    assert observed["pyobs"] == [], f"pyobs objects left to the cyclic collector: {observed}"
    # What the app's own cycles hold of pyobs's work: DRF keeps its response in a cycle,
    # and with it the X-Request-ID header pair pyobs added (one tuple per request).
    extra = int(observed["objects"]) - int(bare["objects"])  # type: ignore[call-overload]
    allowed = REQUESTS if framework == "drf" else 0
    assert extra <= allowed, (
        f"{framework}: {bare['objects']} objects bare, {observed['objects']} with pyobs "
        f"over {REQUESTS} requests"
    )
