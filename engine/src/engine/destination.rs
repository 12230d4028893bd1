//! Checking a `kafka://` destination when a subscription is created or
//! changed: the URL's shape, its brokers against the SSRF policy, and the
//! connection settings (which this build's Kafka client must support).

use std::time::Duration;

use crate::{
    error::EngineError,
    kafka_target::{is_kafka_url, KafkaSettings, KafkaTarget},
};

use super::Engine;

impl Engine {
    /// Checks a `kafka://` URL: 422 for a bad shape, a refused broker
    /// address, or a build without the `kafka` feature.
    pub(super) async fn validate_kafka_url(&self, raw: &str) -> Result<(), EngineError> {
        if !cfg!(feature = "kafka") {
            return Err(EngineError::invalid(
                "url",
                "this Herald is built without the `kafka` feature: kafka:// destinations are not available",
            ));
        }
        if raw.len() > 2048 {
            return Err(EngineError::invalid("url", "at most 2048 bytes"));
        }
        let target = KafkaTarget::parse(raw).map_err(|e| EngineError::invalid("url", e))?;
        target
            .check(&self.guard)
            .map_err(|e| EngineError::invalid("url", e.to_string()))?;
        // A broker name that resolves only to refused addresses can never be reached.
        for broker in target.named_brokers() {
            let lookup = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((broker.host.as_str(), broker.port)),
            )
            .await;
            if let Ok(Ok(addrs)) = lookup {
                let addrs: Vec<_> = addrs.collect();
                if addrs.iter().any(|a| self.guard.check_ip(a.ip()).is_err()) {
                    return Err(EngineError::invalid(
                        "url",
                        format!(
                            "broker {} resolves to a non-public address; allow it with HERALD_ALLOW_TARGETS",
                            broker.host
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks Kafka settings: only with a `kafka://` URL (when the URL is
/// given), coherent, and supported by this build's Kafka client.
pub(super) fn validate_kafka_settings(
    url: Option<&str>,
    settings: Option<&KafkaSettings>,
) -> Result<(), EngineError> {
    let Some(settings) = settings else {
        return Ok(());
    };
    if url.is_some_and(|u| !is_kafka_url(u)) {
        return Err(EngineError::invalid(
            "kafka",
            "Kafka settings apply only to a kafka:// url",
        ));
    }
    settings
        .validate()
        .map_err(|e| EngineError::invalid("kafka", e))?;
    #[cfg(feature = "kafka")]
    crate::delivery::kafka_sink::check_settings(settings)
        .map_err(|e| EngineError::invalid("kafka", e))?;
    Ok(())
}
