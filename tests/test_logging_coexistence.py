"""pyobs as a guest in the app's logging (CONTRACT §5): no extra handler, no level changed.

Each scenario runs in a fresh interpreter (no pytest capture handlers on the root, no
PYOBS_/OTEL_ variables), as an application would, and reads what it wrote to stdout and
stderr. "Same lines" means the same records, counted by level, with and without pyobs.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import pyobs
from pyobs import logs
from tests.conftest import import_or_require

ROOT = Path(__file__).resolve().parents[1]

# Emits one record per level from an app logger; the scenarios put setup around it.
EMIT = """
import logging
log = logging.getLogger("shop")
for name in ("debug", "info", "warning", "error", "critical"):
    getattr(log, name)("%s line", name)
"""


def run(*parts: str, **env: str) -> tuple[list[str], list[str]]:
    """Run the code ``parts`` (one after the other) in a fresh interpreter; stdout, stderr lines."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    clean.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), done.stderr.splitlines()


def json_records(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in lines]


def levels_of_json(lines: list[str], logger: str = "shop") -> Counter[str]:
    return Counter(r["log.level"] for r in json_records(lines) if r["log.logger"] == logger)


def levels_of_text(lines: list[str]) -> Counter[str]:
    """Levels of plain lines, read from the messages EMIT writes ('warning line')."""
    found = (_MESSAGE.search(line) for line in lines)
    return Counter(match.group(1) for match in found if match)


_MESSAGE = re.compile(r"\b(debug|info|warning|error|critical) line")


def test_nothing_configured_gives_json_at_the_roots_level() -> None:
    """No app config: the records Python alone writes (WARNING and up), as JSON on stdout."""
    _, bare_err = run(EMIT)
    out, err = run("import pyobs; pyobs.setup(service_name='shop')\n", EMIT)
    assert levels_of_text(bare_err) == Counter({"warning": 1, "error": 1, "critical": 1})
    assert levels_of_json(out) == levels_of_text(bare_err)
    assert err == []
    assert {r["service.name"] for r in json_records(out)} == {"shop"}


def test_pyobs_log_level_sets_the_level_when_pyobs_owns_the_output() -> None:
    """PYOBS_LOG_LEVEL=debug shows every level once."""
    out, err = run("import pyobs; pyobs.setup()\n", EMIT, PYOBS_LOG_LEVEL="debug")
    assert levels_of_json(out) == Counter(
        {"debug": 1, "info": 1, "warning": 1, "error": 1, "critical": 1}
    )
    assert err == []


def test_basicconfig_before_setup_is_left_alone() -> None:
    """The app's basicConfig first: pyobs adds no handler and changes no level."""
    code = """
        import logging, pyobs
        logging.basicConfig(level=logging.INFO)
        pyobs.setup(log_level="debug")
        root = logging.getLogger()
        print("handlers", len(root.handlers), "level", root.level)
    """
    bare_out, bare_err = run(code.replace('pyobs.setup(log_level="debug")', ""), EMIT)
    out, err = run(code, EMIT)
    assert out == bare_out == [f"handlers 1 level {logging.INFO}"]
    assert err == bare_err
    assert levels_of_text(err) == Counter({"info": 1, "warning": 1, "error": 1, "critical": 1})


def test_basicconfig_after_setup_takes_over_without_duplicates() -> None:
    """instrument() at import, basicConfig(level=DEBUG) in main: each line once, at DEBUG."""
    code = """
        import logging, pyobs
        pyobs.setup()
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s:%(name)s:%(message)s")
    """
    out, err = run(code, EMIT)
    assert out == []
    assert levels_of_text(err) == Counter(
        {"debug": 1, "info": 1, "warning": 1, "error": 1, "critical": 1}
    )


