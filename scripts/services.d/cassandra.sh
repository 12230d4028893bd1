# Apache Cassandra 5.0.6 (CQL 127.0.0.1:9042, storage 7000), the CQL server
# standing in for ScyllaDB; jars from cassandra.pom.xml, heap 1G.
# shellcheck shell=bash

cassandra_port() { echo 9042; }

cassandra_install() { fetch_jars cassandra; }

cassandra_start() {
  local dir="$CACHE/cassandra" jars="$CACHE/jars/cassandra" jamm
  mkdir -p "$dir/data"
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
data_file_directories: [$dir/data/data]
commitlog_directory: $dir/data/commitlog
saved_caches_directory: $dir/data/saved_caches
hints_directory: $dir/data/hints
cdc_raw_directory: $dir/data/cdc_raw
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
# Cell values off the heap: on it, memtables held ~4 times what their limit
# counted, and a few sustained loadtest runs (scripts/perf-cql) filled the
# 1 GiB heap until Cassandra died of OutOfMemoryError.
memtable_allocation_type: offheap_objects
# Test keyspaces are dropped by the next test run: no snapshot of each.
auto_snapshot: false
YAML
  cat >"$dir/logback.xml" <<'XML'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
XML
  jamm=$(ls "$jars"/jamm-*.jar | head -n 1)
  # flush_local_schema_changes=false: a schema change is not flushed to disk
  # at once (the commit log keeps it, as it keeps any write). The tests make
  # a keyspace of ~30 tables each; flushed, every statement took a few
  # hundred milliseconds and the CQL contract tests 13-17 s each.
  say "cassandra: starting"
  spawn cassandra java -Xms1G -Xmx1G -Xss512k -XX:+UseG1GC -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$dir" \
    "@$ROOT/scripts/services.d/cassandra.jvm17.options" \
    -javaagent:"$jamm" \
    -Dcassandra-foreground=yes \
    -Dcassandra.config="file://$dir/cassandra.yaml" \
    -Dcassandra.storagedir="$dir/data" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.test.flush_local_schema_changes=false \
    -Dcassandra.jmx.local.port=7199 \
    -Dlogback.configurationFile="$dir/logback.xml" \
    -cp "$jars/*" org.apache.cassandra.service.CassandraDaemon
  wait_ready cassandra "$(<"$(pidfile cassandra)")" 'Startup complete' 240
}
