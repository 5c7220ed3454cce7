"""Smoke run of benchmarks/shipper.py --quick: the figures it reports come from a real run.

Speed is not asserted (CI is too noisy); what is: every event reached the receiver, the
records waiting while the receiver was down were all kept at exit, and memory with 1,000
exception records waiting stays small (no frame is kept), for pyobs and, side by side, the
e4d17de shipper when git can show it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_run(tmp_path: Path) -> None:
    """The benchmark runs end to end; pyobs delivers everything and keeps everything at exit."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "shipper.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    pyobs = data["pyobs"]
    assert pyobs["throughput"]["delivered"] == pyobs["throughput"]["events"]
    assert pyobs["throughput"]["delivered_per_s"] > 0
    for scenario in ("exceptions_down", "exit_down"):
        assert pyobs[scenario]["kept_for_next_start"] == pyobs[scenario]["events"]
    assert pyobs["exceptions_down"]["rss_growth_mb"] < 64
    assert "| delivered events/s" in result.stdout
    if "pyobs-e4d17de" in data:
        old = data["pyobs-e4d17de"]
        assert old["throughput"]["delivered"] > 0
        # RSS growth is reported for both; 1,000 waiting records (--quick) are too few for the
        # old shipper's kept frames to stand out of the allocator's noise (the full run's
        # 10,000 in docs/benchmarks.md show it), so the two are not compared here.
        assert isinstance(old["exceptions_down"]["rss_growth_mb"], float)
    else:
        assert any("e4d17de" in note for note in data["notes"])
