//! Integration tests of the `herald` server: the API in process, the
//! binary for crash tests, real HTTP receivers on loopback.

mod bad_input;
mod breaker;
mod cql;
mod cql_crash;
mod cql_store;
mod crash;
mod flow;
mod policies;
mod support;
