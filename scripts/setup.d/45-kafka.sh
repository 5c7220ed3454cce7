#!/usr/bin/env bash
# Real Kafka broker (KRaft, one combined broker+controller) for tests/test_kafka.py: the broker's
# runtime classpath from Maven Central, resolved by Maven into .cache/kafka/<version>/libs/
# (git-ignored; Maven's own download cache sits next to it). Needs Java 17 (Kafka 4 brokers
# do) and Maven: installed from Debian when absent. Idempotent: seconds when already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
KAFKA_VERSION=4.4.0
SCALA=2.13
LOG4J_VERSION=2.25.5  # the log4j2 kafka_2.13 depends on; its slf4j 1.7 bridge
CACHE="$PWD/.cache/kafka"
OUT="$CACHE/$KAFKA_VERSION"
if [ -f "$OUT/.complete" ]; then
    exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    echo "45-kafka.sh: installing Java 17 and Maven from Debian"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        openjdk-17-jre-headless maven >/dev/null
fi
JAVA_MAJOR="$(java -XshowSettings:properties -version 2>&1 \
    | sed -n 's/^ *java.specification.version = //p')"
if [ "${JAVA_MAJOR%%.*}" -lt 17 ]; then
    echo "45-kafka.sh: Kafka $KAFKA_VERSION needs Java 17 or newer, found $JAVA_MAJOR" >&2
    exit 1
fi

start=$(date +%s)
echo "45-kafka.sh: resolving Kafka $KAFKA_VERSION (broker and KRaft storage tool) into $OUT"
rm -rf "$OUT"
mkdir -p "$OUT"
# A throwaway pom: the broker (kafka_2.13 holds kafka.Kafka and kafka.tools.StorageTool, which
# formats the KRaft log directory) and the slf4j-to-log4j2 bridge, without which the broker
# logs nothing (the tests read its log to tell a lost port race from a real failure).
cat > "$OUT/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.pyobs.tests</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
if ! mvn -q -B -Dstyle.color=never -f "$OUT/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$OUT/libs"; then
    echo "45-kafka.sh: Maven could not resolve Kafka $KAFKA_VERSION (see above)" >&2
    exit 1
fi
if ! ls "$OUT/libs/kafka_$SCALA-$KAFKA_VERSION.jar" >/dev/null; then
    echo "45-kafka.sh: the broker jar is missing from $OUT/libs" >&2
    exit 1
fi
echo "$KAFKA_VERSION" > "$OUT/.complete"
echo "45-kafka.sh: Kafka $KAFKA_VERSION ready ($(ls "$OUT/libs" | wc -l) jars) in $(( $(date +%s) - start )) s"
