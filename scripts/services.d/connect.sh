# Kafka Connect standalone with the Debezium PostgreSQL connector 3.6.1.Final
# (REST 127.0.0.1:8083), on the local Kafka. No connector is configured here:
# connectors are added through the REST API by whoever needs one.
# shellcheck shell=bash

connect_port() { echo 8083; }

connect_install() { fetch_jars connect; }

connect_start() {
  local dir="$CACHE/connect" jars="$CACHE/jars/connect"
  mkdir -p "$dir"
  cat >"$dir/worker.properties" <<PROPS
bootstrap.servers=127.0.0.1:9092
listeners=http://127.0.0.1:8083
rest.advertised.host.name=127.0.0.1
offset.storage.file.filename=$dir/offsets.dat
offset.flush.interval.ms=1000
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
plugin.discovery=only_scan
PROPS
  cat >"$dir/log4j2.xml" <<'XML'
<Configuration>
  <Appenders>
    <Console name="STDOUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="org.reflections" level="ERROR"/>
  </Loggers>
</Configuration>
XML
  say "connect: starting"
  spawn connect java -Xms256m -Xmx512m -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$dir/log4j2.xml" \
    -cp "$jars/*" org.apache.kafka.connect.cli.ConnectStandalone "$dir/worker.properties"
  wait_ready connect "$(<"$(pidfile connect)")" 'Kafka Connect started' 180
}
