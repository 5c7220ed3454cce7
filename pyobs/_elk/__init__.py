"""Elasticsearch and Kibana side of the log path: assets, `pyobs elk setup`, `pyobs logs search`.

Nothing here imports the ``elasticsearch`` client at import time; the CLI commands do.
"""
