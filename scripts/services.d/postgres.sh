# PostgreSQL 15 from Debian with wal_level=logical on 127.0.0.1:5432: its own
# cluster under .cache/services/postgres, run as the postgres user, so `down`
# stops only this one. Local test service: password-less (trust) on loopback.
# shellcheck shell=bash

PG_BIN=/usr/lib/postgresql/15/bin

postgres_port() { echo 5432; }

postgres_install() {
  if [[ ! -x $PG_BIN/initdb ]]; then
    # Keep Debian from starting its own 15/main cluster on 5432 during the install.
    local policy=/usr/sbin/policy-rc.d created=
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install postgresql-15
    [[ -n $created ]] && rm -f "$policy"
  fi
  # A Debian cluster that owns 5432 (the package's 15/main) would shadow ours.
  if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 && $4 == "online"' | grep -q .; then
    say "postgres: stopping Debian's own cluster on 5432 ($(pg_lsclusters -h | awk '$3 == 5432 {print $1 "/" $2}'))"
    pg_lsclusters -h | awk '$3 == 5432 && $4 == "online" {print $1, $2}' | while read -r v c; do
      pg_ctlcluster "$v" "$c" stop
    done
  fi
}

postgres_start() {
  local dir="$CACHE/postgres"
  mkdir -p "$dir/run"
  # The postgres user must reach its directory.
  chmod o+x "$ROOT" "$ROOT/.cache" "$CACHE" 2>/dev/null || true
  chown postgres:postgres "$dir" "$dir/run"
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    say "postgres: initdb"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "postgres: initdb failed"; }
  fi
  say "postgres: starting"
  spawn postgres setpriv --reuid=postgres --regid=postgres --init-groups \
    "$PG_BIN/postgres" -D "$dir/data" \
    -c listen_addresses=127.0.0.1 -c port=5432 \
    -c unix_socket_directories="$dir/run" \
    -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 \
    -c shared_buffers=64MB -c logging_collector=off
  wait_ready postgres "$(<"$(pidfile postgres)")" 'database system is ready to accept connections' 60
}

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

postgres_stop() {
  # SIGINT: PostgreSQL's fast shutdown (rolls back sessions, checkpoints).
  kill -INT "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}
