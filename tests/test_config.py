"""Configuration: environment, keyword options, and clear errors for malformed values."""

from __future__ import annotations

import pytest

import pyobs
from pyobs._config import ENV_VARS, load_config


@pytest.mark.parametrize(
    ("var", "value", "accepts"),
    [
        ("PYOBS_MAX_ROUTES", "abc", "whole number"),
        ("PYOBS_MAX_ROUTES", "0", "whole number"),
        ("PYOBS_METRICS_AUTH", "oops", "basic:USER:PASS"),
        ("PYOBS_METRICS_AUTH", "basic:onlyuser", "basic:USER:PASS"),
        ("PYOBS_METRICS_PORT", "70000", "from 1 to 65535"),
        ("PYOBS_ACCESS_LOG", "maybe", "true/false"),
        ("PYOBS_LOG_FORMAT", "xml", "json, console"),
        ("PYOBS_LOG_LEVEL", "loud", "debug, info"),
        ("PYOBS_EXCLUDED_PATHS", "/ok,/bad(", "regular expressions"),
        ("PYOBS_TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip", "CIDR"),
        ("PYOBS_METRICS_PATH", "metrics", "starting with '/'"),
        ("PYOBS_LOGSTASH_PORT", "-1", "whole number"),
    ],
)
def test_malformed_value_names_variable_and_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, accepts: str
) -> None:
    """setup() fails with a message naming the variable, its value and what it accepts."""
    monkeypatch.setenv(var, value)
    with pytest.raises(pyobs.ConfigError) as info:
        pyobs.setup()
    message = str(info.value)
    assert var in message
    if var == "PYOBS_METRICS_AUTH":
        assert value not in message  # may hold a password: never echoed
    else:
        assert repr(value) in message
    assert accepts in message


@pytest.mark.parametrize(
    "var",
    ["PYOBS_METRICS_AUTH", "PYOBS_ELASTICSEARCH_URL", "PYOBS_LOGSTASH_URL"],
)
def test_malformed_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    """A malformed value that may carry a password fails setup() without printing it."""
    monkeypatch.setenv(var, "basic-hunter2-s3cret")
    with pytest.raises(pyobs.ConfigError) as info:
        pyobs.setup()
    assert var in str(info.value)
    assert "hunter2" not in str(info.value)


def test_keyword_options_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code wins over the environment; strings are parsed like the environment's."""
    monkeypatch.setenv("PYOBS_SERVICE_NAME", "from-env")
    monkeypatch.setenv("PYOBS_MAX_ROUTES", "10")
    config = pyobs.setup(service_name="from-code", max_routes="20")
    assert config.service_name == "from-code"
    assert config.max_routes == 20


def test_bad_keyword_option_is_clear() -> None:
    """An unknown or malformed keyword option names itself."""
    with pytest.raises(pyobs.ConfigError, match="unknown option 'max_route'"):
        pyobs.setup(max_route=3)
    with pytest.raises(pyobs.ConfigError, match=r"max_routes='x'.*PYOBS_MAX_ROUTES"):
        pyobs.setup(max_routes="x")


def test_config_is_frozen_and_setup_idempotent() -> None:
    """setup() returns the same frozen config when called again with nothing new."""
    first = pyobs.setup(service_name="svc")
    assert pyobs.setup() is first
    with pytest.raises(AttributeError):
        first.service_name = "other"  # type: ignore[misc]


def test_otel_service_name_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PYOBS_SERVICE_NAME, OTEL_SERVICE_NAME names the service."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-named")
    assert load_config().service_name == "otel-named"


def test_every_contract_variable_is_read() -> None:
    """Each environment variable of the contract maps to a config field."""
    contract = {
        "PYOBS_SERVICE_NAME", "PYOBS_SERVICE_VERSION", "PYOBS_ENVIRONMENT", "PYOBS_LOG_LEVEL",
        "PYOBS_LOG_FORMAT", "PYOBS_ACCESS_LOG", "PYOBS_METRICS_PATH", "PYOBS_METRICS_PORT",
        "PYOBS_METRICS_AUTH", "PYOBS_EXCLUDED_PATHS", "PYOBS_MAX_ROUTES", "PYOBS_TRUSTED_PROXIES",
        "PYOBS_LOGSTASH_HOST", "PYOBS_LOGSTASH_PORT", "PYOBS_LOGSTASH_TLS", "PYOBS_LOG_SPOOL_DIR",
        "PYOBS_LOG_SPOOL_MAX_BYTES", "PYOBS_DISABLED", "PROMETHEUS_MULTIPROC_DIR",
    }  # fmt: skip
    assert contract <= set(ENV_VARS.values())
