#!/usr/bin/env bash
# Debian's Prometheus, promtool, Alertmanager and amtool for the rule, config and live tests,
# and wrk, the load generator of benchmarks/realserver.py.
# Idempotent: does nothing when the five commands exist.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null \
    && command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null \
    && command -v wrk >/dev/null; then
    exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager wrk >/dev/null
# The packages may start system services on 9090/9093; the tests start their own instances on
# free loopback ports, so the system ones are only stopped where systemd runs them.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus prometheus-alertmanager 2>/dev/null || true
fi