def test_basicconfig_with_the_json_handler_keeps_ecs() -> None:
    """basicConfig(handlers=[pyobs.logs.json_handler()]): the app's level, ECS lines, once."""
    code = """
        import logging, pyobs, pyobs.logs
        pyobs.setup(service_name="shop")
        logging.basicConfig(level=logging.INFO, handlers=[pyobs.logs.json_handler()])
    """
    out, err = run(code, EMIT)
    assert levels_of_json(out) == Counter({"info": 1, "warning": 1, "error": 1, "critical": 1})
    assert {r["service.name"] for r in json_records(out)} == {"shop"}
    assert err == []


def test_ready_dict_config_follows_setup() -> None:
    """pyobs.logs.dict_config() in dictConfig, then setup(): ECS lines carry the set-up service."""
    code = """
        import logging.config, pyobs, pyobs.logs
        logging.config.dictConfig(pyobs.logs.dict_config(level="INFO"))
        pyobs.setup(service_name="late-name", environment="prod")
    """
    out, err = run(code, EMIT)
    assert levels_of_json(out) == Counter({"info": 1, "warning": 1, "error": 1, "critical": 1})
    assert {(r["service.name"], r["service.environment"]) for r in json_records(out)} == {
        ("late-name", "prod")
    }
    assert err == []


def test_formatter_by_dotted_path_takes_the_service_from_the_environment() -> None:
    """A dictConfig naming ECSFormatter before setup() reads PYOBS_SERVICE_NAME."""
    code = """
        import logging.config
        logging.config.dictConfig({
            "version": 1,
            "formatters": {"ecs": {"()": "pyobs.logs.ECSFormatter"}},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "ecs",
                                 "stream": "ext://sys.stdout"}},
            "root": {"level": "WARNING", "handlers": ["out"]},
        })
    """
    out, _ = run(code, EMIT, PYOBS_SERVICE_NAME="from-env")
    assert levels_of_json(out) == Counter({"warning": 1, "error": 1, "critical": 1})
    assert {r["service.name"] for r in json_records(out)} == {"from-env"}


def test_formatter_as_a_class_entry_ignores_format_arguments() -> None:
    """``"class": "pyobs.logs.ECSFormatter"`` with a format string still gives ECS lines."""
    code = """
        import logging.config
        logging.config.dictConfig({
            "version": 1,
            "formatters": {"ecs": {"class": "pyobs.logs.ECSFormatter", "format": "%(message)s"}},
            "handlers": {"out": {"class": "pyobs.logs.StdoutHandler", "formatter": "ecs"}},
            "root": {"level": "ERROR", "handlers": ["out"]},
        })
    """
    out, err = run(code, EMIT)
    assert levels_of_json(out) == Counter({"error": 1, "critical": 1})
    assert err == []


def test_always_adds_the_handler_beside_the_apps() -> None:
    """PYOBS_LOG_HANDLER=always: JSON on stdout as well as the app's own handler on stderr."""
    code = "import logging, pyobs; logging.basicConfig(); pyobs.setup()\n"
    out, err = run(code, EMIT, PYOBS_LOG_HANDLER="always")
    assert levels_of_json(out) == Counter({"warning": 1, "error": 1, "critical": 1})
    assert levels_of_text(err) == levels_of_json(out)


def test_never_installs_nothing_and_leaves_structlog_alone() -> None:
    """PYOBS_LOG_HANDLER=never: Python's own output, structlog's own renderer."""
    code = """
        import logging, pyobs, structlog
        pyobs.setup(log_level="debug")
        print("last resort is stdlib's", type(logging.lastResort).__name__)
        print("root level", logging.getLogger().level)
        print("structlog configured", structlog.is_configured())
    """
    _, bare_err = run(EMIT)
    out, err = run(code, EMIT, PYOBS_LOG_HANDLER="never")
    assert out == [
        "last resort is stdlib's _StderrHandler",
        f"root level {logging.WARNING}",
        "structlog configured False",
    ]
    assert err == bare_err


