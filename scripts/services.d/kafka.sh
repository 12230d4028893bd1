# Apache Kafka 4.3.1, one KRaft node (broker + controller) on 127.0.0.1:9092
# (controller 9093), from the Maven Central jars of kafka.pom.xml. Two more
# listeners for Kafka destinations over TLS: SSL on 9094 and SASL_SSL (PLAIN,
# user herald, password herald-kafka-secret) on 9095, with a self-signed
# certificate for 127.0.0.1 and localhost made by keytool on first start; its
# PEM, the authority to trust, is $CACHE/kafka/tls/ca.pem.
# shellcheck shell=bash

kafka_port() { echo 9092; }

kafka_install() { fetch_jars kafka; }

# The broker's TLS key and self-signed certificate, and its PEM.
kafka_tls() {
  local tls=$1 pass=$2
  [[ -f $tls/broker.p12 && -f $tls/ca.pem ]] && return 0
  mkdir -p "$tls"
  rm -f "$tls/broker.p12" "$tls/ca.pem"
  keytool -genkeypair -alias broker -keyalg EC -groupname secp256r1 -validity 3650 \
    -dname "CN=localhost" -ext "SAN=ip:127.0.0.1,dns:localhost" -ext "BC:c=ca:true" \
    -keystore "$tls/broker.p12" -storetype PKCS12 -storepass "$pass" -keypass "$pass" \
    >"$tls/keytool.log" 2>&1 || { cat "$tls/keytool.log" >&2; die "kafka: keytool failed"; }
  keytool -exportcert -rfc -alias broker -keystore "$tls/broker.p12" -storepass "$pass" \
    -file "$tls/ca.pem" >>"$tls/keytool.log" 2>&1 || { cat "$tls/keytool.log" >&2; die "kafka: keytool failed"; }
}

kafka_start() {
  local dir="$CACHE/kafka" jars="$CACHE/jars/kafka" pass=herald-test-keystore
  mkdir -p "$dir/data"
  kafka_tls "$dir/tls" "$pass"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SSL://127.0.0.1:9094,SASL_SSL://127.0.0.1:9095
advertised.listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SSL://127.0.0.1:9094,SASL_SSL://127.0.0.1:9095
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$pass
ssl.key.password=$pass
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_herald="herald-kafka-secret";
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
