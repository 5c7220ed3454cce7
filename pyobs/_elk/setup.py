"""`pyobs elk setup`: install the pipeline, templates, lifecycle and Kibana objects. Idempotent."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyobs._elk import assets
from pyobs._elk.client import ElkError, describe, split_credentials
from pyobs._elk.kibana import NDJSON_PATH
from pyobs._resources import repo_file

_RETENTION = re.compile(r"^[1-9][0-9]*(d|h|m|s|ms|micros|nanos)$")


@dataclass
class Step:
    """The outcome of one setup step."""

    name: str
    ok: bool
    detail: str = ""


def check_retention(value: str) -> str:
    """Validate an Elasticsearch time value such as ``30d``."""
    if not _RETENTION.match(value):
        raise ElkError(
            f"--retention takes an Elasticsearch duration such as 30d or 12h, not {value!r}"
        )
    return value


def install_elasticsearch(
    es: Any, retention: str = assets.DEFAULT_RETENTION, pipeline: bool = True, url: str = ""
) -> list[Step]:
    """Put the ingest pipeline, both index templates and the lifecycle; report every step."""
    steps: list[Step] = []

    def run(name: str, action: Callable[[], Any]) -> bool:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
            steps.append(Step(name, False, describe(exc, url)))
            return False
        steps.append(Step(name, True))
        return True

    if pipeline:
        body = assets.load("elk/ingest-pipeline.json")
        run(
            f"ingest pipeline {assets.PIPELINE_NAME}",
            lambda: es.ingest.put_pipeline(id=assets.PIPELINE_NAME, **body),
        )
    failures = assets.load("elk/failure-index-template.json")
    run(
        f"index template {assets.FAILURE_TEMPLATE_NAME}",
        lambda: es.indices.put_index_template(
            name=assets.FAILURE_TEMPLATE_NAME, **_template_kwargs(failures)
        ),
    )
    template = assets.load("elk/index-template.json")
    template["template"]["lifecycle"] = {"data_retention": retention}
    run(
        f"index template {assets.TEMPLATE_NAME} (retention {retention})",
        lambda: es.indices.put_index_template(
            name=assets.TEMPLATE_NAME, **_template_kwargs(template)
        ),
    )
    steps.append(_existing_lifecycle(es, retention))
    return steps


def _template_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(body)
    if "_meta" in kwargs:
        kwargs["meta"] = kwargs.pop("_meta")
    return kwargs


def _existing_lifecycle(es: Any, retention: str) -> Step:
    """Templates only shape new data streams: give existing ones the same retention."""
    name = f"retention {retention} on existing {assets.DATA_STREAM_PATTERN} data streams"
    try:
        resolved = es.indices.resolve_index(name=assets.DATA_STREAM_PATTERN, expand_wildcards="all")
        streams = [d["name"] for d in resolved.get("data_streams", [])]
        if not streams:
            return Step(name, True, "none yet")
        es.indices.put_data_lifecycle(name=",".join(streams), data_retention=retention)
    except Exception as exc:  # noqa: BLE001
        detail = describe(exc)
        if "no handler found" in detail:
            detail = "this Elasticsearch has no data stream lifecycle API (data-streams module)"
        return Step(name, False, detail)
    return Step(name, True, f"{len(streams)} updated")


# A fixed id (Kibana takes only a UUID here) makes the rule one object however often setup runs.
REJECTED_RULE_ID = "5b0d6c1e-3f0a-4c8e-9d57-7e1f0b6a2c41"
REJECTED_RULE_NAME = "pyobs: log events rejected by Elasticsearch"


def rejected_rule() -> dict[str, Any]:
    """The Kibana Elasticsearch-query rule that fires when refused log events were kept.

    It counts documents in the failure data stream (Logstash's dead-letter drain, the
    ingest pipeline's failures, the direct shipper) and in the data streams' failure stores
    over the last 15 minutes: the alert for the Logstash path, where the shipper cannot see
    rejections. Prometheus's PyobsLogsRejected covers the direct path.
    """
    from pyobs._elk.kibana import FAILURES_PATTERN

    return {
        "name": REJECTED_RULE_NAME,
        "tags": ["pyobs"],
        "rule_type_id": ".es-query",
        "consumer": "stackAlerts",
        "schedule": {"interval": "5m"},
        "params": {
            "searchType": "esQuery",
            "index": FAILURES_PATTERN.split(","),
            "timeField": "@timestamp",
            "esQuery": json.dumps({"query": {"match_all": {}}}),
            "size": 10,
            "threshold": [0],
            "thresholdComparator": ">",
            "timeWindowSize": 15,
            "timeWindowUnit": "m",
            "excludeHitsFromPreviousRun": True,
        },
        "actions": [],
    }


def _kibana_request(
    kibana_url: str, method: str, path: str, body: bytes, content_type: str, timeout: float
) -> Any:
    """One Kibana API call with its xsrf header and the URL's credentials; the JSON answer."""
    clean, auth = split_credentials(kibana_url)
    headers = {"kbn-xsrf": "pyobs", "Content-Type": content_type}
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    url = clean.rstrip("/") + path
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def kibana_rule(kibana_url: str, timeout: float = 30.0) -> Step:
    """Create (or update) the rejected-events rule through Kibana's alerting API."""
    name = f"Kibana rule {REJECTED_RULE_NAME!r}"
    rule = rejected_rule()
    path = f"/api/alerting/rule/{REJECTED_RULE_ID}"
    try:
        clean = split_credentials(kibana_url)[0]
        try:
            _kibana_request(
                kibana_url, "POST", path, json.dumps(rule).encode(), "application/json", timeout
            )
            return Step(name, True, "created")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                return Step(name, False, f"Kibana answered {exc.code}: {exc.read()[:300]!r}")
        # It exists: update what may change (type and consumer cannot).
        update = {k: v for k, v in rule.items() if k not in {"rule_type_id", "consumer"}}
        _kibana_request(
            kibana_url, "PUT", path, json.dumps(update).encode(), "application/json", timeout
        )
    except ElkError as exc:
        return Step(name, False, str(exc))
    except urllib.error.HTTPError as exc:
        return Step(name, False, f"Kibana answered {exc.code}: {exc.read()[:300]!r}")
    except (OSError, ValueError) as exc:
        return Step(name, False, f"cannot reach Kibana at {clean} ({exc})")
    return Step(name, True, "updated")


def kibana_import(kibana_url: str, timeout: float = 30.0) -> Step:
    """Import elk/kibana/*.ndjson through Kibana's saved objects API (overwriting ours)."""
    name = "Kibana saved objects (data view, searches, dashboard)"
    try:
        clean, auth = split_credentials(kibana_url)
    except ElkError as exc:
        return Step(name, False, str(exc))
    payload = repo_file(NDJSON_PATH).read_bytes()
    boundary = f"pyobs-{uuid.uuid4().hex}"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="pyobs-logs.ndjson"\r\n'
            "Content-Type: application/ndjson\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "kbn-xsrf": "pyobs",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    url = clean.rstrip("/") + "/api/saved_objects/_import?overwrite=true"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return Step(name, False, f"Kibana answered {exc.code}: {exc.read()[:300]!r}")
    except (OSError, ValueError) as exc:
        return Step(name, False, f"cannot reach Kibana at {clean} ({exc})")
    if not answer.get("success", False):
        errors = answer.get("errors") or answer
        return Step(name, False, f"Kibana rejected the import: {json.dumps(errors)[:500]}")
    return Step(name, True, f"{answer.get('successCount', 0)} objects")
