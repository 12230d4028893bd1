postgres_port() { echo 0; }
