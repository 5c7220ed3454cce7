#!/usr/bin/env bash
# The upstream Helm charts the stack's values files are written for (tests/k8s/
# test_upstream_charts.py renders them with deploy/stack/values/*.yaml), from the Go module
# proxy: the chart repositories have no go.mod, so the proxy serves them as pseudo-version
# modules. Nothing else is contacted. The charts land in .cache/charts/<name>-<version>/, with
# kube-prometheus-stack's dependencies assembled into its charts/ from the same downloads so
# that `helm template` runs offline; helm (scripts/setup.d/50-helm.sh) checks their versions
# against the chart's constraints. Idempotent: when that set is already there it only says so.
#
# To update: pick a newer version from https://proxy.golang.org/<module>/@v/list (the charts
# repositories' main branch at a commit), set it and its go.sum hash (`go mod download -json
# <module>@<version>`, field Sum) below, set the chart versions it holds, run this script (it
# fails naming any dependency of kube-prometheus-stack that no longer fits), then the tests.
# ECK_VERSION stays equal to deploy/crds/update.sh's (the CRDs we validate against).
set -euo pipefail
cd "$(dirname "$0")/../.."

PROMETHEUS_COMMUNITY=github.com/prometheus-community/helm-charts
PROMETHEUS_COMMUNITY_VERSION=v0.0.0-20260828105119-ed5d7d9b5933
PROMETHEUS_COMMUNITY_SUM=h1:5+f9HcKpurn9DWdl0b8PsT7TkEzfCDwcx2KbWYnrnPU=
GRAFANA_COMMUNITY=github.com/grafana-community/helm-charts
GRAFANA_COMMUNITY_VERSION=v0.0.0-20260829030558-dbf9f4fb5fa1
GRAFANA_COMMUNITY_SUM=h1:vku2Qg2LpOqB0wMkzPLMfWL1f1LBTzBH4fVgSJ8+Zak=
ECK=github.com/elastic/cloud-on-k8s/v3
ECK_VERSION=v3.5.0
ECK_SUM=h1:sR4oj+gNnwI9hgsKhBwjUlx+5F2T/kND40hrzaogtek=

# The charts (the versions these modules hold; the test reads these lines).
KUBE_PROMETHEUS_STACK=88.6.1
KUBE_STATE_METRICS=8.4.1
PROMETHEUS_NODE_EXPORTER=4.56.1
PROMETHEUS_WINDOWS_EXPORTER=0.12.8
GRAFANA=13.0.1
PROMETHEUS_ELASTICSEARCH_EXPORTER=7.4.0
ECK_OPERATOR=3.5.0
# kube-prometheus-stack asks for grafana 12.11.2, which the proxy does not serve (the
# grafana-community module holds 13.0.1 only). Our values disable that subchart
# (grafana.enabled: false: Grafana is installed from its own chart), so the 13.0.1 chart
# stands in to satisfy helm's presence check; it renders nothing (the test checks that).
# Any other mismatch fails.
KPS_GRAFANA_WANTED=12.11.2

ROOT="$PWD/.cache/charts"
STAMP="$PROMETHEUS_COMMUNITY_VERSION $GRAFANA_COMMUNITY_VERSION $ECK_VERSION kps=$KUBE_PROMETHEUS_STACK grafana=$GRAFANA exporter=$PROMETHEUS_ELASTICSEARCH_EXPORTER eck=$ECK_OPERATOR"
if [ -f "$ROOT/.complete" ] && [ "$(cat "$ROOT/.complete")" = "$STAMP" ]; then
    echo "55-upstream-charts.sh: charts already in .cache/charts: $(cd "$ROOT" && echo *)"
    exit 0
fi
fail() { echo "55-upstream-charts.sh: $*" >&2; exit 1; }
command -v go >/dev/null || fail "Go is not installed; cannot download the charts"
HELM_VERSION="$(sed -n 's/^VERSION=//p' scripts/setup.d/50-helm.sh)"
HELM="$PWD/.cache/helm/$HELM_VERSION/helm"
[ -x "$HELM" ] || fail "helm $HELM_VERSION is not built (run scripts/setup.d/50-helm.sh first)"

