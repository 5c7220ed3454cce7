"""benchmarks/sizing.py --es: access lines really indexed with pyobs's template, bytes on disk.

The sizing page (docs/kubernetes.md) quotes Elasticsearch's bytes per access line from this
measurement; this runs it against the suite's real Elasticsearch 8.19 node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import import_or_require

REPO = Path(__file__).resolve().parents[2]


def test_sizing_measures_bytes_on_disk_in_a_real_elasticsearch(es_url: str, tmp_path: Path) -> None:
    """Every access line is indexed; the store size per line is a real figure, and scales."""
    import_or_require("flask")
    out = tmp_path / "sizing.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "sizing.py"),
            "--requests",
            "1000",
            "--es",
            es_url,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sized = json.loads(out.read_text())
    m = sized["measured"]
    indexed = int(result.stdout.split("Elasticsearch: ", 1)[1].split(" lines", 1)[0])
    assert indexed == round(1000 * m["access_lines_per_request"])  # every line, none lost
    # Compressed on disk, smaller than the JSON line; not zero.
    assert 0 < m["es_bytes_per_doc"] < m["access_line_bytes_mean"]
    per_day = sized["log_lines_per_day"] * m["es_bytes_per_doc"] / 1e9
    assert abs(sized["es_gb_per_day"] - per_day) <= 0.1 + per_day * 0.01
    assert sized["es_gb_retained"] > sized["es_gb_per_day"]
