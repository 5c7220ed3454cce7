"""With pyobs's ready logging configs, every stdout line of a real server is ECS JSON.

Each server runs as its own process on a free 127.0.0.1 port, configured the way
docs/logs.md ("Server logs") tells users to: uvicorn with ``--log-config``, gunicorn with
``--log-config-json``, Tornado and aiohttp with ``dictConfig``, Sanic with ``log_config``.
Every line the process writes to stdout must parse as JSON, the server's own access log
must be silent while pyobs's is there (one line per request), and nothing goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyobs import logconfigs
from tests.conftest import import_or_require
from tests.frameworks.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
ATTEMPTS = 3  # a free port can be taken between picking and binding: retry with another

# The app's routes, the same on every server: /ok logs one WARNING line of its own.
APPS = {
    "uvicorn": """
        import logging
        from fastapi import FastAPI
        import pyobs.fastapi

        app = FastAPI()

        @app.get("/ok")
        def ok() -> dict:
            logging.getLogger("shop").warning("served")
            return {"ok": True}

        @app.get("/boom")
        def boom() -> dict:
            raise RuntimeError("boom")

        pyobs.fastapi.instrument(app)
    """,
    "gunicorn": """
        import logging
        import flask
        import pyobs.flask

        app = flask.Flask("app")

        @app.get("/ok")
        def ok() -> str:
            logging.getLogger("shop").warning("served")
            return "ok"

        @app.get("/boom")
        def boom() -> str:
            raise RuntimeError("boom")

        pyobs.flask.instrument(app)
    """,
    "tornado": """
        import asyncio, logging, logging.config, signal, sys
        import tornado.web
        import pyobs.tornado
        from pyobs.logconfigs import server_config

        logging.config.dictConfig(server_config("tornado"))

        class Ok(tornado.web.RequestHandler):
            def get(self) -> None:
                logging.getLogger("shop").warning("served")
                self.write("ok")

        class Boom(tornado.web.RequestHandler):
            def get(self) -> None:
                raise RuntimeError("boom")

        async def main() -> None:
            app = pyobs.tornado.instrument(tornado.web.Application([("/ok", Ok), ("/boom", Boom)]))
            app.listen(int(sys.argv[1]), address="127.0.0.1")
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()

        asyncio.run(main())
    """,
    "aiohttp": """
        import logging, logging.config, sys
        from aiohttp import web
        import pyobs.aiohttp
        from pyobs.logconfigs import server_config

        logging.config.dictConfig(server_config("aiohttp"))

        async def ok(request: web.Request) -> web.Response:
            logging.getLogger("shop").warning("served")
            return web.Response(text="ok")

        async def boom(request: web.Request) -> web.Response:
            raise RuntimeError("boom")

        app = web.Application()
        app.router.add_get("/ok", ok)
        app.router.add_get("/boom", boom)
        pyobs.aiohttp.instrument(app)
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
    """,
    "sanic": """
        import logging, sys
        from sanic import Sanic, text
        import pyobs.sanic
        from pyobs.logconfigs import server_config

        app = Sanic("shop", log_config=server_config("sanic"))

        @app.get("/ok")
        async def ok(request):
            logging.getLogger("shop").warning("served")
            return text("ok")

        @app.get("/boom")
        async def boom(request):
            raise RuntimeError("boom")

        pyobs.sanic.instrument(app)

        if __name__ == "__main__":
            app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True)
    """,
}
# gunicorn once more, with logconfig_dict in a Python config file instead of the JSON file.
APPS["gunicorn-conf"] = APPS["gunicorn"]
GUNICORN_CONF = """
from pyobs.logconfigs import server_config

