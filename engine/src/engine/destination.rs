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

/// Checks an HTTP endpoint's authentication and TLS settings against the
/// URL they go with (the subscription's URL after the change): both only
/// for `http(s)` URLs, TLS settings only for `https`, an `Authorization`
/// custom header not beside `auth`, and an OAuth2 token URL the SSRF
/// policy admits.
pub(super) fn validate_endpoint_auth(
    guard: &crate::ssrf::TargetGuard,
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    auth: Option<&crate::endpoint_auth::EndpointAuth>,
    tls: Option<&crate::endpoint_auth::ClientTls>,
) -> Result<(), EngineError> {
    if let Some(auth) = auth {
        if is_kafka_url(url) {
            return Err(EngineError::invalid(
                "auth",
                "auth applies to http(s) endpoints; a kafka:// destination authenticates with its `kafka` settings",
            ));
        }
        auth.validate()
            .map_err(|e| EngineError::invalid("auth", e))?;
        if headers
            .keys()
            .any(|h| h.eq_ignore_ascii_case("authorization"))
        {
            return Err(EngineError::invalid(
                "auth",
                "the custom header \"Authorization\" and auth exclude each other: remove the header",
            ));
        }
        if let crate::endpoint_auth::EndpointAuth::Oauth2 { token_url, .. } = auth {
            guard
                .check_url(token_url)
                .map_err(|e| EngineError::invalid("auth", format!("token_url: {e}")))?;
        }
    }
    if let Some(tls) = tls {
        let https = url
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        if !https {
            return Err(EngineError::invalid(
                "tls",
                "tls settings apply to https:// endpoints only",
            ));
        }
        tls.validate().map_err(|e| EngineError::invalid("tls", e))?;
    }
    Ok(())
}
