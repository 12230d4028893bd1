prometheus_port() { echo 0; }
