//! Kafka destinations' producers: one idempotent producer (`acks=all`) per
//! (brokers, connection settings), created on first use and reused by every
//! delivery to them.
//!
//! A record is the webhook request in Kafka form: key = the event's dedupe
//! key (else its id), value = the body an HTTP delivery POSTs, headers = the
//! request's headers (signature headers included). A produce the broker
//! acknowledges is a delivered attempt; an error or no acknowledgement
//! within the attempt's timeout is a failed one, retried like an HTTP
//! failure. A record that times out here may still reach the broker later
//! (at-least-once, as with HTTP).
//!
//! SSRF: the brokers written in the URL go through the guard before every
//! produce (IP literals) and when a producer is made (names, after DNS
//! resolution: every address must be admitted). The brokers the cluster
//! then advertises in its metadata are connected to by librdkafka itself and
//! are not checked (docs/security.md).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use rdkafka::{
    client::ClientContext,
    config::ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

use super::client::{Answer, SendError};
use crate::{
    kafka_target::{KafkaSettings, KafkaTarget},
    model::ErrorClass,
    ssrf::{SsrfError, TargetGuard},
};

/// What one produce carries.
pub struct Record<'a> {
    /// The record key.
    pub key: &'a str,
    /// The webhook headers.
    pub headers: &'a HeaderMap,
    /// The record value.
    pub body: &'a Bytes,
}

/// The last connection error librdkafka reported for a producer (a TLS
/// handshake that failed, a SASL login the broker refused, a broker down):
/// a produce that times out says why, when it can.
#[derive(Clone, Default)]
struct BrokerErrors {
    last: std::sync::Arc<Mutex<Option<(RDKafkaErrorCode, String, Instant)>>>,
}

impl ClientContext for BrokerErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        *self.last.lock() = Some((code, reason.to_string(), Instant::now()));
    }
}

impl BrokerErrors {
    /// The last error reported within `within`, if any.
    fn recent(&self, within: Duration) -> Option<(RDKafkaErrorCode, String)> {
        self.last
            .lock()
            .as_ref()
            .filter(|(_, _, at)| at.elapsed() <= within)
            .map(|(code, reason, _)| (*code, reason.clone()))
    }
}

/// A pooled producer and the errors its connections reported.
type Pooled = (FutureProducer<BrokerErrors>, BrokerErrors);

/// The producers of a pool are keyed by where they connect and how.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    bootstrap: String,
    settings: KafkaSettings,
}

/// The pooled producers of every Kafka destination.
pub struct KafkaSinks {
    producers: Mutex<HashMap<PoolKey, Pooled>>,
    guard: TargetGuard,
    timeout: Duration,
}

impl KafkaSinks {
    /// A pool whose producers give up on a record after `timeout` (an
    /// attempt's own timeout may be shorter).
    pub fn new(guard: TargetGuard, timeout: Duration) -> Self {
        Self {
            producers: Mutex::new(HashMap::new()),
            guard,
            timeout,
        }
    }

    /// How many producers the pool holds.
    pub fn producers(&self) -> usize {
        self.producers.lock().len()
    }