def test_access_log_with_nothing_configured_is_one_json_line() -> None:
    """A request with no app logging config: one access line, JSON, on stdout; nothing on stderr."""
    import_or_require("flask")
    code = """
        import logging, flask, pyobs.flask
        app = flask.Flask("a")
        app.get("/x")(lambda: "ok")
        pyobs.flask.instrument(app)
        app.test_client().get("/x?token=abc", buffered=True)
    """
    out, err = run(code)
    (access,) = json_records(out)
    assert access["log.logger"] == "pyobs.access"
    assert access["url.query"] == "token=[REDACTED]"
    assert err == []


def test_access_log_goes_to_the_apps_handlers_when_it_configured_logging() -> None:
    """With the app's basicConfig(INFO) the access record goes to the app's handler, once."""
    import_or_require("flask")
    code = """
        import logging, flask, pyobs.flask
        logging.basicConfig(level=logging.INFO, format="%(name)s|%(message)s")
        app = flask.Flask("a")
        app.get("/x")(lambda: "ok")
        pyobs.flask.instrument(app)
        app.test_client().get("/x", buffered=True)
    """
    out, err = run(code)
    assert out == []
    assert [line for line in err if line.startswith("pyobs.access|")] == ["pyobs.access|GET /x 200"]


def test_structlog_routed_when_pyobs_owns_the_output() -> None:
    """auto with nothing configured: structlog lines come out as the same ECS JSON."""
    code = """
        import pyobs, structlog
        pyobs.setup()
        structlog.get_logger("shop").warning("declined", order=7)
    """
    out, err = run(code)
    (line,) = json_records(out)
    assert (line["log.logger"], line["message"], line["labels.order"]) == ("shop", "declined", "7")
    assert err == []


def test_tornado_logging_option_is_honoured() -> None:
    """Tornado's --logging=debug after instrumenting: DEBUG lines kept, each once."""
    import_or_require("tornado")
    code = """
        import logging, pyobs
        pyobs.setup()
        import tornado.options, tornado.log
        tornado.options.parse_command_line(["prog", "--logging=debug"])
        logging.getLogger("tornado.general").debug("general debug line")
    """
    bare_out, bare_err = run(code.replace("pyobs.setup()", ""), EMIT)
    out, err = run(code, EMIT)
    assert out == bare_out == []
    assert levels_of_text(err) == levels_of_text(bare_err)
    assert levels_of_text(err)["debug"] == 2


def test_django_default_logging_every_record_once() -> None:
    """Django's DEFAULT_LOGGING (django loggers only): its records stay Django's, the rest JSON."""
    import_or_require("django")
    code = """
        import logging, pyobs
        from django.conf import settings
        settings.configure(DEBUG=True)
        import django
        django.setup()
        pyobs.setup()
        logging.getLogger("django.request").warning("django line")
    """
    out, err = run(code, EMIT)
    assert levels_of_json(out) == Counter({"warning": 1, "error": 1, "critical": 1})
    assert [line for line in err if "django line" in line] == ["django line"]
    assert not any("django line" in line for line in out)


def test_reset_puts_the_standard_last_resort_back() -> None:
    """Setting up and resetting leaves the logging module as it was."""
    code = """
        import logging, pyobs, pyobs.testing
        before = (logging.lastResort, list(logging.getLogger().handlers), logging.getLogger().level)
        pyobs.setup(log_level="debug")
        changed = logging.lastResort is not before[0]
        pyobs.testing.reset()
        after = (logging.lastResort, list(logging.getLogger().handlers), logging.getLogger().level)
        print(changed, after == before, logging.getLogger("pyobs.access").level)
    """
    out, _ = run(code)
    assert out == ["True True 0"]


