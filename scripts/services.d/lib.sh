# Shared helpers of scripts/services. A service NAME provides:
#   NAME_port             the port it serves on (readiness and status)
#   NAME_install          make binaries/jars present (idempotent, cached)
#   NAME_start            start it in the background, write its pid to $(pidfile NAME),
#                         log to $(logfile NAME), print the log line that means ready
#   NAME_stop (optional)  custom stop; default: SIGTERM the pid, wait, SIGKILL late
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/.cache/services"
RUN="$CACHE/run"
mkdir -p "$RUN"

say() { printf '[services] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
pidfile() { echo "$RUN/$1.pid"; }
logfile() { echo "$RUN/$1.log"; }

# Pid of a running service we started, or nothing.
running_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Copies the runtime class path of scripts/services.d/NAME.pom.xml into
# .cache/services/jars/NAME once (Maven Central through mvn's own cache).
fetch_jars() {
  local name=$1 dir="$CACHE/jars/$1"
  if [[ -f $dir/.complete ]] && [[ $dir/.complete -nt "$ROOT/scripts/services.d/$name.pom.xml" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || apt_install maven
  say "$name: fetching jars (Maven Central)"
  rm -rf "$dir"
  mkdir -p "$dir"
  mvn -q -B -f "$ROOT/scripts/services.d/$name.pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dir" >&2 || die "$name: mvn could not fetch the jars"
  touch "$dir/.complete"
}

APT_UPDATED=
apt_install() {
  if [[ -z $APT_UPDATED ]]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

command -v java >/dev/null || apt_install openjdk-17-jre-headless

# Waits until LOG contains PATTERN (the service's readiness line) while PID
# lives, at most TIMEOUT seconds; on failure shows the log's tail.
wait_ready() {
  local name=$1 pid=$2 pattern=$3 timeout=${4:-180} log start=$SECONDS
  log=$(logfile "$name")
  while ! grep -qE "$pattern" "$log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$log" >&2 || true
      die "$name exited before it was ready (log: $log)"
    fi
    if ((SECONDS - start > timeout)); then
      tail -n 40 "$log" >&2 || true
      die "$name not ready after ${timeout}s (log: $log)"
    fi
    sleep 0.2
  done
  say "$name ready on 127.0.0.1:$("${name}_port") in $((SECONDS - start))s"
}

svc_up() {
  local name=$1 pid
  if pid=$(running_pid "$name"); then
    say "$name already running (pid $pid)"
    return 0
  fi
  if port_open "$("${name}_port")"; then
    die "$name: port $("${name}_port") is taken by a process this script did not start; stop it first"
  fi
  "${name}_install"
  "${name}_start"
}

svc_down() {
  local name=$1 pid
  if ! pid=$(running_pid "$name"); then
    rm -f "$(pidfile "$name")"
    say "$name not running"
    return 0
  fi
  if declare -F "${name}_stop" >/dev/null; then
    "${name}_stop" "$pid"
  else
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop in 30s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$(pidfile "$name")"
  say "$name stopped"
}

svc_status() {
  local name=$1 pid
  if pid=$(running_pid "$name"); then
    if port_open "$("${name}_port")"; then
      printf '%-11s running  pid %-7s 127.0.0.1:%s\n' "$name" "$pid" "$("${name}_port")"
    else
      printf '%-11s starting pid %-7s 127.0.0.1:%s not open yet\n' "$name" "$pid" "$("${name}_port")"
    fi
  else
    printf '%-11s stopped\n' "$name"
    return 1
  fi
}

# Starts "$@" in the background as a new session, logging to NAME's log.
spawn() {
  local name=$1
  shift
  : >"$(logfile "$name")"
  setsid "$@" >>"$(logfile "$name")" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}
