#!/usr/bin/env bash
# Refreshes the operator CRDs kept here from the Go module proxy and rewrites SOURCES.md.
# Run it by hand when moving to a new operator version (set the versions below); the tests
# never download anything, they read the files as committed.
#
#   bash deploy/crds/update.sh
set -euo pipefail
cd "$(dirname "$0")"
PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PROMETHEUS_OPERATOR_DIR=example/prometheus-operator-crd
PROMETHEUS_OPERATOR_CRDS="servicemonitors podmonitors prometheusrules prometheuses prometheusagents
    alertmanagers alertmanagerconfigs"
ECK=github.com/elastic/cloud-on-k8s/v3
ECK_VERSION=v3.5.0
ECK_FILE=config/crds/v1/all-crds.yaml
ECK_CRDS="elasticsearches.elasticsearch.k8s.elastic.co kibanas.kibana.k8s.elastic.co
    logstashes.logstash.k8s.elastic.co beats.beat.k8s.elastic.co agents.agent.k8s.elastic.co"

GOMODCACHE="$(mktemp -d)"
export GOMODCACHE GOFLAGS=-modcacherw
trap 'rm -rf "$GOMODCACHE"' EXIT
module_field() {  # module_field MODULE VERSION FIELD: download the module zip, print Dir or Sum
    go mod download -json "$1@$2" | python3 -c "import json, sys; print(json.load(sys.stdin)['$3'])"
}

echo "update.sh: $PROMETHEUS_OPERATOR@$PROMETHEUS_OPERATOR_VERSION"
src="$(module_field "$PROMETHEUS_OPERATOR" "$PROMETHEUS_OPERATOR_VERSION" Dir)/$PROMETHEUS_OPERATOR_DIR"
prometheus_operator_sum="$(module_field "$PROMETHEUS_OPERATOR" "$PROMETHEUS_OPERATOR_VERSION" Sum)"
rm -rf prometheus-operator && mkdir prometheus-operator
for plural in $PROMETHEUS_OPERATOR_CRDS; do
    install -m 644 "$src/monitoring.coreos.com_$plural.yaml" prometheus-operator/
done

echo "update.sh: $ECK@$ECK_VERSION"
src="$(module_field "$ECK" "$ECK_VERSION" Dir)/$ECK_FILE"
eck_sum="$(module_field "$ECK" "$ECK_VERSION" Sum)"
rm -rf eck && mkdir eck
# ECK publishes one multi-document file (its podTemplate schemas already pruned by its
# kustomize patches, as installed); keep each wanted document as it is, one file per CRD.
python3 - "$src" $ECK_CRDS <<'PY'
import re, sys
source, wanted = sys.argv[1], set(sys.argv[2:])
text = open(source, encoding="utf-8").read()
for doc in re.split(r"^---\n", text, flags=re.MULTILINE):
    match = re.search(r"^  name: (\S+)$", doc, re.MULTILINE)
    if match and match.group(1) in wanted:
        plural, group = match.group(1).split(".", 1)
        with open(f"eck/{group}_{plural}.yaml", "w", encoding="utf-8") as out:
            out.write(doc.rstrip("\n") + "\n")
        wanted.discard(match.group(1))
if wanted:
    sys.exit(f"not in {source}: {', '.join(sorted(wanted))}")
PY

{
    echo "# Operator CRDs: where each file comes from"
    echo
    echo "Written by \`deploy/crds/update.sh\` (do not edit by hand; tests/k8s checks the hashes)."
    echo "The tests validate rendered custom resources against the openAPIV3Schema of these files."
    echo
    echo "- \`prometheus-operator/\`: Go module \`$PROMETHEUS_OPERATOR@$PROMETHEUS_OPERATOR_VERSION\`"
    echo "  (go.sum \`$prometheus_operator_sum\`), folder \`$PROMETHEUS_OPERATOR_DIR/\`,"
    echo "  the files copied unchanged."
    echo "- \`eck/\`: Go module \`$ECK@$ECK_VERSION\` (go.sum \`$eck_sum\`),"
    echo "  file \`$ECK_FILE\` (the CRDs as ECK installs them), one document per file, unchanged."
    echo
    echo "| file | sha256 |"
    echo "|---|---|"
    for file in prometheus-operator/*.yaml eck/*.yaml; do
        echo "| $file | $(sha256sum "$file" | cut -d' ' -f1) |"
    done
} > SOURCES.md
echo "update.sh: wrote $(ls prometheus-operator/*.yaml eck/*.yaml | wc -l) CRDs and SOURCES.md"
