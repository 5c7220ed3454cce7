#!/usr/bin/env bash
# Helm 3 for the Kubernetes tests (tests/k8s: `helm lint` and `helm template` of the charts
# under deploy/), built from the Go module proxy into .cache/helm/<version>/helm.
# Idempotent: when that version is already built it only prints it. Go's own build and module
# caches are used (as for Jaeger), so a machine that keeps them rebuilds in seconds.
# A cold build takes about 3 minutes on 2 cores (downloads ~400 MB of module sources).
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
# -trimpath: no local paths in the binary.
export GOFLAGS="-trimpath"
echo "50-helm.sh: building helm $VERSION from the Go module proxy ($(go version | cut -d' ' -f3))"
started=$SECONDS
SRC="$(go mod download -json "helm.sh/helm/v3@$VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
# The ldflags of helm's own Makefile: its version, and the Kubernetes version of its client-go
# (v0.X.Y -> 1.X) as the default for capabilities and lint's deprecation checks.
CLIENT_GO="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$SRC/go.mod")"
K8S_MINOR="$(echo "$CLIENT_GO" | cut -d. -f2)"
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
    LDFLAGS+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$K8S_MINOR"
done
rm -rf "$OUT.tmp"
GOBIN="$OUT.tmp" go install -ldflags="$LDFLAGS" "helm.sh/helm/v3/cmd/helm@$VERSION"
mkdir -p "$OUT"
mv "$OUT.tmp/helm" "$OUT/helm"
rmdir "$OUT.tmp"
echo "50-helm.sh: built helm $("$OUT/helm" version --template '{{.Version}}') (Kubernetes 1.$K8S_MINOR defaults) in $((SECONDS - started)) s"
