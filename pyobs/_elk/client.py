"""Make an Elasticsearch client from a URL (credentials may sit in the URL). Needs the elk extra."""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

DEFAULT_ES_URL = "http://127.0.0.1:9200"


class ElkError(RuntimeError):
    """Something the user can fix: the message says what in plain words."""


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:pass@host:9200`` -> (``http://host:9200``, (user, pass)).

    A URL without credentials takes them from ELASTICSEARCH_USERNAME (default ``elastic``)
    and ELASTICSEARCH_PASSWORD when that is set, which keeps passwords off command lines.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ElkError(f"not an http(s) URL: {url!r} (e.g. http://localhost:9200)")
    if parts.username is None:
        password = os.environ.get("ELASTICSEARCH_PASSWORD")
        if password:
            return url, (os.environ.get("ELASTICSEARCH_USERNAME") or "elastic", password)
        return url, None
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + ("" if parts.port is None else f":{parts.port}")
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return clean, (user, password)


def connect(url: str, timeout: float = 30.0) -> Any:
    """An ``elasticsearch.Elasticsearch`` for ``url``; a clear error when the extra is missing."""
    try:
        from elasticsearch import Elasticsearch
    except ImportError as exc:
        raise ElkError(
            "the Elasticsearch client is not installed: pip install 'pyobs-kit[elk]'"
        ) from exc
    clean, auth = split_credentials(url)
    return Elasticsearch(clean, basic_auth=auth, request_timeout=timeout)


def describe(exc: BaseException, url: str = "") -> str:
    """One readable line for a client error."""
    name = type(exc).__name__
    if name in {"ConnectionError", "ConnectionTimeout"}:
        found = re.search(r"\[Errno -?\d+\] [^)'\"]*", str(exc))
        reason = found.group(0) if found else name
        return f"cannot reach Elasticsearch{' at ' + url if url else ''} ({reason})"
    if name == "AuthenticationException":
        return "Elasticsearch refused the credentials (put them in the URL: http://user:pass@host)"
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return f"{error.get('type')}: {error.get('reason')}"
        if isinstance(error, str):
            return error
    if isinstance(body, str) and body:
        return body
    return f"{name}: {exc}"
