//! Integration tests of the `herald` server: the API in process, the
//! binary for crash tests, real HTTP receivers on loopback.

mod bad_input;
mod breaker;
mod cdc;
mod crash;
mod flow;
mod kafka;
mod kafka_broker;
mod support;
