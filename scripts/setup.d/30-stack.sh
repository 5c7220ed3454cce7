#!/usr/bin/env bash
# Tools of the stack tests (tests/stack), none of which needs a Docker engine:
# - Docker Compose v2: `docker compose config` validates and interpolates
#   docker-compose.yml exactly as `docker compose up` would;
# - the BuildKit Dockerfile checks in tests/stack/dockerlint (`docker build --check`
#   rules), compiled here once so the tests only reuse Go's build cache.
# Both are built from Go modules (no prebuilt binary download); quick when present.
set -euo pipefail
cd "$(dirname "$0")/../.."
COMPOSE_VERSION="v2.40.3"
PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"
if ! command -v go >/dev/null; then
    echo "30-stack.sh: Go is needed to build Docker Compose and the Dockerfile checks" >&2
    exit 1
fi
(cd tests/stack/dockerlint && GOFLAGS=-mod=mod go build -o /dev/null .)
if [ -x "$PLUGIN_DIR/docker-compose" ] \
    && "$PLUGIN_DIR/docker-compose" version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
    exit 0
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
