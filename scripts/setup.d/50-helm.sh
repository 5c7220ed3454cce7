#!/usr/bin/env bash
# Helm 3 for the Kubernetes tests (tests/k8s: `helm lint` and `helm template` of the charts
# under deploy/), built from the Go module proxy into .cache/helm/<version>/helm.
# Idempotent: when that version is already built it only prints it. The Go build and module
# caches live under .cache/helm/ too, so a second run (or a rebuild) needs no network.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=v3.22.0
ROOT="$PWD/.cache/helm"
OUT="$ROOT/$VERSION"
if [ -x "$OUT/helm" ]; then
    echo "50-helm.sh: helm $("$OUT/helm" version --template '{{.Version}}') already built in .cache/helm/$VERSION"
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "50-helm.sh: Go is not installed; cannot build helm $VERSION" >&2
    exit 1
fi
echo "50-helm.sh: building helm $VERSION from the Go module proxy ($(go version | cut -d' ' -f3))"
started=$SECONDS
mkdir -p "$OUT"
# -modcacherw: a module cache that `rm -rf` can clear; -trimpath and -s -w: a smaller binary
# that does not embed this machine's paths.
GOCACHE="$ROOT/go-build" GOMODCACHE="$ROOT/go-mod" GOFLAGS="-trimpath -modcacherw" \
    GOBIN="$OUT/bin.tmp" \
    go install -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@$VERSION"
mv "$OUT/bin.tmp/helm" "$OUT/helm"
rmdir "$OUT/bin.tmp"
echo "50-helm.sh: built $("$OUT/helm" version --template '{{.Version}}') in $((SECONDS - started)) s"
