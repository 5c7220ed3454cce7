"""A log record as the JSON line the shipper sends (the C encoder, made once)."""

from __future__ import annotations

import datetime
import json
import json.encoder
import logging
import time
from typing import Any


def _default(value: Any) -> Any:
    """JSON for values json cannot encode itself (dates, sets, bytes, anything else as str)."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_safe_encode = json.JSONEncoder(default=_default, ensure_ascii=False, separators=(",", ":")).encode
_c_encoder = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def encode(fields: dict[str, Any]) -> str:
    """json.dumps(fields) without building an encoder per call (the C encoder, made once)."""
    if _c_encoder is not None:
        try:
            return "".join(_c_encoder(fields, 0))
        except RecursionError:
            pass  # a value that contains itself: the checked encoder says so
    return _safe_encode(fields)


def minimal_fields(record: logging.LogRecord) -> dict[str, Any]:
    """ECS fields when the handler has no ECS formatter (configure_logging always sets one)."""
    created = record.created
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    fields: dict[str, Any] = {
        "@timestamp": f"{stamp}.{int((created % 1) * 1000):03d}Z",
        "log.level": record.levelname.lower(),
        "message": record.getMessage(),
        "log.logger": record.name,
        "process.pid": record.process,
    }
    if record.exc_info and record.exc_info[1] is not None:
        import traceback

        exc = record.exc_info[1]
        fields["error.type"] = type(exc).__name__
        fields["error.message"] = str(exc)
        fields["error.stack_trace"] = "".join(traceback.format_exception(exc))
    return fields
