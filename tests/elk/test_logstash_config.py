"""The Logstash configuration, parsed, and cross-checked with the shipper and the ES assets.

A real Logstash cannot run here (it is published on none of the package registries this
project can reach), so this proves the files parse as Logstash config and agree with the rest;
it cannot prove that Logstash accepts every option value, that the http input acknowledges
only after the persisted queue has the batch, or that the ruby code of the dead-letter drain
runs: those are Logstash's documented behaviour, not checked here.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import yaml

from pyobs._config import Config
from pyobs._elk import assets
from tests.conftest import import_or_require

REPO = Path(__file__).resolve().parents[2]
PIPELINE_FILE = REPO / "logstash" / "pipeline" / "pyobs-logs.conf"
DLQ_FILE = REPO / "logstash" / "pipeline" / "pyobs-dlq.conf"


def _settings(node: list[Any]) -> dict[str, Any]:
    return {key: values[0] if len(values) == 1 else values for key, values in node}


def _plugins(section: str, path: Path = PIPELINE_FILE) -> dict[str, dict[str, Any]]:
    """name -> settings of the plugins in one section; plugins inside conditionals included."""
    parser: Any = import_or_require("logstash_pipeline_parser")
    tree = parser.Pipeline(path.read_text()).parse()
    sections = dict(tree)
    found: dict[str, dict[str, Any]] = {}

    def walk(nodes: list[Any]) -> None:
        for name, body in nodes:
            if name == "if":  # [condition, [[plugins]]]
                for block in body[1]:
                    walk(block)
            else:
                found[name] = _settings(body)

    walk(sections[section])
    return found


def test_pipeline_parses_with_the_expected_sections() -> None:
    """The pipeline file is valid Logstash syntax with input, filter and output sections."""
    for section in ("input", "filter", "output"):
        assert _plugins(section), section


def test_tcp_input_matches_the_shipper() -> None:
    """Logstash listens with json_lines on the port the shipper uses by default, beats on 5044."""
    inputs = _plugins("input")
    assert inputs["tcp"]["port"] == Config().logstash_port == 5000
    assert inputs["tcp"]["codec"] == "json_lines"
    assert inputs["beats"]["port"] == 5044


def test_output_writes_the_templated_data_stream_through_the_pipeline() -> None:
    """The output's data stream name matches the index template and uses the pyobs pipeline."""
    output = _plugins("output")["elasticsearch"]
    assert output["data_stream"] == "true"
    namespace = output["data_stream_namespace"]
    default_ns = namespace.split(":", 1)[1].rstrip("}") if namespace.startswith("${") else namespace
    name = f"{output['data_stream_type']}-{output['data_stream_dataset']}-{default_ns}"
    assert name == f"logs-pyobs-{assets.DEFAULT_NAMESPACE}"
    template = assets.load("elk/index-template.json")
    assert any(fnmatch.fnmatchcase(name, p) for p in template["index_patterns"])
    assert "data_stream" in template
    assert output["pipeline"] == assets.PIPELINE_NAME
    assert "elasticsearch:9200" in str(output["hosts"])  # the compose service name


def test_filter_is_light() -> None:
    """Logstash only strips what it added and makes sure of event.id; ingest normalises."""
    filters = _plugins("filter")
    assert set(filters) == {"mutate", "uuid"}
    assert filters["uuid"]["target"] == "[event][id]"


def test_http_input_takes_the_shippers_ndjson_batches() -> None:
    """The acknowledged input: http on 8080, NDJSON decoded line by line, request facts aside."""
    http = _plugins("input")["http"]
    assert http["port"] == 8080
    codecs = dict(http["additional_codecs"])
    assert codecs["application/x-ndjson"] == ["json_lines"]
    assert http["codec"] == "json_lines"
    # The shipper's own request (its user agent, peer) must not land in the records.
    assert http["remote_host_target_field"].startswith("[@metadata]")
    assert http["request_headers_target_field"].startswith("[@metadata]")


def test_output_creates_with_the_event_id_as_document_id() -> None:
    """Redelivery is harmless: every event is created with _id = event.id."""
    output = _plugins("output")["elasticsearch"]
    assert output["action"] == "create"
    assert output["document_id"] == "%{[event][id]}"


def test_dead_letter_drain_writes_the_failure_data_stream() -> None:
    """The second pipeline reads pyobs-logs's dead letters and writes them, with the reason, to
    the failure data stream the failure template (with its retention) covers."""
    (dlq,) = _plugins("input", DLQ_FILE).values()
    assert dlq["pipeline_id"] == "pyobs-logs"
    assert str(dlq["path"]).endswith("/data/dead_letter_queue")  # in the logstash-data volume
    assert dlq["commit_offsets"] is True
    code = _plugins("filter", DLQ_FILE)["ruby"]["code"]
    assert "[@metadata][dead_letter_queue][reason]" in code
    assert "[error][message]" in code and "[event][original]" in code
    output = _plugins("output", DLQ_FILE)["elasticsearch"]
    assert output["action"] == "create"
    # With ILM on, the output would write to its rollover alias instead of this index.
    assert output["ilm_enabled"] is False and output["manage_template"] is False
    template = assets.load("elk/failure-index-template.json")
    assert any(fnmatch.fnmatchcase(output["index"], p) for p in template["index_patterns"])
    assert "data_stream" in template
    assert template["template"]["lifecycle"]["data_retention"] == assets.FAILURE_RETENTION


def test_settings_persist_the_queue_and_keep_dead_letters() -> None:
    """logstash.yml and pipelines.yml persist the queue (with sizes), keep dead letters, and run
    the drain as a second pipeline that does not dead-letter its own events."""
    settings = yaml.safe_load((REPO / "logstash" / "config" / "logstash.yml").read_text())
    assert settings["queue.type"] == "persisted"
    assert settings["queue.max_bytes"] and settings["queue.page_capacity"]
    assert settings["dead_letter_queue.enable"] is True
    assert settings["dead_letter_queue.max_bytes"]
    assert settings["api.http.port"] == 9600
    pipelines = yaml.safe_load((REPO / "logstash" / "config" / "pipelines.yml").read_text())
    by_id = {p["pipeline.id"]: p for p in pipelines}
    assert set(by_id) == {"pyobs-logs", "pyobs-dlq"}
    main, drain = by_id["pyobs-logs"], by_id["pyobs-dlq"]
    assert main["path.config"].endswith("/" + PIPELINE_FILE.name)
    assert main["queue.type"] == "persisted"
    assert main["dead_letter_queue.enable"] is True
    assert drain["path.config"].endswith("/" + DLQ_FILE.name)
    assert drain["dead_letter_queue.enable"] is False
    (dlq,) = _plugins("input", DLQ_FILE).values()
    assert dlq["pipeline_id"] == main["pipeline.id"]


def test_redelivered_events_make_no_409_warning() -> None:
    """A redelivered event's `create` with the same `event.id` gets a 409 from Elasticsearch:
    the output silences exactly that error type, so Logstash's log shows only real failures."""
    output = _plugins("output")["elasticsearch"]
    assert output["action"] == "create"
    assert output["document_id"] == "%{[event][id]}"
    silenced = output["silence_errors_in_log"]
    assert (silenced if isinstance(silenced, list) else [silenced]) == [
        "version_conflict_engine_exception"
    ]
