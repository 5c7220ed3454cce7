"""ECS JSON logs for stdlib logging and structlog alike, with the request context (CONTRACT §5)."""

from __future__ import annotations

import contextvars
import inspect
import json
import json.encoder
import logging
import os
import sys
import time
import traceback
import weakref
from typing import Any

from pyobs import _context, _ecs
from pyobs import metrics as _metrics_module
from pyobs._config import Config
from pyobs.metrics import get_metrics
from pyobs.redact import scrub

ECS_VERSION = "8.17.0"
ACCESS_LOGGER = "pyobs.access"
# The access log's optional fields, in the order they follow the trace ids.
ACCESS_OPTIONAL_FIELDS = ("url.query", "http.route", "client.ip", "user_agent.original")

# The request id of the request being served (trace ids come from the OTel context).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pyobs_request_id", default=None
)


# The code of pyobs.wsgi's body iterator (_ObservedBody.__iter__), registered by pyobs.wsgi: a
# WSGI body may be the app's own generator, run by the server after the app call left the
# request's context. A line logged while a chunk is made has no request id current; the
# formatter then looks for that iterator's frame on the logging thread's stack and reads the
# request's ids from its handle (body_on_stack). A suspended body is not on the stack, so
# nothing stays current between chunks or after a body left unread. The request path pays
# a set add and discard for it (bodies_open: the handles of the bodies being iterated, in
# any thread, from the first chunk to the last or to close()), and a line logged outside
# any request walks the stack only while some body is being iterated.
body_code: Any = None
bodies_open: set[Any] = set()


def body_on_stack() -> Any:
    """The handle of the WSGI body whose chunk this thread is making, or None."""
    if not bodies_open:
        return None
    code = body_code
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


# Attributes every LogRecord has; anything else on a record came from `extra=` or structlog.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


_pid = [os.getpid()]  # process.pid without a system call per line; updated after fork
_pid_text = [str(_pid[0])]  # the same as text: the access line formats no number for it


def _pid_after_fork() -> None:
    _pid[0] = os.getpid()
    _pid_text[0] = str(_pid[0])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pid_after_fork)
_quote = json.encoder.encode_basestring  # the C string escaper behind json.dumps


def _json_default(value: Any) -> Any:
    try:
        from pythonjsonlogger.json import JsonEncoder
    except ImportError:  # pragma: no cover - python-json-logger < 3.1
        return str(value)
    return JsonEncoder().default(value)


