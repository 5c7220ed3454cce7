"""The shared test helpers themselves: a lost bind race is retried, a process tree is ended."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers

CHILD_AND_GRANDCHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                  start_new_session=True)  # as the demo starts its services
    print(grandchild.pid, flush=True)
    time.sleep(300)
    """
)


def test_a_port_taken_before_the_bind_is_retried_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first port picked is taken when the server binds: it starts again on another port."""
    held = helpers.listening_socket()
    taken = held.getsockname()[1]
    real = helpers.free_port
    picks: Iterator[int] = iter([taken])
    monkeypatch.setattr(helpers, "free_port", lambda host="127.0.0.1": next(picks, None) or real())
    tried: list[int] = []

    def command(port: int) -> list[str]:
        tried.append(port)
        return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]

    with held:
        proc, port = helpers.start_server(
            command, lambda p: helpers.http_status(f"http://127.0.0.1:{p}/") == 200,
            tmp_path / "server.log", cwd=tmp_path,
        )  # fmt: skip
    try:
        assert tried[0] == taken and port != taken and tried[-1] == port
    finally:
        helpers.kill_tree(proc)
    assert not helpers.alive(proc.pid)


def test_kill_tree_ends_children_in_sessions_of_their_own(tmp_path: Path) -> None:
    """A child's child that left the process group is ended too."""
    with (tmp_path / "out").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_AND_GRANDCHILD], stdout=out, start_new_session=True
        )
    try:
        grandchild = int(
            helpers.wait_until(lambda: (tmp_path / "out").read_text().strip(), 30, "the pid")
        )
        assert helpers.alive(grandchild)
    finally:
        helpers.kill_tree(proc)
    helpers.wait_until(lambda: not helpers.alive(grandchild), 10, "the grandchild to end")