def test_direct_path_used_only_when_pyobs_is_the_only_destination() -> None:
    """The fast path holds for pyobs's last-resort handler, not once the app has a handler."""
    code = """
        import logging, pyobs
        from pyobs import logs
        pyobs.setup()
        access = logging.getLogger("pyobs.access")
        print(logs.handler_placement(), logs.direct_handler(access, logging.INFO) is not None)
        logging.basicConfig()
        print(logs.direct_handler(access, logging.INFO) is not None)
    """
    out, _ = run(code)
    assert out == ["last_resort True", "False"]
    pyobs.setup()  # always (tests/conftest.py): on the root beside pytest's capture handlers
    assert logs.direct_handler(logging.getLogger("pyobs.access"), logging.INFO) is None


def test_fast_and_logging_paths_write_the_same_access_line() -> None:
    """Through pyobs's last-resort handler, the fast path and the logging path agree: field
    order and values, for paths and user agents that need escaping, a method outside the
    standard ones and a path longer than the message keeps."""
    import_or_require("flask")
    code = r"""
        import logging, flask, pyobs.flask
        app = flask.Flask("a")
        app.get("/x")(lambda: "ok")
        pyobs.flask.instrument(app)
        client = app.test_client()
        requests = [
            ("GET", "/x?q=1", "pyobs-test/1"),
            ("GET", '/x"y\\z/\u00e9', 'agent "quoted"\t\\ \u00e9'),
            ("BREW", "/x", "x" * 300),
            ("GET", "/" + "a" * 1500, ""),
        ]
        def send():
            for method, path, agent in requests:
                client.open(path, method=method, headers={"User-Agent": agent}, buffered=True)
        send()
        logging.getLogger("pyobs.access").addFilter(lambda record: True)  # the logging path
        send()
    """
    out, err = run(code)
    records = json_records(out)
    assert len(records) == 8
    varying = {"@timestamp", "trace.id", "span.id", "http.request.id", "event.duration"}
    for fast, slow in zip(records[:4], records[4:], strict=True):
        assert list(fast) == list(slow)
        assert {k: v for k, v in fast.items() if k not in varying} == {
            k: v for k, v in slow.items() if k not in varying
        }
    messages = [r["message"] for r in records[:4]]
    assert messages[1] == 'GET /x"y\\z/\u00e9 404'
    assert messages[2] == "BREW /x 405"
    assert messages[3] == "GET /" + "a" * 1023 + " 404"
    assert records[1]["user_agent.original"] == 'agent "quoted"\t\\ \u00e9'
    assert err == []


def test_pytest_capture_handlers_count_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest, auto adds nothing: pytest's capture handlers hold the root."""
    monkeypatch.delenv("PYOBS_LOG_HANDLER")
    monkeypatch.delenv("PYOBS_LOG_LEVEL")
    root = logging.getLogger()
    assert root.handlers, "pytest's capture handlers are expected on the root"
    before = (list(root.handlers), root.level, logging.lastResort)
    pyobs.setup()
    assert logs.handler_placement() is None
    assert (list(root.handlers), root.level, logging.lastResort) == before


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_every_mode_writes_each_record_at_most_once(mode: str) -> None:
    """basicConfig after setup, in each mode: no record is written twice to the same stream."""
    code = """
        import logging, pyobs
        pyobs.setup()
        logging.basicConfig(level=logging.INFO, format="%(name)s|%(levelname)s|%(message)s")
    """
    out, err = run(code, EMIT, PYOBS_LOG_HANDLER=mode)
    for stream in (out, err):
        assert len(stream) == len(set(stream))
    if mode == "always":  # pyobs's root handler was there first: basicConfig did nothing
        assert (err, levels_of_json(out).total()) == ([], 3)
    else:  # the app's basicConfig owns the output, at its level
        assert (out, levels_of_text(err).total()) == ([], 4)


