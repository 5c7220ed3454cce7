"""The Logstash configuration, parsed, and cross-checked with the shipper and the ES assets.

A real Logstash cannot run here (it is published on none of the package registries this
project can reach), so this proves the files parse as Logstash config and agree with the rest;
it cannot prove that Logstash accepts every option value.
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


def _settings(node: list[Any]) -> dict[str, Any]:
    return {key: values[0] if len(values) == 1 else values for key, values in node}


def _plugins(section: str) -> dict[str, dict[str, Any]]:
    parser: Any = import_or_require("logstash_pipeline_parser")
    tree = parser.Pipeline(PIPELINE_FILE.read_text()).parse()
    sections = dict(tree)
    return {name: _settings(settings) for name, settings in sections[section]}


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
    """Logstash only strips what it added; the ingest pipeline does the normalising."""
    filters = _plugins("filter")
    assert set(filters) == {"mutate"}


def test_settings_persist_the_queue_and_keep_dead_letters() -> None:
    """logstash.yml and pipelines.yml turn on the persisted queue and the dead letter queue."""
    settings = yaml.safe_load((REPO / "logstash" / "config" / "logstash.yml").read_text())
    assert settings["queue.type"] == "persisted"
    assert settings["dead_letter_queue.enable"] is True
    assert settings["api.http.port"] == 9600
    pipelines = yaml.safe_load((REPO / "logstash" / "config" / "pipelines.yml").read_text())
    assert len(pipelines) == 1
    (pipeline,) = pipelines
    assert pipeline["path.config"].endswith("/" + PIPELINE_FILE.name)
    assert pipeline["queue.type"] == "persisted"
    assert pipeline["dead_letter_queue.enable"] is True
