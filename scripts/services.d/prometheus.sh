# Prometheus (and promtool) from Debian's package, unpacked with `apt-get
# download` + `dpkg -x` (installing it would start a system daemon), serving
# 127.0.0.1:9090 with data under .cache/services/prometheus.
# shellcheck shell=bash

PROM_ROOT="$CACHE/prometheus/pkg"

prometheus_port() { echo 9090; }

prometheus_install() {
  [[ -x $PROM_ROOT/usr/bin/prometheus ]] && return 0
  local deb="$CACHE/prometheus/deb"
  rm -rf "$deb" && mkdir -p "$deb"
  say "prometheus: apt-get download prometheus"
  (cd "$deb" && apt-get download prometheus >&2) || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    (cd "$deb" && apt-get download prometheus >&2) || die "prometheus: apt-get download failed"
  }
  dpkg -x "$deb"/prometheus_*.deb "$PROM_ROOT"
}

prometheus_start() {
  local dir="$CACHE/prometheus"
  mkdir -p "$dir/data"
  # Herald's /metrics target is added by whoever runs Herald; Prometheus watches itself.
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:9090"]
YAML
  say "prometheus: starting"
  spawn prometheus "$PROM_ROOT/usr/bin/prometheus" \
    --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" \
    --web.listen-address=127.0.0.1:9090 \
    --web.enable-lifecycle
  wait_ready prometheus "$(<"$(pidfile prometheus)")" 'Server is ready to receive web requests' 60
}