logconfig_dict = server_config("gunicorn")
"""
MODULES = {"uvicorn": "uvicorn", "gunicorn": "gunicorn", "tornado": "tornado"}
MODULES.update({"aiohttp": "aiohttp", "sanic": "sanic", "gunicorn-conf": "gunicorn"})


def command(server: str, port: int) -> list[str]:
    """How docs/logs.md starts ``server`` with its ready config."""
    config = logconfigs.path(server.partition("-")[0])
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port",
                str(port), "--log-config", config]  # fmt: skip
    if server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "app:app", "-b", f"127.0.0.1:{port}", "-w",
                "1", "--log-config-json", config]  # fmt: skip
    if server == "gunicorn-conf":
        return [sys.executable, "-m", "gunicorn", "app:app", "-b", f"127.0.0.1:{port}", "-w",
                "1", "-c", "gunicorn.conf.py"]  # fmt: skip
    return [sys.executable, "app.py", str(port)]


@dataclass
class Ran:
    """What a server process wrote, once stopped."""

    stdout: list[str]
    stderr: list[str]


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def run_server(server: str, tmp_path: Path, paths: list[str]) -> tuple[Ran, list[int]]:
    """Start ``server`` on a free port, send ``paths``, stop it; its output and the statuses."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APPS[server]))
    if server == "gunicorn-conf":  # only then: gunicorn reads ./gunicorn.conf.py by default
        (tmp_path / "gunicorn.conf.py").write_text(GUNICORN_CONF)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    # HOME: gunicorn puts its control socket there; keep it inside the test directory.
    env.update(PYTHONPATH=str(ROOT), PYOBS_SERVICE_NAME=f"logs-{server}", HOME=str(tmp_path))
    for _ in range(ATTEMPTS):
        port = free_port()
        proc = subprocess.Popen(
            command(server, port),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and not _listening(port) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is not None:
                out, err = proc.communicate()
                if "address already in use" in (out + err).lower():
                    continue
                pytest.fail(f"{server} exited while starting:\n{out}\n{err}")
            if not _listening(port):
                pytest.fail(f"{server} did not listen on {port} within {START_TIMEOUT}s")
            statuses = [_get(f"http://127.0.0.1:{port}{path}") for path in paths]
        finally:
            out, err = _stop(proc)
        return Ran(out.splitlines(), err.splitlines()), statuses
    pytest.fail(f"no free port for {server} after {ATTEMPTS} attempts")


@pytest.fixture(params=sorted(APPS))
def server(request: pytest.FixtureRequest) -> str:
    """Each server whose package is installed."""
    name = str(request.param)
    import_or_require(MODULES[name])
    if name == "uvicorn":
        import_or_require("fastapi")
    if name.startswith("gunicorn"):
        import_or_require("flask")
    return name


def test_every_stdout_line_is_ecs_json_and_the_servers_access_log_is_off(
    server: str, tmp_path: Path
) -> None:
    """Requests through the documented config: JSON only; one pyobs access line per request."""
    paths = ["/ok", "/missing", "/boom", "/ok?token=secret"]
    ran, statuses = run_server(server, tmp_path, paths)
    assert statuses == [200, 404, 500, 200]
    records: list[dict[str, Any]] = []
    for line in ran.stdout:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{server} wrote a line that is not JSON: {line!r}")
    for record in records:
        assert {"@timestamp", "log.level", "message", "ecs.version", "log.logger"} <= set(record)
        assert record["service.name"] == f"logs-{server}"
    loggers = [r["log.logger"] for r in records]
    _, server_access = logconfigs.SERVERS[server.partition("-")[0]]
    assert server_access not in loggers
    access = [r for r in records if r["log.logger"] == "pyobs.access"]
    assert [r["http.response.status_code"] for r in access] == statuses
    assert access[3]["url.query"] == "token=[REDACTED]"
    assert [r["message"] for r in records if r["log.logger"] == "shop"] == ["served", "served"]
    assert "secret" not in "\n".join(ran.stdout)
    assert ran.stderr == []


@pytest.mark.parametrize(
    ("name", "own"), [("uvicorn", "uvicorn.error"), ("gunicorn", "gunicorn.error")]
)
def test_the_servers_own_lines_come_out_as_json(name: str, own: str, tmp_path: Path) -> None:
    """uvicorn's and gunicorn's start-up lines are there, as JSON from their own loggers."""
    import_or_require(name)
    import_or_require("fastapi" if name == "uvicorn" else "flask")
    ran, _ = run_server(name, tmp_path, ["/ok"])
    own_lines = [json.loads(line) for line in ran.stdout if f'"log.logger":"{own}"' in line]
    assert any("127.0.0.1" in r["message"] for r in own_lines)


def test_shipped_files_are_the_generated_configs() -> None:
    """The JSON files beside pyobs.logconfigs are server_config() written out."""
    for name in logconfigs.SERVERS:
        shipped = json.loads(Path(logconfigs.path(name)).read_text())
        assert shipped == logconfigs.server_config(name)


def test_logconfig_command_prints_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    """`pyobs logconfig uvicorn --level info` prints a dictConfig with the root at INFO."""
    from pyobs.cli import main

    assert main(["logconfig", "uvicorn", "--level", "info"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["root"]["level"] == "INFO"
    assert printed["loggers"]["uvicorn.access"]["handlers"] == ["null"]
    assert main(["logconfig", "sanic", "--path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == Path(logconfigs.path("sanic"))