    /// Produces `record` to the destination `url` and waits for the
    /// broker's acknowledgement.
    pub async fn produce(
        &self,
        url: &str,
        settings: Option<&KafkaSettings>,
        record: Record<'_>,
        timeout: Option<Duration>,
    ) -> Result<Answer, SendError> {
        let started = Instant::now();
        let fail = |class, message: String| SendError {
            class,
            message,
            latency: started.elapsed(),
        };
        let target = KafkaTarget::parse(url).map_err(|e| {
            fail(
                ErrorClass::Connect,
                format!("invalid Kafka destination: {e}"),
            )
        })?;
        target
            .check(&self.guard)
            .map_err(|e| fail(ErrorClass::SsrfBlocked, e.to_string()))?;
        let key = PoolKey {
            bootstrap: target.bootstrap(),
            settings: settings.cloned().unwrap_or_default(),
        };
        let (producer, errors) = self
            .producer(&target, &key)
            .await
            .map_err(|(class, m)| fail(class, m))?;
        let headers = record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len() + 1),
            |h, (name, value)| {
                h.insert(Header {
                    key: name.as_str(),
                    value: Some(value.as_bytes()),
                })
            },
        );
        let headers = headers.insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        let rec = FutureRecord::to(&target.topic)
            .key(record.key)
            .payload(record.body.as_ref())
            .headers(headers);
        let timeout = timeout.unwrap_or(self.timeout).min(self.timeout);
        let sent = tokio::time::timeout(timeout, producer.send(rec, Timeout::After(timeout))).await;
        match sent {
            Err(_) => {
                let mut message = format!(
                    "the Kafka brokers {} did not acknowledge the record within {timeout:?}",
                    key.bootstrap
                );
                let mut class = ErrorClass::Timeout;
                if let Some((code, reason)) = errors.recent(timeout) {
                    message.push_str(&format!("; the last connection error: {reason}"));
                    if code == RDKafkaErrorCode::SSL {
                        class = ErrorClass::Tls;
                    }
                }
                Err(fail(class, message))
            }
            Ok(Err((e, _))) => {
                if producer.client().fatal_error().is_some() {
                    self.producers.lock().remove(&key);
                }
                Err(fail(
                    classify(&e),
                    format!("produce to topic {} failed: {e}", target.topic),
                ))
            }
            Ok(Ok(delivery)) => Ok(Answer {
                status: 200,
                body: format!(
                    "acknowledged by the broker: topic {}, partition {}, offset {}",
                    target.topic, delivery.partition, delivery.offset
                ),
                location: None,
                retry_after: None,
                latency: started.elapsed(),
            }),
        }
    }

    /// The pooled producer for `key`, made (after the DNS check of the
    /// brokers' names) when there is none.
    async fn producer(
        &self,
        target: &KafkaTarget,
        key: &PoolKey,
    ) -> Result<Pooled, (ErrorClass, String)> {
        if let Some(p) = self.producers.lock().get(key) {
            return Ok(p.clone());
        }
        for broker in target.named_brokers() {
            self.check_name(&broker.host, broker.port)
                .await
                .map_err(|e| (ErrorClass::SsrfBlocked, e.to_string()))?;
        }
        let errors = BrokerErrors::default();
        let producer: FutureProducer<BrokerErrors> =
            producer_config(&key.bootstrap, &key.settings, self.timeout)
                .create_with_context(errors.clone())
                .map_err(|e| {
                    (
                        ErrorClass::Connect,
                        format!("cannot make a Kafka producer: {e}"),
                    )
                })?;
        Ok(self
            .producers
            .lock()
            .entry(key.clone())
            .or_insert((producer, errors))
            .clone())
    }

    /// Refuses a broker name unless every address it resolves to is admitted.
    async fn check_name(&self, host: &str, port: u16) -> Result<(), SsrfError> {
        let no_address = || SsrfError::NoAddress {
            host: host.to_string(),
        };
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| no_address())?
            .collect();
        if addrs.is_empty() {
            return Err(no_address());
        }
        for addr in addrs {
            self.guard.check_ip(addr.ip())?;
        }
        Ok(())
    }
}

/// The producer configuration of a destination.
fn producer_config(bootstrap: &str, settings: &KafkaSettings, timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "herald-destination")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
        .set("security.protocol", settings.security_protocol.as_str())
        // librdkafka logs through the `log` facade; keep its noise out of stderr.
        .set("log_level", "4");
    if settings.security_protocol.sasl() {
        c.set(
            "sasl.mechanism",
            settings.sasl_mechanism.unwrap_or_default().as_str(),
        );
        if let Some(user) = &settings.username {
            c.set("sasl.username", user);
        }
        if let Some(password) = &settings.password {
            c.set("sasl.password", password.expose());
        }
    }
    if let Some(ca) = &settings.ca_pem {
        c.set("ssl.ca.pem", ca);
    }
    c
}

