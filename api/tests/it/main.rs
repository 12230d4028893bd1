//! Integration tests of the `herald` server: the API in process, the
//! binary for crash tests, real HTTP receivers on loopback.

mod bad_input;
mod batch;
mod breaker;
mod burst;
mod catalogue;
mod cdc;
mod cdc_relay;
mod cql;
mod cql_crash;
mod cql_replay;
mod cql_store;
mod crash;
mod distributed;
mod ed25519;
mod errors;
mod flow;
mod isolation;
mod kafka;
mod kafka_batch;
mod kafka_broker;
mod limits;
mod manage;
mod metrics;
mod openapi_routes;
mod policies;
mod portal;
mod recovery;
mod relay_scale;
mod replicas;
mod role_metrics;
mod schemathesis;
mod scopes;
mod secrets;
mod stream;
mod support;
