# Apache Kafka 4.3.1, one KRaft node (broker + controller) on 127.0.0.1:9092
# (controller 9093), from the Maven Central jars of kafka.pom.xml.
# shellcheck shell=bash

kafka_port() { echo 9092; }

kafka_install() { fetch_jars kafka; }

kafka_start() {
  local dir="$CACHE/kafka" jars="$CACHE/jars/kafka"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  cat >"$dir/log4j2.xml" <<'XML'
<Configuration>
  <Appenders>
    <Console name="STDOUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="WARN"/>
  </Loggers>
</Configuration>
XML
  if [[ ! -f $dir/data/meta.properties ]]; then
    say "kafka: formatting the KRaft storage"
    java -Xmx512m -cp "$jars/*" -Dlog4j2.configurationFile="$dir/log4j2.xml" \
      kafka.tools.StorageTool format --standalone --ignore-formatted \
      -t HeraldTestCluster0001A -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "kafka: formatting failed"; }
  fi
  say "kafka: starting"
  spawn kafka java -Xms512m -Xmx512m -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$dir/log4j2.xml" \
    -cp "$jars/*" kafka.Kafka "$dir/server.properties"
  wait_ready kafka "$(<"$(pidfile kafka)")" 'Kafka Server started' 120
}
