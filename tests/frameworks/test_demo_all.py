"""`pyobs demo --framework all`: every example at once, with traffic, and a clean stop."""

from __future__ import annotations

import importlib.util
import json
import random
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

from pyobs.cli.demo import REQUIRES, available_examples
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parents[2]


def _free_run(count: int) -> int:
    """A base port with ``count`` consecutive free loopback ports after it."""
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_all_runs_every_example_and_stops_cleanly(tmp_path: Path) -> None:
    """Every installed example serves traffic at once; stdout is JSON; nothing is left running."""
    examples = available_examples()
    missing = [n for n in examples if importlib.util.find_spec(REQUIRES.get(n, n)) is None]
    require_service(not missing, f"frameworks not installed for examples: {missing}")
    base = _free_run(len(examples))
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "pyobs", "demo", "--framework", "all", "--port", str(base),
             "--duration", "8", "--rate", "8"],
            cwd=ROOT,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            timeout=180,
            check=False,
        )  # fmt: skip
    assert result.returncode == 0
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    served = Counter(r["service.name"] for r in records if r.get("log.logger") == "pyobs.access")
    assert set(served) == {f"example-{name}" for name in examples}
    assert all(n >= 5 for n in served.values()), served
    assert not any(_listening(port) for port in range(base, base + len(examples)))
