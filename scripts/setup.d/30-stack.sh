#!/usr/bin/env bash
# Docker Compose v2 for the stack tests: `docker compose config` validates and
# interpolates docker-compose.yml exactly as `docker compose up` would, without an
# engine. Built from its Go module (no prebuilt binary download); quick when present.
set -euo pipefail
COMPOSE_VERSION="v2.40.3"
PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"
if [ -x "$PLUGIN_DIR/docker-compose" ] \
    && "$PLUGIN_DIR/docker-compose" version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "30-stack.sh: Go is needed to build Docker Compose" >&2
    exit 1
fi
src="$(go mod download -json "github.com/docker/compose/v2@${COMPOSE_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "$PLUGIN_DIR"
(
    cd "$src"
    GOFLAGS=-mod=mod go build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=${COMPOSE_VERSION}" \
        -o "$PLUGIN_DIR/docker-compose" ./cmd
)
# Also usable as a standalone `docker-compose` where the docker CLI is missing.
ln -sf "$PLUGIN_DIR/docker-compose" /usr/local/bin/docker-compose
"$PLUGIN_DIR/docker-compose" version
