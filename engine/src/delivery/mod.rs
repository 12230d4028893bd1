//! Delivery: from a scheduled delivery to a signed HTTP request and a
//! recorded attempt.
//!
//! The pieces are small and separately tested: [`decide`] is the one pure
//! function deciding what an attempt leads to (record, retry, dead, disable,
//! breaker), [`retry`] gives the schedule's delays, [`breaker`] gates each
//! endpoint, [`client`] sends with timeouts and the SSRF guard (straight or through
//! the [`egress`] proxy), [`credentials`] adds a subscription's TLS client
//! and `Authorization`, [`scheduler`] takes due deliveries from the
//! durable schedule, [`worker`] shards them by endpoint so each
//! endpoint's state has one owner and a dead endpoint delays no other,
//! [`destination`] sends a `kafka://` subscription's deliveries as Kafka
//! records instead of POSTs (through `kafka_sink`), and
//! [`hold`] parks a paused subscription's deliveries until it is resumed,
//! [`handoff`] keeps a delivery fan-out did not schedule uncommitted in
//! the log until it is recorded or scheduled, and [`retries`] keeps such
//! a delivery's retries in memory, durable in the schedule changelog.

pub mod attempt;
pub mod breaker;
pub mod client;
pub mod context;
pub mod credentials;
pub mod decide;
pub mod destination;
pub mod egress;
pub mod handoff;
pub mod hold;
#[cfg(feature = "kafka")]
pub mod kafka_sink;
pub mod limit;
mod parking;
pub mod retries;
pub mod retry;
pub mod scheduler;
pub mod worker;
