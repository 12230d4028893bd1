# The demo CDC pipeline, set up after `connect` is up (docs/cdc.md): database
# `app` on the local PostgreSQL with Herald's outbox table (sql/herald_outbox.sql)
# and the Debezium connector `herald-outbox`
# (deploy/debezium/herald-outbox-connector.json) streaming it to the topic
# `herald.cdc.outbox`. Idempotent: PUT of a connector's config creates or
# updates it, and Connect standalone forgets connectors when it restarts.
# shellcheck shell=bash

CDC_CONNECTOR=herald-outbox

cdc_setup() {
  local psql=(psql -h 127.0.0.1 -p "$(postgres_port)" -U postgres -v ON_ERROR_STOP=1 -qtA)
  if [[ $("${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'app'") != 1 ]]; then
    say "cdc: creating database app"
    "${psql[@]}" -d postgres -c 'CREATE DATABASE app' >&2
  fi
  "${psql[@]}" -d app -f "$ROOT/sql/herald_outbox.sql" >&2
  say "cdc: registering connector $CDC_CONNECTOR"
  python3 - "$CDC_CONNECTOR" "$ROOT/deploy/debezium/herald-outbox-connector.json" <<'PY' || die "cdc: connector $CDC_CONNECTOR is not RUNNING"
import json, sys, time, urllib.request

name, path = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:8083/connectors/{name}"
with open(path) as f:
    config = f.read()
req = urllib.request.Request(f"{base}/config", data=config.encode(), method="PUT",
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=30).read()
deadline = time.time() + 90
state = None
while time.time() < deadline:
    try:
        status = json.load(urllib.request.urlopen(f"{base}/status", timeout=10))
        tasks = status.get("tasks", [])
        state = (status["connector"]["state"], [t["state"] for t in tasks])
        if state[0] == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
            sys.exit(0)
        failed = [t.get("trace", "") for t in tasks if t["state"] == "FAILED"]
        if failed:
            print(failed[0][:2000], file=sys.stderr)
            sys.exit(1)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    time.sleep(0.5)
print(f"last state: {state}", file=sys.stderr)
sys.exit(1)
PY
  say "cdc: connector $CDC_CONNECTOR RUNNING (database app, topic herald.cdc.outbox)"
}

# Runs cdc_setup when `connect` is among the services just brought up.
cdc_after_up() {
  [[ " $* " == *" connect "* ]] && cdc_setup
  return 0
}
