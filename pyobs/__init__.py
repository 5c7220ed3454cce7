"""pyobs: Prometheus metrics, OpenTelemetry traces and ECS JSON logs for Python web services.

``import pyobs`` imports no web framework; the adapters live in ``pyobs.<framework>``.
"""

from __future__ import annotations

from pyobs._config import Config, ConfigError
from pyobs._state import setup
from pyobs._version import __version__

__all__ = ["Config", "ConfigError", "__version__", "setup"]
