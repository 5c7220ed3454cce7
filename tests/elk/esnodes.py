"""Start and stop the real Elasticsearch nodes the log-path tests run against.

Both come from Maven Central through scripts/setup.d/20-elasticsearch.sh:

- ``Es8Node``: the official Elasticsearch 8.19 integ-test-zip distribution. It has data
  streams, composable templates, data stream lifecycle and search, but no ingest-common
  module and no painless, so no ingest processor can run on it.
- ``IngestNode``: an embedded Elasticsearch 7.10.2 from org.codelibs elasticsearch-cluster-runner
  (the newest release of that artifact on Maven Central), which has ingest-common,
  ingest-user-agent and painless. The tests run the pyobs ingest pipeline on it for real.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.helpers import PortTaken, free_port, port_taken_in, start_with_retry

__all__ = ["Es8Node", "IngestNode", "free_port", "http_json"]

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "elasticsearch"
ES_VERSION = "8.19.21"
RUNNER_VERSION = "7.10.2.0"
ES_USER = "pyobs-es"
START_TIMEOUT_S = 90.0


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    """Send one JSON (or NDJSON when body is a str) request and decode the JSON answer."""
    data: bytes | None = None
    headers = {"Content-Type": "application/json"}
    if isinstance(body, str):
        data = body.encode()
        headers["Content-Type"] = "application/x-ndjson"
    elif body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        raise RuntimeError(f"{method} {url} -> {exc.code}: {payload[:2000]!r}") from exc


def _check_running(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Raise PortTaken when the node could not bind its port (start again elsewhere)."""
    tail = _tail(log)
    if port_taken_in(tail) or re.search(r"The http port \d+ is unavailable", tail):
        lines = [line for line in tail.splitlines() if port_taken_in(line)]
        raise PortTaken((lines or [tail[-500:]])[0][:500])
    if proc.poll() is not None:
        raise RuntimeError(f"Elasticsearch exited with {proc.returncode}: {_tail(log)}")


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_running(proc, log)
        try:
            health = http_json("GET", f"{url}/_cluster/health?wait_for_status=yellow&timeout=2s")
            if health.get("status") in {"green", "yellow"}:
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Elasticsearch not healthy after {START_TIMEOUT_S}s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a node started in its own session: SIGTERM the group, SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Es8Node:
    """One Elasticsearch 8.19 node on a free loopback port, data in a throw-away directory."""

    def __init__(self) -> None:
        self.home = CACHE / f"elasticsearch-{ES_VERSION}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.url = ""

    @staticmethod
    def missing_reason() -> str | None:
        """Why the node cannot start here, or None."""
        if not (CACHE / f"elasticsearch-{ES_VERSION}" / "bin" / "elasticsearch").is_file():
            return "Elasticsearch not fetched: run scripts/setup.d/20-elasticsearch.sh"
        if shutil.which("java") is None:
            return "java not installed: run scripts/setup.d/20-elasticsearch.sh"
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return "running as root without setpriv to drop privileges"
        return None

    def start(self) -> str:
        """Start the node and return its base URL once the cluster is yellow or green.

        The two ports are picked free, but another process may bind one while the JVM starts:
        then the node starts again on two new ports.
        """
        return start_with_retry(self._start_on, ports=2)

    def _start_on(self, port: int, transport: int) -> str:
        # A world-traversable directory: as root the node runs as an unprivileged user.
        self.workdir = Path(tempfile.mkdtemp(prefix="pyobs-es8-"))
        self.workdir.chmod(0o755)
        home = self.home
        conf = self.workdir / "config"
        shutil.copytree(home / "config", conf)
        (conf / "elasticsearch.yml").write_text(
            f"cluster.name: pyobs-test-{uuid.uuid4().hex[:8]}\n"
            "node.name: pyobs-test-1\n"
            f"path.data: {self.workdir / 'data'}\n"
            f"path.logs: {self.workdir / 'logs'}\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {port}\n"
            f"transport.port: {transport}\n"
            "discovery.type: single-node\n"
            "xpack.security.enabled: false\n"
            "action.destructive_requires_name: false\n"
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
        )
        # C1 only: a test node starts much faster and needs no peak throughput.
        (conf / "jvm.options.d" / "test.options").write_text(
            "-Xms512m\n-Xmx512m\n-XX:TieredStopAtLevel=1\n"
        )
        env = dict(os.environ)
        env["ES_PATH_CONF"] = str(conf)
        env["ES_TMPDIR"] = str(self.workdir / "tmp")
        (self.workdir / "tmp").mkdir()
        java = shutil.which("java")
        assert java is not None
        env.setdefault("ES_JAVA_HOME", str(Path(java).resolve().parents[1]))
        cmd = [str(home / "bin" / "elasticsearch")]
        if os.geteuid() == 0:
            home = self._readable_home()
            cmd = [
                "setpriv",
                f"--reuid={ES_USER}",
                f"--regid={ES_USER}",
                "--clear-groups",
                str(home / "bin" / "elasticsearch"),
            ]
            subprocess.run(["chown", "-R", f"{ES_USER}:{ES_USER}", str(self.workdir)], check=True)
        log = self.workdir / "stdout.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(self.url, self.proc, log)
        except Exception:
            self.stop()
            raise
        return self.url

    def _readable_home(self) -> Path:
        """The distribution as the unprivileged user can read it (copied if the checkout is not)."""
        probe = subprocess.run(
            [
                "setpriv",
                f"--reuid={ES_USER}",
                f"--regid={ES_USER}",
                "--clear-groups",
                "test",
                "-r",
                str(self.home / "lib" / f"elasticsearch-{ES_VERSION}.jar"),
            ],
            check=False,
        )
        if probe.returncode == 0:
            return self.home
        assert self.workdir is not None
        copy = self.workdir / "home"
        shutil.copytree(self.home, copy, symlinks=True)
        return copy

    def stop(self) -> None:
        """Stop the JVM and delete the data."""
        if self.proc is not None:
            _stop(self.proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


class IngestNode:
    """An embedded Elasticsearch 7.10.2 (cluster runner) that runs ingest pipelines for real."""

    def __init__(self) -> None:
        self.lib = CACHE / f"cluster-runner-{RUNNER_VERSION}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.url = ""

    @staticmethod
    def missing_reason() -> str | None:
        """Why the node cannot start here, or None."""
        if not (CACHE / f"cluster-runner-{RUNNER_VERSION}" / ".complete").is_file():
            return "cluster runner not fetched: run scripts/setup.d/20-elasticsearch.sh"
        if shutil.which("java") is None:
            return "java not installed: run scripts/setup.d/20-elasticsearch.sh"
        return None

    def start(self) -> str:
        """Start the node and return its base URL (again on other ports when a bind fails)."""
        return start_with_retry(self._start_on, ports=0)

    def _start_on(self) -> str:
        self.workdir = Path(tempfile.mkdtemp(prefix="pyobs-es7-"))
        log = self.workdir / "stdout.log"
        # The runner's command line cannot leave 9200-9299: it takes the first port above its
        # base that nothing answers on and logs what it bound (the transport port comes from
        # Elasticsearch's own 9300-9400 range, which skips taken ports). A random base spreads
        # parallel runs; a port taken between the runner's check and the bind starts it again.
        base = random.randint(9200, 9280)
        cmd = [
            "java", "-Xms256m", "-Xmx384m", "-XX:TieredStopAtLevel=1", "-cp", f"{self.lib}/*",
            "org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner",
            "-basePath", str(self.workdir / "base"), "-numOfNode", "1",
            # A cluster name of its own: same-named nodes on this host would try to join.
            "-baseHttpPort", str(base), "-clusterName", f"pyobs-ingest-{uuid.uuid4().hex[:8]}",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        pattern = re.compile(r"AbstractHttpServerTransport.*publish_address \{127\.0\.0\.1:(\d+)\}")
        try:
            while not self.url:
                _check_running(self.proc, log)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest node did not start: {_tail(log)}")
                match = pattern.search(_tail(log))
                if match:
                    self.url = f"http://127.0.0.1:{match.group(1)}"
                time.sleep(0.3)
            _wait_healthy(self.url, self.proc, log)
        except Exception:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop the JVM and delete the data."""
        if self.proc is not None:
            _stop(self.proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
