"""Smoke test of benchmarks/sizing.py: it measures a real app and scales what it measured.

No figure is bounded (they are measurements); what is checked is that the measurements are
made (series counted from a real /metrics page, access lines and spans really written), that
the table follows from them, and that docs/kubernetes.md quotes the series the app has.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require

pytestmark = pytest.mark.slow  # a benchmark script's smoke runs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "sizing.py"


def _run(tmp: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp / "sizing.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "300", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick run at the docs' defaults (1,000 requests/s, 20 pods, 20 routes)."""
    import_or_require("flask")
    return _run(tmp_path_factory.mktemp("sizing"))


def test_measures_series_lines_and_spans(sized: tuple[str, dict[str, Any]]) -> None:
    """Series come from the page, access lines from stdout, span sizes from the encoder."""
    _, result = sized
    m = result["measured"]
    assert m["combos_mix"] >= 6  # items 200/404, create 201, unknown 404, 500, slow, stream
    assert m["series_per_route_status"] > 10  # a histogram's buckets at least
    assert m["series_fixed"] > 0
    assert m["series_mix_routes"] > m["series_fixed"]
    assert 200 < m["access_line_bytes_p50"] < m["access_line_bytes_max"]
    assert 0.9 < m["access_lines_per_request"] < 1  # health checks are not logged
    assert 100 < m["otlp_bytes_per_span_batched"] < m["otlp_bytes_per_span_alone"]


def test_the_table_follows_from_the_measurements(sized: tuple[str, dict[str, Any]]) -> None:
    """Series per pod, samples/s and daily volumes are the measured figures scaled."""
    stdout, result = sized
    m, i = result["measured"], result["input"]
    per_pod = m["series_fixed"] + m["series_per_route_status"] * i["routes"] * 3
    assert abs(result["series_per_pod"] - per_pod) <= 1
    assert result["series_total"] == pytest.approx(result["series_per_pod"] * 20, abs=20)
    assert result["samples_per_s"] == pytest.approx(result["series_total"] / 15, abs=1)
    lines = 1000 * 86_400 * m["access_lines_per_request"]
    assert result["log_lines_per_day"] == pytest.approx(lines, rel=0.01)
    gb = lines * m["access_line_bytes_mean"] / 1e9
    assert result["log_raw_gb_per_day"] == pytest.approx(gb, rel=0.02)
    assert re.search(rf"series, 20 pods\s+{result['series_total']:,}\n", stdout)


def test_flags_scale_the_table(tmp_path: Path, sized: tuple[str, dict[str, Any]]) -> None:
    """Twice the pods, twice the series; a tenth of the sampling, a tenth of the spans."""
    import_or_require("flask")
    _, base = sized
    _, other = _run(tmp_path, "--pods", "40", "--sampling", "0.1")
    assert other["series_total"] == pytest.approx(2 * base["series_total"], abs=40)
    assert other["spans_per_day"] == pytest.approx(base["spans_per_day"] / 10, rel=0.02)


def test_docs_quote_the_series_the_app_has(sized: tuple[str, dict[str, Any]]) -> None:
    """docs/kubernetes.md's sizing table shows the series counts this run measures."""
    _, result = sized
    m = result["measured"]
    docs = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    quoted = {
        key: int(float(value))
        for key, value in re.findall(
            r"measured: series per (pod, traffic mix|pod, fixed part|extra \(method, route, "
            r"status\))\s+([\d.]+)",
            docs,
        )
    }
    assert quoted == {
        "pod, traffic mix": m["series_mix_routes"],
        "pod, fixed part": m["series_fixed"],
        "extra (method, route, status)": int(m["series_per_route_status"]),
    }
    assert "python benchmarks/sizing.py" in docs
