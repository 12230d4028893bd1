# Apache Cassandra 5.0.6, one node on 127.0.0.1:9042 (storage 7000), the CQL
# server standing in for ScyllaDB (which cannot be installed here), from the
# Maven Central jars of cassandra.pom.xml. Tuned to start fast: one token, no
# gossip settling wait, no auto-snapshots, a 1 GB heap.
# shellcheck shell=bash

cassandra_port() { echo 9042; }

cassandra_install() { fetch_jars cassandra; }

cassandra_start() {
  local dir="$CACHE/cassandra" jars="$CACHE/jars/cassandra" jamm
  mkdir -p "$dir/data"
  jamm=$(ls "$jars"/jamm-*.jar 2>/dev/null | head -n 1)
  [[ -n $jamm ]] || die "cassandra: no jamm jar in $jars"
  cat >"$dir/cassandra.yaml" <<YAML
cluster_name: herald-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
commitlog_sync: periodic
commitlog_sync_period: 10000ms
data_file_directories:
  - $dir/data/data
commitlog_directory: $dir/data/commitlog
saved_caches_directory: $dir/data/saved_caches
hints_directory: $dir/data/hints
cdc_raw_directory: $dir/data/cdc_raw
auto_snapshot: false
snapshot_before_compaction: false
concurrent_reads: 8
concurrent_writes: 8
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
YAML
  cat >"$dir/logback.xml" <<'XML'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
XML
  # Cassandra's conf/jvm17-server.options (JPMS exports and opens), as an @argfile.
  cat >"$dir/jvm17.options" <<'OPTS'
-Djdk.attach.allowAttachSelf=true
--add-exports java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports java.base/jdk.internal.ref=ALL-UNNAMED
--add-exports java.base/sun.nio.ch=ALL-UNNAMED
--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports java.sql/java.sql=ALL-UNNAMED
--add-exports java.base/java.lang.ref=ALL-UNNAMED
--add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
--add-opens java.base/java.lang.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens java.base/jdk.internal.math=ALL-UNNAMED
--add-opens java.base/jdk.internal.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens java.base/sun.nio.ch=ALL-UNNAMED
--add-opens java.base/java.io=ALL-UNNAMED
--add-opens java.base/java.nio=ALL-UNNAMED
--add-opens java.base/java.util.concurrent=ALL-UNNAMED
--add-opens java.base/java.util=ALL-UNNAMED
--add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
--add-opens java.base/java.lang=ALL-UNNAMED
--add-opens java.base/java.math=ALL-UNNAMED
--add-opens java.base/java.lang.reflect=ALL-UNNAMED
--add-opens java.base/java.net=ALL-UNNAMED
OPTS
  say "cassandra: starting"
  spawn cassandra java -Xms1G -Xmx1G -XX:+UseG1GC -Xss512k \
    @"$dir/jvm17.options" -javaagent:"$jamm" \
    -Dcassandra-foreground=yes \
    -Dcassandra.config=file://"$dir/cassandra.yaml" \
    -Dcassandra.storagedir="$dir/data" \
    -Dcassandra.logdir="$dir" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.ring_delay_ms=0 \
    -Dcassandra.jmx.local.port=7199 \
    -Dlogback.configurationFile="$dir/logback.xml" \
    -cp "$jars/*" org.apache.cassandra.service.CassandraDaemon
  wait_ready cassandra "$(<"$(pidfile cassandra)")" 'Startup complete' 240
}
