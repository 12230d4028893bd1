//! The `kafka` settings of a subscription whose `url` is `kafka://…`: how
//! they are written (with the password) and how they are shown (never with
//! it).

use herald_engine::kafka_target::{KafkaPassword, KafkaSettings, SaslMechanism, SecurityProtocol};
use serde::{Deserialize, Serialize};

/// Connection settings of a Kafka destination. `Debug` redacts the password.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettingsInput {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `PLAIN` (default), `SCRAM-SHA-256` or `SCRAM-SHA-512`; SASL protocols only.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username (SASL protocols only, then required).
    pub username: Option<String>,
    /// SASL password (SASL protocols only, then required): sealed at rest,
    /// never shown again.
    #[schema(write_only)]
    pub password: Option<String>,
    /// PEM certificates of the authorities to trust for the brokers' TLS
    /// certificates (`ssl` and `sasl_ssl` only; default: the system's).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for KafkaSettingsInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettingsInput")
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field(
                "password",
                &herald_engine::signing::redacted(&self.password),
            )
            .finish()
    }
}

impl From<KafkaSettingsInput> for KafkaSettings {
    fn from(i: KafkaSettingsInput) -> Self {
        Self {
            security_protocol: i.security_protocol,
            sasl_mechanism: i.sasl_mechanism,
            username: i.username,
            password: i.password.map(KafkaPassword::new),
            ca_pem: i.ca_pem,
        }
    }
}

/// A Kafka destination's settings as the API shows them: the password is
/// never shown, only whether one is set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KafkaSettingsView {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// The SASL mechanism, for SASL protocols.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username.
    pub username: Option<String>,
    /// Whether a password is stored (it is never returned).
    pub password_set: bool,
    /// The authorities trusted for the brokers' certificates, if set.
    pub ca_pem: Option<String>,
}

impl From<KafkaSettings> for KafkaSettingsView {
    fn from(s: KafkaSettings) -> Self {
        Self {
            security_protocol: s.security_protocol,
            sasl_mechanism: s.sasl_mechanism,
            username: s.username,
            password_set: s.password.is_some(),
            ca_pem: s.ca_pem,
        }
    }
}
