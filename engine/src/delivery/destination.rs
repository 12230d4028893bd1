//! The destination seam: an attempt's signed request goes out as an HTTP
//! POST ([`client`](super::client)) or, for a `kafka://` URL, as a Kafka
//! record (`kafka_sink`, behind the `kafka` feature). Both answer the same
//! way (an [`Answer`] or a [`SendError`]), so everything after the send
//! (the decision, the breaker, retries, the delivery log) is shared.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

#[cfg(feature = "kafka")]
use super::kafka_sink::{KafkaSinks, Record};
use super::{
    client::{Answer, DeliveryClient, SendError},
    credentials::EndpointCredentials,
};
use crate::{kafka_target::is_kafka_url, model::WebhookSubscription};

/// Where a subscription's deliveries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// An `http(s)://` endpoint: a signed POST.
    Http,
    /// A `kafka://brokers/topic` destination: a record with the same body
    /// and headers.
    Kafka,
}

impl Destination {
    /// The destination kind of `url`.
    pub fn of(url: &str) -> Self {
        if is_kafka_url(url) {
            Self::Kafka
        } else {
            Self::Http
        }
    }
}

/// One signed request, ready for any destination.
pub struct Outbound {
    /// The Kafka record key: the event's dedupe key, else its id.
    pub key: String,
    /// The webhook headers (signature headers included).
    pub headers: HeaderMap,
    /// The body an HTTP delivery POSTs.
    pub body: Bytes,
    /// The attempt's timeout, when not the server's default.
    pub timeout: Option<Duration>,
}

/// The senders of every destination kind, shared by the shards.
pub struct Destinations {
    /// The pooled HTTP client.
    pub http: DeliveryClient,
    /// Per-subscription TLS clients and OAuth2 tokens.
    pub credentials: EndpointCredentials,
    /// The pooled Kafka producers.
    #[cfg(feature = "kafka")]
    pub kafka: KafkaSinks,
}

impl Destinations {
    /// Sends `out` to `sub`'s destination.
    pub async fn send(
        &self,
        sub: &WebhookSubscription,
        out: Outbound,
    ) -> Result<Answer, SendError> {
        match Destination::of(&sub.url) {
            Destination::Http => {
                self.credentials
                    .post(&self.http, sub, out.headers, out.body, out.timeout)
                    .await
            }
            #[cfg(feature = "kafka")]
            Destination::Kafka => {
                let record = Record {
                    key: &out.key,
                    headers: &out.headers,
                    body: &out.body,
                };
                self.kafka
                    .produce(&sub.url, sub.kafka.as_ref(), record, out.timeout)
                    .await
            }
            #[cfg(not(feature = "kafka"))]
            Destination::Kafka => Err(SendError {
                class: crate::model::ErrorClass::Connect,
                message: "this Herald is built without the `kafka` feature: \
                          kafka:// destinations cannot be delivered to"
                    .into(),
                latency: Duration::ZERO,
            }),
        }
    }
}
