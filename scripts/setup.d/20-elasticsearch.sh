#!/usr/bin/env bash
# Real Elasticsearch for tests/elk: Java 17 + Maven from Debian, the nodes from Maven Central,
# cached under .cache/elasticsearch/ (git-ignored). Idempotent; seconds when already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=.cache/elasticsearch
ES_VERSION=8.19.21
RUNNER_VERSION=7.10.2.0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Java 17 and Maven fetch and run the nodes; openssl makes the shipper's TLS test certificate.
if ! command -v java >/dev/null || ! command -v mvn >/dev/null || ! command -v openssl >/dev/null
then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        openjdk-17-jre-headless maven openssl >/dev/null
fi

# Elasticsearch refuses to run as root: the tests start it as this unprivileged user.
if [ "$(id -u)" -eq 0 ] && ! id -u pyobs-es >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin pyobs-es
fi

HOME_DIR="$CACHE/elasticsearch-$ES_VERSION"
RUNNER_DIR="$CACHE/cluster-runner-$RUNNER_VERSION"
if [ -x "$HOME_DIR/bin/elasticsearch" ] && [ -f "$RUNNER_DIR/.complete" ]; then
    exit 0
fi
mkdir -p "$CACHE"
POM=scripts/elasticsearch/pom.xml
mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeTypes=zip \
    -DoutputDirectory="$PWD/$CACHE/dist"
rm -rf "$HOME_DIR" "$RUNNER_DIR"
python3 -m zipfile -e "$CACHE/dist/elasticsearch-$ES_VERSION.zip" "$CACHE/"
chmod +x "$HOME_DIR"/bin/* "$HOME_DIR"/jdk/bin/* 2>/dev/null || true
mvn -q -B -f "$POM" dependency:copy-dependencies -DexcludeTypes=zip \
    -DoutputDirectory="$PWD/$RUNNER_DIR"
touch "$RUNNER_DIR/.complete"