started=$SECONDS
module_dir() {  # module_dir MODULE VERSION SUM: download through the proxy, check the hash, print Dir
    local json dir sum
    echo "55-upstream-charts.sh: go mod download $1@$2" >&2
    json="$(go mod download -json "$1@$2")" || fail "could not download $1@$2 (see above)"
    dir="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])' <<<"$json")"
    sum="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["Sum"])' <<<"$json")"
    [ "$sum" = "$3" ] || fail "$1@$2 has hash $sum, pinned $3"
    echo "$dir"
}
PC="$(module_dir "$PROMETHEUS_COMMUNITY" "$PROMETHEUS_COMMUNITY_VERSION" "$PROMETHEUS_COMMUNITY_SUM")/charts"
GC="$(module_dir "$GRAFANA_COMMUNITY" "$GRAFANA_COMMUNITY_VERSION" "$GRAFANA_COMMUNITY_SUM")/charts"
EC="$(module_dir "$ECK" "$ECK_VERSION" "$ECK_SUM")/deploy"

TMP="$ROOT.tmp"
rm -rf "$TMP"
mkdir -p "$TMP"
copy_chart() {  # copy_chart SOURCE_DIR DEST VERSION: copy a chart, check its Chart.yaml version
    local got
    got="$(awk '$1 == "version:" { print $2; exit }' "$1/Chart.yaml" | tr -d '"')"
    [ "$got" = "$3" ] || fail "$1 is version $got, pinned $3 (update the pins above)"
    cp -R "$1" "$2"
    chmod -R u+w "$2"  # the module cache is read-only
}
KPS="$TMP/kube-prometheus-stack-$KUBE_PROMETHEUS_STACK"
copy_chart "$PC/kube-prometheus-stack" "$KPS" "$KUBE_PROMETHEUS_STACK"
copy_chart "$PC/kube-state-metrics" "$KPS/charts/kube-state-metrics" "$KUBE_STATE_METRICS"
copy_chart "$PC/prometheus-node-exporter" "$KPS/charts/prometheus-node-exporter" "$PROMETHEUS_NODE_EXPORTER"
copy_chart "$PC/prometheus-windows-exporter" "$KPS/charts/prometheus-windows-exporter" "$PROMETHEUS_WINDOWS_EXPORTER"
copy_chart "$GC/grafana" "$KPS/charts/grafana" "$GRAFANA"
copy_chart "$GC/grafana" "$TMP/grafana-$GRAFANA" "$GRAFANA"
copy_chart "$PC/prometheus-elasticsearch-exporter" \
    "$TMP/prometheus-elasticsearch-exporter-$PROMETHEUS_ELASTICSEARCH_EXPORTER" "$PROMETHEUS_ELASTICSEARCH_EXPORTER"
copy_chart "$EC/eck-operator" "$TMP/eck-operator-$ECK_OPERATOR" "$ECK_OPERATOR"

# helm's own view of the dependencies: every one "unpacked" (present, its version within the
# constraint) but the grafana stand-in, which must be exactly the known mismatch.
check_dependencies() {  # check_dependencies CHART_DIR [NAME=WANTED allowed as "wrong version"]
    local listing bad
    listing="$("$HELM" dependency list "$1")" || fail "helm dependency list $1 failed"
    echo "$listing" | sed 's/^/    /'
    bad="$(awk -v allowed="${2:-}" 'NR > 1 && NF >= 4 && $NF != "unpacked" {
        if ($NF == "version" && $(NF - 1) == "wrong" && allowed == $1 "=" $2) next
        print
    }' <<<"$listing")"
    [ -z "$bad" ] || fail "$(basename "$1"): dependencies that do not fit: $bad"
}
check_dependencies "$KPS" "grafana=$KPS_GRAFANA_WANTED"
check_dependencies "$TMP/eck-operator-$ECK_OPERATOR"
kps_listing="$("$HELM" dependency list "$KPS")"
if ! grep -q "^grafana[[:space:]]*$KPS_GRAFANA_WANTED[[:space:]].*wrong version" <<<"$kps_listing"; then
    fail "kube-prometheus-stack no longer asks for grafana $KPS_GRAFANA_WANTED: revisit the stand-in above"
fi
echo "55-upstream-charts.sh: NOTE grafana $GRAFANA stands in for $KPS_GRAFANA_WANTED in kube-prometheus-stack (disabled by our values)"

rm -rf "$ROOT"
mv "$TMP" "$ROOT"
echo "$STAMP" > "$ROOT/.complete"
echo "55-upstream-charts.sh: charts ready in .cache/charts ($(cd "$ROOT" && echo *)) in $((SECONDS - started)) s"