# A Flask app with pyobs's defaults, its spans also kept in memory; requests with the
# fast access path (pyobs's last-resort handler is the only destination).
_FAST_APP = r"""
    import json, sys, flask, pyobs, pyobs.flask
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import REGISTRY
    from pyobs.metrics import get_metrics
    app = flask.Flask("a")
    app.get("/x")(lambda: "ok")
    pyobs.flask.instrument(app)
    spans = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(spans))
    client = app.test_client()
    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0
    def report(**more):
        print(json.dumps({
            "info": sample("pyobs_log_events_total", level="info"),
            "warning": sample("pyobs_log_events_total", level="warning"),
            "requests": sum(
                s.value for m in REGISTRY.collect() for s in m.samples
                if s.name == "http_server_request_duration_seconds_count"
            ),
            "metrics_errors": sample("pyobs_internal_errors_total", component="metrics"),
            **more,
        }), file=sys.stderr)
"""


def _fast_path_report(err: list[str]) -> dict[str, Any]:
    reports = [json.loads(line) for line in err if line.startswith("{")]
    assert len(reports) == 1, err
    report: dict[str, Any] = reports[0]
    return report


def test_fast_path_counts_each_access_line_once_and_shares_one_clock_reading() -> None:
    """On the fast path the access line is counted in pyobs_log_events_total with the
    request's metrics (one lock): each line exactly once, by level. The span's end, the
    line's @timestamp and the duration exemplar's timestamp come from one reading of the
    clock, so a user jumping from a log line to its trace or exemplar sees the same time."""
    import_or_require("flask")
    code = r"""
        for path in ("/x", "/x", "/x", "/missing", "/missing"):
            client.get(path, buffered=True)
        exemplars = [
            (s.exemplar.labels["trace_id"], s.exemplar.timestamp)
            for m in REGISTRY.collect() for s in m.samples
            if s.name == "http_server_request_duration_seconds_bucket" and s.exemplar
        ]
        ends = {format(s.context.trace_id, "032x"): s.end_time for s in spans.get_finished_spans()}
        report(exemplars=exemplars, ends=ends)
    """
    out, err = run(_FAST_APP, code)
    lines = [r for r in json_records(out) if r.get("event.dataset") == "pyobs.access"]
    assert [r["http.response.status_code"] for r in lines] == [200, 200, 200, 404, 404]
    report = _fast_path_report(err)
    assert (report["info"], report["warning"], report["requests"]) == (3, 2, 5)
    ends: dict[str, int] = report["ends"]
    assert len(ends) == 5
    for line in lines:
        end_ms = ends[line["trace.id"]] // 1_000_000
        stamp = datetime.datetime.fromisoformat(line["@timestamp"].replace("Z", "+00:00"))
        # The line keeps milliseconds of a float reading: one off at a boundary at most.
        assert abs(int(stamp.timestamp() * 1000 + 0.5) - end_ms) <= 1, line
    assert report["exemplars"], "no exemplar"
    for trace_id, timestamp in report["exemplars"]:
        assert abs(timestamp - ends[trace_id] / 1e9) < 1e-6


def test_a_failing_line_count_costs_neither_the_request_nor_the_line_count() -> None:
    """If the line's count fails inside the metrics' locked write (a prometheus_client
    layout change), the request is recorded once, the line is still counted once (through
    the public API from then on) and the failure is counted as an internal error."""
    import_or_require("flask")
    code = r"""
        client.get("/x", buffered=True)  # the series and the "info" level's value are cached now
        class Refuses:
            @property
            def _value(self):
                return 0.0
            @_value.setter
            def _value(self, value):
                raise AttributeError("a changed layout")
        get_metrics().log_level_values["info"] = Refuses()
        client.get("/x", buffered=True)
        client.get("/x", buffered=True)
        report()
    """
    out, err = run(_FAST_APP, code)
    lines = [r for r in json_records(out) if r.get("event.dataset") == "pyobs.access"]
    assert len(lines) == 3
    report = _fast_path_report([line for line in err if line.startswith("{")])
    assert (report["info"], report["requests"]) == (3, 3)
    assert report["metrics_errors"] == 1
