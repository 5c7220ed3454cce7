#!/usr/bin/env bash
# Debian's Prometheus, promtool, Alertmanager and amtool for the live and rule tests.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null \
    && command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null; then
    exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager >/dev/null
# The Debian packages start system services; the tests run their own instances.
$SUDO systemctl stop prometheus prometheus-alertmanager 2>/dev/null || true
$SUDO pkill -x prometheus 2>/dev/null || true
$SUDO pkill -x prometheus-alertmanager 2>/dev/null || true
