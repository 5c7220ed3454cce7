#!/usr/bin/env bash
# Jaeger v2 (one binary: OTLP receiver, in-memory trace store, query API) for the end-to-end
# OTLP test, built from the Go module proxy into .cache/jaeger/bin/jaeger.
# Idempotent: does nothing when that version is already built. A cold build takes minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=v1.76.0
OUT="$PWD/.cache/jaeger"
if [ -x "$OUT/bin/jaeger" ] && [ "$(cat "$OUT/VERSION" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "40-jaeger.sh: Go is not installed; cannot build Jaeger" >&2
    exit 1
fi
mkdir -p "$OUT/bin"
# The module's go.mod has replace directives, so `go install ...@version` refuses it: build
# it as the main module from its downloaded source instead.
SRC="$(cd "$OUT" && go mod download -json "github.com/jaegertracing/jaeger@$VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
(cd "$SRC" && go build -o "$OUT/bin/jaeger.tmp" ./cmd/jaeger)
mv "$OUT/bin/jaeger.tmp" "$OUT/bin/jaeger"
echo "$VERSION" > "$OUT/VERSION"
