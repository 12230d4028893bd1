//! Herald's delivery engine.
//!
//! Events enter through [`Engine::emit`] (or the CDC relay, [`relay`]), are made
//! durable in the event log ([`log::EventLog`]) before they are acknowledged,
//! are fanned out to matching subscriptions by [`fanout`], and are delivered,
//! signed ([`signing`]), by endpoint-sharded workers ([`delivery`]). Every
//! attempt and every scheduled retry lives in the store ([`store::Store`]).
//!
//! The event log and the store are the two seams: the embedded backends here
//! run Herald on one machine with no external service, and the distributed
//! backends (Kafka, ScyllaDB) slot in behind the same traits.
#![warn(missing_docs)]

pub mod audit;
pub mod catalogue;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod ed25519;
pub mod egress_proxy;
pub mod encryption;
pub mod endpoint_auth;
mod engine;
pub mod error;
pub mod fanout;
pub mod filters;
pub mod gone;
pub mod ids;
pub mod input;
pub mod kafka_target;
pub mod log;
pub mod log_recovery;
pub mod metrics;
pub mod model;
pub mod operational;
pub mod payload;
pub mod payload_filter;
pub mod relay;
pub mod resources;
pub mod sealing;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod subscriptions;
pub mod tenant_keys;
pub mod test_hooks;

pub use config::EngineConfig;
pub use engine::{
    decode_cursor, encode_cursor, AuditPage, Backends, BacklogFull, Catalogue, Engine, EventPage,
    EventTypePage, LogBackend, LogPage, NewApiKey, PreparedSchema, ReplayedDelivery, Rotation,
    StoreBackend, StreamBatch, StreamFrame, SubscriptionPage, SubscriptionUpdate, API_KEY,
    MAX_BATCH_EVENTS, MIN_WAIT_BOUND, RECOVERY,
};
pub use error::EngineError;
pub use filters::OPERATIONAL_PREFIX;
pub use input::{
    build_event, validate_limits, NewEvent, NewSubscription, MAX_IN_FLIGHT_LIMIT, MAX_RATE_LIMIT,
    MAX_TIMEOUT_SECONDS,
};
