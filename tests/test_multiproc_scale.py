"""Smoke test of benchmarks/scale.py: a quick run measures every curve it promises.

The figures themselves are machine-dependent (docs/benchmarks.md, "Scale"); what is checked
is what does not depend on the machine: pyobs keeps the same files however many workers
restarted while plain prometheus_client keeps every dead worker's, and both pages carry the
same series.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_scale_run_reports_every_curve(tmp_path: Path) -> None:
    """--quick: request path, routes, workers and restarts curves, with flat pyobs files."""
    out = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--json", str(out)],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["request_path"]) == {
        "single-process",
        "multiprocess",
        "multiprocess-public",
    }
    assert "| routes |" in proc.stdout and "| restarts |" in proc.stdout
    restarts = results["restarts"]
    assert [r["restarts"] for r in restarts] == [0, 5]
    assert restarts[1]["pyobs"]["files"] <= restarts[0]["pyobs"]["files"] + 3  # the archives
    assert restarts[1]["plain"]["files"] == restarts[0]["plain"]["files"] + 5 * 4
    for curve in ("routes", "workers", "restarts"):
        for row in results[curve]:
            # The same series: pyobs's page differs by exemplars and process metrics only.
            assert 1.0 <= row["pyobs"]["bytes"] / row["plain"]["bytes"] < 1.1