def error_fields(exc: BaseException) -> dict[str, str]:
    """ECS error.* fields for an exception."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    # URL credentials and tokens in the message (and so in the trace) are scrubbed (§5).
    return {
        "error.type": name,
        "error.message": scrub(str(exc)),
        "error.stack_trace": scrub(
            "".join(traceback.format_exception(cls, exc, exc.__traceback__))
        ),
    }


# Encoded access-line fragments by raw value (route, peer address). Both are bounded:
# routes by the app, addresses by the cap (they come from the network).
_ROUTE_FIELDS: dict[str, str] = {}
_CLIENT_FIELDS: dict[str, str] = {}
# user_agent.original by value: few per service; one longer than this is encoded each time.
_AGENT_FIELDS: dict[str, str] = {}
_AGENT_CACHED_MAX = 256
_FRAGMENTS_MAX = 4096
# The standard HTTP methods: the method label keeps them (anything else is _OTHER), and the
# access line's message takes them as they are (their text needs no JSON escaping).
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def access_message(method: str, path: str, code: int) -> str:
    """The access line's message: method, path and status for people (url.path has the path
    in full, up to its cap)."""
    return (
        f"{method if len(method) <= 64 else method[:64]} "
        f"{path if len(path) <= 1024 else path[:1024]} {code}"
    )


def _remember(cache: dict[str, str], key: str, encoded: str) -> str:
    """Keep ``encoded`` for ``key`` in a bounded cache and return it."""
    if len(cache) >= _FRAGMENTS_MAX:
        cache.clear()
    cache[key] = encoded
    return encoded


class _Timestamps:
    """UTC ISO-8601 with milliseconds; the seconds part is cached since it repeats."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return self._prefix + _MILLIS[int((created - second) * 1000)]


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class ECSFormatter(logging.Formatter):
    """Formats any LogRecord (stdlib or structlog) as one flat ECS JSON line."""

    def __init__(self, config: Config | None = None, *_args: Any, **_kwargs: Any) -> None:
        # Extra arguments (a dictConfig "class" entry passes fmt, datefmt, style) are ignored:
        # the line's shape is fixed by ECS.
        super().__init__()
        if not isinstance(config, Config):
            # Made by name (dictConfig's "()", a handler built by the app): the service
            # fields follow pyobs's effective config, now and after every setup().
            _floating.add(self)
            config = _effective_config()
        self._apply_config(config)

    def _apply_config(self, config: Config) -> None:
        """Take the service fields (name, version, environment) from ``config``."""
        self._static: dict[str, Any] = {"ecs.version": ECS_VERSION}
        self._static["service.name"] = config.service_name
        if config.service_version:
            self._static["service.version"] = config.service_version
        if config.environment:
            self._static["service.environment"] = config.environment
        self._stamps = stamps = _Timestamps()
        self._timestamp = stamps.format  # a bound method: cheaper than __call__
        self._line_templates: dict[tuple[str, tuple[str, ...]], str] = {}
        # The access log's fixed fields after the message, encoded once.
        self._access_static = "," + self.dumps({**self._static, "log.logger": ACCESS_LOGGER})[1:-1]

    def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The ECS fields of ``record``, with the current request context."""
        out: dict[str, Any] = {
            "@timestamp": self._timestamp(record.created),
            "log.level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        out.update(self._static)
        out["log.logger"] = record.name
        out["process.pid"] = record.process
        ctx = _context.current_span().get_span_context()
        if ctx.is_valid:
            out["trace.id"] = format(ctx.trace_id, "032x")
            out["span.id"] = format(ctx.span_id, "016x")
        request_id = request_id_var.get()
        if request_id is None:
            body = body_on_stack()
            if body is not None:  # a body being made after the app call returned
                request_id = body.request_id
                if not ctx.is_valid and body.trace_ids is not None:
                    out["trace.id"], out["span.id"] = body.trace_ids
        if request_id is not None:
            out["http.request.id"] = request_id
        fields = record.__dict__.get("pyobs_fields")
        if fields is not None:
            out.update(_ecs.fix_client_ip(fields))  # pyobs's own records say which they carry
        else:
            extras = {
                key: value
                for key, value in record.__dict__.items()
                if key not in _RECORD_ATTRS and not key.startswith("_")
            }
            if extras:  # the app's or a library's: ECS-typed, labels, pyobs.extra (§5)
                out.update(_ecs.sanitize(extras, record.name))
        if record.exc_info and record.exc_info[1] is not None:
            out.update(error_fields(record.exc_info[1]))
        elif record.stack_info:
            out["error.stack_trace"] = record.stack_info
        return out

    def direct_line(self, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """One JSON line for a record pyobs writes itself (the access log's fast path).

        Same fields and order as ``format()`` would give, but assembled directly: the
        static part is encoded once, strings go through the json module's C escaper, and
        the values pyobs puts here are only str and int. Anything else falls back to json.
        """
        fields = _ecs.fix_client_ip(fields)
        keys = tuple(fields)
        template = self._line_templates.get((logger, keys))
        if template is None:
            template = self._line_template(logger, keys)
        values: list[Any] = [
            self._timestamp(time.time()),
            level,
            _quote(message),
            _pid[0],
        ]
        for value in fields.values():
            kind = type(value)
            if kind is str:
                values.append(_quote(value))
            elif kind is int:
                values.append(value)
            else:
                values.append(json.dumps(value, default=_json_default, ensure_ascii=False))
        return template % tuple(values)

    def _line_template(self, logger: str, keys: tuple[str, ...]) -> str:
        """A %-template for one logger and field order: the static part encoded once."""
        static = dict(self._static)
        static["log.logger"] = logger
        head = self.dumps(static)[1:-1].replace("%", "%%")
        body = "".join("," + _quote(key).replace("%", "%%") + ":%s" for key in keys)
        template = (
            ('{"@timestamp":"%s","log.level":"%s","message":%s,' + head + ',"process.pid":%d')
            + body
            + "}"
        )
        if len(self._line_templates) < 256:
            self._line_templates[(logger, keys)] = template
        return template

    def access_line(
        self,
        handle: Any,
        level: str,
        code: int,
        duration: float,
        query: str | None,
        now: float,
    ) -> str:
        """The access-log line of a request, with its newline: the same text as the logging
        path would write.

        ``handle`` is the request's RequestHandle (the line's fields are read from it, not
        passed one by one), ``query`` its redacted url.query (None when absent), ``now``
        the line's time in seconds (RequestObserver.finish passes the one reading its span's
        end and exemplar share). The
        request id (checked against [A-Za-z0-9._-] or generated), the method label and the
        hex trace ids need no JSON escaping, so they go in as they are.
        """
        path = handle.path
        # url.path escaped once: the message repeats it, and JSON escaping goes character by
        # character, so the message's escaped text is made of the path's.
        escaped = _quote(path)[1:-1]
        method = handle.facts.method
        if method in STANDARD_METHODS and len(path) <= 1024:
            message = f"{method} {escaped} {code}"  # access_message(), from the escaped path
        else:  # a method that may need escaping, or a path the message cuts
            message = _quote(access_message(method, path, code))[1:-1]
        trace_ids = handle.trace_ids
        ids = (
            "" if trace_ids is None else f',"trace.id":"{trace_ids[0]}","span.id":"{trace_ids[1]}"'
        )
        route = handle.route
        if route is None:
            route_field = ""
        else:
            route_field = _ROUTE_FIELDS.get(route) or _remember(
                _ROUTE_FIELDS, route, ',"http.route":' + _quote(route)
            )
        client = handle.client
        client_fields = ""
        if client:
            # The peer's fields, encoded once per address: the parse (X-Forwarded-For may
            # hold anything) and the escaping give the same text every time.
            known = _CLIENT_FIELDS.get(client)
            if known is None:
                ip = _ecs.parse_ip(client)
                known = "" if ip is None else ',"client.ip":' + _quote(ip)
                if ip != client:
                    known += ',"client.address":' + _quote(client)
                _remember(_CLIENT_FIELDS, client, known)
            client_fields = known
        user_agent = handle.user_agent
        agent_field = ""
        if user_agent:
            # Encoded once per User-Agent (a service sees few); long ones are not kept.
            known = _AGENT_FIELDS.get(user_agent)
            if known is None:
                known = ',"user_agent.original":' + _quote(user_agent)
                if len(user_agent) <= _AGENT_CACHED_MAX:
                    _remember(_AGENT_FIELDS, user_agent, known)
            agent_field = known
        query_field = "" if query is None else ',"url.query":' + _quote(query)
        # _Timestamps.format(), inlined for a second already formatted (one call less).
        second = int(now)
        stamps = self._stamps
        prefix = stamps._prefix if second == stamps._second else stamps.format(now)[:-5]
        # One f-string, the optional fields included: one string built, no partial ones
        # (event.dataset is ACCESS_LOGGER, written out).
        return (
            f'{{"@timestamp":"{prefix}{_MILLIS[int((now - second) * 1000)]}","log.level":"{level}",'
            f'"message":"{message}"{self._access_static},"process.pid":{_pid_text[0]},'
            f'"http.request.id":"{handle.request_id}","event.dataset":"pyobs.access",'
            f'"http.request.method":"{handle.method}","url.path":"{escaped}",'
            f'"http.response.status_code":{code},'
            f'"http.response.body.bytes":{handle.response_bytes},'
            f'"event.duration":{int(duration * 1e9)}{ids}'
            f"{query_field}{route_field}{client_fields}{agent_field}}}\n"
        )

    @staticmethod
    def dumps(fields: dict[str, Any]) -> str:
        """One JSON line (without the newline)."""
        return json.dumps(fields, default=_json_default, ensure_ascii=False, separators=(",", ":"))

    def format(self, record: logging.LogRecord) -> str:
        return self.dumps(self.to_dict(record))


class ConsoleFormatter(ECSFormatter):
    """A readable developer format carrying the same fields."""

    _SKIP = frozenset(
        {"@timestamp", "log.level", "message", "log.logger", "ecs.version", "process.pid"}
        | {"service.name", "service.version", "service.environment", "error.stack_trace"}
    )

    def format(self, record: logging.LogRecord) -> str:
        fields = self.to_dict(record)
        extras = " ".join(f"{k}={v}" for k, v in fields.items() if k not in self._SKIP)
        line = (
            f"{fields['@timestamp']} {fields['log.level'].upper():<8} "
            f"{fields['log.logger']}: {fields['message']}"
        )
        if extras:
            line += f"  {extras}"
        if "error.stack_trace" in fields:
            line += "\n" + str(fields["error.stack_trace"]).rstrip()
        return line


class StdoutHandler(logging.Handler):
    """Writes formatted records to the *current* sys.stdout and counts them by level.

    Usable by name in a dictConfig (``"class": "pyobs.logs.StdoutHandler"``); pyobs marks
    the one it installs itself (``pyobs_handler``), so setting up again replaces only that.
    """

    pyobs_handler = False  # True on the instance pyobs installs itself

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stdout
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the app
            self.handleError(record)
            return
        _count(record.levelname.lower())

    def write_line(self, line: str, level: str | None) -> None:
        """Write a line pyobs built itself, newline included (the access log's direct
        paths); the same output as emit(). With ``level`` None the caller counts the line
        (RequestObserver.finish counts it with the request's metrics, under one lock)."""
        lock = self.lock  # acquire()/release(), not ``with``: see _internals.prom_add
        if lock is not None:
            lock.acquire()
        try:
            stream = sys.stdout
            stream.write(line)
            stream.flush()
        finally:
            if lock is not None:
                lock.release()
        if level is None:
            return
        try:
            (_metrics_module._metrics or get_metrics()).count_log_line(level)
        except Exception:  # noqa: BLE001 - a metric failure must not stop logging
            pass


def _count(level: str) -> None:
    """pyobs_log_events_total{level}."""
    try:
        get_metrics().log_event(level)
    except Exception:  # noqa: BLE001 - a metric failure must not stop logging
        pass


def direct_handler(logger: logging.Logger, level: int) -> StdoutHandler | None:
    """pyobs's stdout handler when it is the only place a record of ``logger`` would go.

    Then pyobs may write the line itself, skipping LogRecord and handler dispatch (the
    output is identical). Any other handler, filter or formatter on the way returns None
    and the record takes the normal logging path. With no handler anywhere on the way,
    the record would go to ``logging.lastResort``: direct only when that is a StdoutHandler.
    """
    current = logger
    while not current.handlers:
        if current.filters or current.disabled or not current.propagate:
            return None
        parent = current.parent
        if parent is None:
            break  # the root has no handler either: logging.lastResort takes the record
        current = parent
    if current.handlers:
        if current is not _root or len(current.handlers) != 1:
            return None
        handler: logging.Handler | None = current.handlers[0]
    else:
        handler = logging.lastResort
    if (
        current.filters
        or current.disabled
        or type(handler) is not StdoutHandler
        or handler.filters
        or level < handler.level
        or type(handler.formatter) is not ECSFormatter
    ):
        return None
    return handler


_root = logging.root
_structlog_ours = False
# Formatters made without a config (by name, from a dictConfig): setup() updates them.
_floating: weakref.WeakSet[ECSFormatter] = weakref.WeakSet()
# The standard library's last-resort handler, put back when pyobs steps aside.
_STDLIB_LAST_RESORT = logging.lastResort
# Where pyobs's stdout handler went: "root", "last_resort" or None (not installed).
_placement: str | None = None
# Levels pyobs set (logger name -> (level before, level pyobs set)), undone on reset.
_levels_set: dict[str, tuple[int, int]] = {}


# The config configure_logging() last applied (setup() calls it): no import of the state.
_applied: Config | None = None


def _effective_config() -> Config:
    """pyobs's config once set up; before that, the one the environment describes."""
    config = _applied
    if config is not None:
        return config
    try:
        from pyobs._config import load_config

        return load_config()
    except Exception:  # noqa: BLE001 - a bad variable is reported by setup(), not here
        return Config()


def _structlog_configure() -> None:
    """Route structlog through stdlib logging so both produce the same ECS lines."""
    import structlog

    global _structlog_ours
    if structlog.is_configured() and not _structlog_ours:
        return  # the app configured structlog itself; leave it alone
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _structlog_ours = True


def _structlog_release() -> None:
    """Undo pyobs's structlog routing (only if pyobs made it)."""
    global _structlog_ours
    if not _structlog_ours:
        return
    try:
        import structlog

        structlog.reset_defaults()
    except ImportError:  # pragma: no cover - structlog is a dependency
        pass
    _structlog_ours = False


def pyobs_handlers(logger: logging.Logger | None = None) -> list[logging.Handler]:
    """Handlers pyobs installed on ``logger`` (default: root)."""
    logger = logger or logging.getLogger()
    return [h for h in logger.handlers if getattr(h, "pyobs_handler", False)]


def app_configured() -> bool:
    """True when the application configured logging, so pyobs should add no handler.

    The signals: the root logger has a handler that is not pyobs's (``basicConfig``, a
    dictConfig or fileConfig with a root section, Tornado's ``--logging``, pytest's capture
    handlers), or the app replaced or removed ``logging.lastResort``.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if not getattr(handler, "pyobs_handler", False):
            return True
    return logging.lastResort is not _STDLIB_LAST_RESORT and logging.lastResort is not _installed()


def _installed() -> logging.Handler | None:
    return _own[0] if _own else None


_own: list[logging.Handler] = []  # pyobs's stdout handler while it is installed


def _set_level(name: str, level: int) -> None:
    """Set a logger's level, remembering the one before so that it can be put back."""
    logger = logging.getLogger(name or None)
    before = _levels_set[name][0] if name in _levels_set else logger.level
    logger.setLevel(level)
    _levels_set[name] = (before, level)


def _restore_levels() -> None:
    """Put back levels pyobs set, unless the app changed them since."""
    for name, (before, ours) in _levels_set.items():
        logger = logging.getLogger(name or None)
        if logger.level == ours:
            logger.setLevel(before)
    _levels_set.clear()


def _uninstall() -> None:
    """Remove every handler pyobs installed and undo its level and lastResort changes."""
    global _placement
    root = logging.getLogger()
    for handler in pyobs_handlers(root):
        root.removeHandler(handler)
        handler.close()
    if _own and logging.lastResort is _own[0]:
        logging.lastResort = _STDLIB_LAST_RESORT
    _own.clear()
    _placement = None
    _restore_levels()


def configure_logging(config: Config) -> None:
    """Apply CONTRACT §5's coexistence rule; install the Logstash shipper when configured.

    ``PYOBS_LOG_HANDLER=auto`` (default): when the app configured logging, pyobs adds no
    handler and changes no level. Otherwise its stdout handler becomes the handler of last
    resort (``logging.lastResort``): it writes every record no other handler takes, so a
    ``basicConfig()`` or dictConfig the app runs later takes over without any record being
    written twice. ``always``: on the root, whatever else is there. ``never``: nothing.
    """
    global _placement, _applied
    _applied = config
    _uninstall()
    for floating in list(_floating):
        floating._apply_config(config)
    root = logging.getLogger()
    mode = config.log_handler
    if mode == "always" or (mode == "auto" and not app_configured()):
        formatter: ECSFormatter = (
            ConsoleFormatter(config) if config.log_format == "console" else ECSFormatter(config)
        )
        handler = StdoutHandler()
        handler.setFormatter(formatter)
        handler.pyobs_handler = True
        _own.append(handler)
        # With shipping configured the shipper sits on the root, where it would keep a
        # last-resort handler from ever firing: the stdout handler joins it there.
        if mode == "always" or shipping_configured(config):
            root.addHandler(handler)
            _placement = "root"
        else:
            logging.lastResort = handler
            _placement = "last_resort"
        if config.log_level is not None:
            _set_level("", logging.getLevelName(config.log_level.upper()))
        if logging.getLogger(ACCESS_LOGGER).level == logging.NOTSET:
            _set_level(ACCESS_LOGGER, logging.INFO)  # pyobs's own access log, on by default
        _structlog_configure()
    else:
        _structlog_release()
    if shipping_configured(config):
        from pyobs import shipper  # only when shipping is configured; it never imports logs

        shipping = shipper.handler_for(config)
        if shipping is not None:
            shipping.setFormatter(ECSFormatter(config))
            shipping.pyobs_handler = True
            root.addHandler(shipping)


def shipping_configured(config: Config) -> bool:
    """True when logs are shipped (Logstash http or TCP, or Elasticsearch directly)."""
    return bool(config.logstash_url or config.elasticsearch_url or config.logstash_host)


def handler_placement() -> str | None:
    """Where pyobs's stdout handler is: "root", "last_resort", or None when not installed."""
    return _placement


def json_handler() -> StdoutHandler:
    """A stdout handler writing ECS JSON, for apps that set up logging themselves.

    ``logging.basicConfig(level=logging.INFO, handlers=[pyobs.logs.json_handler()])``
    """
    handler = StdoutHandler()
    handler.setFormatter(ECSFormatter())
    return handler


def dict_config(
    level: str = "WARNING", *, loggers: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A ready ``logging.config.dictConfig`` that writes every record as ECS JSON to stdout.

    ``level`` is the root level (WARNING, as Python's default); pyobs's access log
    (``pyobs.access``) is at INFO. ``loggers`` adds or overrides logger entries (a server's
    own access logger turned off, see ``pyobs.logconfigs``).
    """
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ecs": {"()": "pyobs.logs.ECSFormatter"}},
        "handlers": {
            "stdout": {"class": "pyobs.logs.StdoutHandler", "formatter": "ecs"},
            "null": {"class": "logging.NullHandler"},
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            ACCESS_LOGGER: {"level": "INFO"},
        },
    }
    config["loggers"].update(loggers or {})
    return config


def _reset() -> None:
    global _applied
    _applied = None
    _uninstall()
    _structlog_release()
