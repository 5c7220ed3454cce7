#!/usr/bin/env bash
# Debian's redis-server for the interop tests (OTel's redis instrumentation under pyobs's span).
# Idempotent: does nothing when redis-server exists. The tests start their own server on a
# free loopback port and stop it; a system service the package may start is stopped.
set -euo pipefail
if command -v redis-server >/dev/null; then
    exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    redis-server >/dev/null
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now redis-server 2>/dev/null || true
fi
