cassandra_port() { echo 0; }
