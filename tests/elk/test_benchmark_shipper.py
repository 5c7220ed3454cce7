"""Smoke run of benchmarks/shipper.py --quick: the figures it reports come from a real run.

Speed is not asserted (CI is too noisy); what is: nothing lost across the receiver restart,
first arrivals in order, the backlog delivered, and a fast exit with everything kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_run(tmp_path: Path) -> None:
    """The benchmark runs end to end and its pyobs figures show no loss and a fast exit."""
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "shipper.py"), "--quick", "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    pyobs = json.loads(out.read_text())["pyobs"]
    assert pyobs["throughput"]["delivered"] == pyobs["throughput"]["events"]
    restart = pyobs["restart"]
    assert restart["lost"] == 0
    assert restart["unique_delivered"] == restart["sent"]
    assert restart["in_order"] is True
    assert restart["backlog_delivered_after_restart_s"] is not None
    assert pyobs["exit"]["exit_s"] < 1.0
    assert pyobs["exit"]["kept_for_next_start"] == pyobs["exit"]["events"]
