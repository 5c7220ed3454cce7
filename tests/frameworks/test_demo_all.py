"""`pyobs demo --framework all`: every example at once, with traffic, and a clean stop."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pyobs.cli.demo import REQUIRES, available_examples
from tests.conftest import require_service
from tests.helpers import alive, descendants, kill_tree, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_demo_all_runs_every_example_and_stops_cleanly(tmp_path: Path) -> None:
    """Every installed example serves traffic at once; stdout is JSON; nothing is left running."""
    examples = available_examples()
    missing = [n for n in examples if importlib.util.find_spec(REQUIRES.get(n, n)) is None]
    require_service(not missing, f"frameworks not installed for examples: {missing}")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyobs", "demo", "--framework", "all", "--port", "0",
             "--duration", "8", "--rate", "8"],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    children: list[int] = []
    try:
        # The services the demo started, noted while it runs (for the check and the cleanup).
        wait_until(lambda: proc.poll() is not None or "are up" in err.read_text(), 180, "start")
        children = descendants(proc.pid)
        assert proc.wait(timeout=180) == 0, err.read_text()[-3000:]
    finally:
        kill_tree(proc)
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    served = Counter(r["service.name"] for r in records if r.get("log.logger") == "pyobs.access")
    assert set(served) == {f"example-{name}" for name in examples}
    assert all(n >= 5 for n in served.values()), served
    ports = [int(p) for p in re.findall(r"^  example-\S+\s+http://127\.0\.0\.1:(\d+)$",
                                        err.read_text(), re.M)]  # fmt: skip
    assert len(set(ports)) == len(examples)
    assert not any(_listening(port) for port in ports)
    assert children and not [pid for pid in children if alive(pid)]