/// Whether this build's librdkafka takes `settings` (it may lack TLS or
/// SCRAM support); the error says which setting it refused.
pub fn check_settings(settings: &KafkaSettings) -> Result<(), String> {
    producer_config("127.0.0.1:9092", settings, Duration::from_secs(1))
        .create_native_config()
        .map(drop)
        .map_err(|e| format!("this Herald's Kafka client cannot use these settings: {e}"))
}

/// Sorts a produce error into the delivery log's error classes.
fn classify(e: &KafkaError) -> ErrorClass {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
            ErrorClass::Timeout
        }
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve,
        ) => ErrorClass::Connect,
        Some(RDKafkaErrorCode::SSL) => ErrorClass::Tls,
        _ => ErrorClass::Transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka_target::{KafkaPassword, SaslMechanism, SecurityProtocol};

    #[test]
    fn plaintext_and_sasl_plain_settings_are_taken() {
        assert_eq!(check_settings(&KafkaSettings::default()), Ok(()));
        let sasl = KafkaSettings {
            security_protocol: SecurityProtocol::SaslPlaintext,
            sasl_mechanism: Some(SaslMechanism::Plain),
            username: Some("u".into()),
            password: Some(KafkaPassword::new("hunter2-secret")),
            ca_pem: None,
        };
        assert_eq!(check_settings(&sasl), Ok(()));
    }

    /// librdkafka is built with OpenSSL (rdkafka's `ssl` feature): TLS
    /// and SCRAM settings are taken.
    #[test]
    fn tls_and_scram_settings_are_taken() {
        for protocol in [SecurityProtocol::Ssl, SecurityProtocol::SaslSsl] {
            let settings = KafkaSettings {
                security_protocol: protocol,
                sasl_mechanism: protocol.sasl().then_some(SaslMechanism::ScramSha512),
                username: protocol.sasl().then(|| "u".into()),
                password: protocol.sasl().then(|| KafkaPassword::new("p")),
                ca_pem: None,
            };
            assert_eq!(check_settings(&settings), Ok(()), "{}", protocol.as_str());
        }
    }

    #[tokio::test]
    async fn producers_are_pooled_per_brokers_and_settings() {
        let loopback = TargetGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let sinks = KafkaSinks::new(loopback, Duration::from_secs(5));
        let body = Bytes::from_static(b"{}");
        let headers = HeaderMap::new();
        let sasl = KafkaSettings {
            security_protocol: SecurityProtocol::SaslPlaintext,
            sasl_mechanism: None,
            username: Some("u".into()),
            password: Some(KafkaPassword::new("p")),
            ca_pem: None,
        };
        // Nothing listens on port 1: every produce times out.
        for (settings, pooled) in [(None, 1), (None, 1), (Some(&sasl), 2), (Some(&sasl), 2)] {
            let record = Record {
                key: "k",
                headers: &headers,
                body: &body,
            };
            let wait = Some(Duration::from_millis(200));
            let err = sinks
                .produce("kafka://127.0.0.1:1/t", settings, record, wait)
                .await
                .expect_err("no broker");
            assert_eq!(err.class, ErrorClass::Timeout, "{err}");
            assert_eq!(sinks.producers(), pooled);
        }
    }

    #[tokio::test]
    async fn a_blocked_broker_is_refused_before_any_producer_is_made() {
        let sinks = KafkaSinks::new(TargetGuard::default(), Duration::from_secs(1));
        let body = Bytes::from_static(b"{}");
        let headers = HeaderMap::new();
        let record = Record {
            key: "k",
            headers: &headers,
            body: &body,
        };
        let err = sinks
            .produce("kafka://127.0.0.1:9092/t", None, record, None)
            .await
            .expect_err("loopback is not allowed");
        assert_eq!(err.class, ErrorClass::SsrfBlocked);
        assert_eq!(sinks.producers(), 0);
    }
}
