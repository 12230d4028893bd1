//! Kafka destinations: a subscription whose `url` is
//! `kafka://host:port[,host:port…]/topic` receives each event as a Kafka
//! record instead of an HTTP POST (the producing side is
//! `delivery::kafka_sink`, behind the `kafka` feature).
//!
//! This module is the pure part: parsing and checking the URL, the
//! connection settings stored on the subscription, and the SSRF check of the
//! broker addresses written in the URL. The SASL password is a sealed field
//! ([`crate::sealing::text`]): sealed at rest like a signing secret, and its
//! `Debug` is redacted.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::ssrf::{SsrfError, TargetGuard};

/// The scheme prefix of a Kafka destination.
pub const SCHEME: &str = "kafka://";

/// Longest topic name Kafka accepts.
const MAX_TOPIC: usize = 249;
/// Most brokers listed in one URL.
const MAX_BROKERS: usize = 16;
/// Longest username or password.
const MAX_CREDENTIAL: usize = 512;
/// Longest CA bundle (PEM).
const MAX_CA_PEM: usize = 64 * 1024;

/// Whether `url` names a Kafka destination (its scheme is `kafka`, in any case).
pub fn is_kafka_url(url: &str) -> bool {
    url.get(..SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
}

/// One bootstrap broker of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Broker {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Broker {
    /// The IP address, when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` as librdkafka reads it (`[v6]:port` for IPv6).
    pub fn address(&self) -> String {
        match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A parsed `kafka://` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// The bootstrap brokers, as written.
    pub brokers: Vec<Broker>,
    /// The topic records are produced to.
    pub topic: String,
}

impl KafkaTarget {
    /// Parses `kafka://host:port[,host:port…]/topic`. Every broker needs a
    /// port; the topic is 1–249 of `a-z A-Z 0-9 . _ -` (not `.` or `..`);
    /// no credentials, query or fragment (credentials go in the `kafka`
    /// settings, where they are sealed).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !is_kafka_url(raw) {
            return Err("a Kafka destination starts with kafka://".into());
        }
        let rest = &raw[SCHEME.len()..];
        let (authority, topic) = rest
            .split_once('/')
            .ok_or("the URL names no topic: kafka://host:port/topic")?;
        if authority.contains('@') {
            return Err(
                "the URL must not carry credentials; put them in the `kafka` settings".into(),
            );
        }
        if authority.is_empty() {
            return Err("the URL names no broker: kafka://host:port/topic".into());
        }
        let brokers = authority
            .split(',')
            .map(parse_broker)
            .collect::<Result<Vec<_>, _>>()?;
        if brokers.len() > MAX_BROKERS {
            return Err(format!("at most {MAX_BROKERS} brokers"));
        }
        validate_topic(topic)?;
        Ok(Self {
            brokers,
            topic: topic.to_string(),
        })
    }

    /// The `bootstrap.servers` list.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(Broker::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The SSRF check of the addresses written in the URL: IP literals go
    /// through [`TargetGuard::check_ip`], `localhost` names need loopback
    /// allowed. Other names are checked after resolution by the caller.
    pub fn check(&self, guard: &TargetGuard) -> Result<(), SsrfError> {
        for broker in &self.brokers {
            match broker.ip() {
                Some(ip) => guard.check_ip(ip)?,
                None => {
                    let name = broker.host.trim_end_matches('.').to_ascii_lowercase();
                    if name == "localhost" || name.ends_with(".localhost") {
                        guard.check_ip(Ipv4Addr::LOCALHOST.into())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The brokers written as host names (they need a DNS check).
    pub fn named_brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.iter().filter(|b| b.ip().is_none())
    }
}

fn parse_broker(raw: &str) -> Result<Broker, String> {
    let (host, port) = if let Some(v6) = raw.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("broker {raw:?}: expected [ipv6]:port"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("broker {raw:?}: not an IPv6 address"));
        }
        (host, port)
    } else {
        raw.rsplit_once(':')
            .ok_or_else(|| format!("broker {raw:?}: expected host:port"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("broker {raw:?}: the port must be 1 to 65535"))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !host_ok {
        return Err(format!("broker {raw:?}: invalid host"));
    }
    Ok(Broker {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the URL names no topic: kafka://host:port/topic".into());
    }
    if topic.len() > MAX_TOPIC {
        return Err(format!("the topic is at most {MAX_TOPIC} characters"));
    }
    if topic == "." || topic == ".." {
        return Err("the topic cannot be \".\" or \"..\"".into());
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "invalid topic {topic:?}: use only a-z, A-Z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// How Herald connects to a destination's brokers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether it authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// Whether it connects with TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// Checks a CA bundle: PEM, at most [`MAX_CA_PEM`] bytes, holding at least
/// one certificate and nothing that fails to decode.
pub(crate) fn check_ca_pem(pem: &str) -> Result<(), String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    if pem.len() > MAX_CA_PEM {
        return Err(format!("ca_pem is longer than {MAX_CA_PEM} bytes"));
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_pem is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("ca_pem holds no certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} of ca_pem cannot be read: {e}", n + 1))?;
    }
    Ok(())
}

/// The SASL mechanism.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// Username and password in the clear (use with `sasl_ssl`).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A SASL password: sealed at rest, `Debug` redacted, never shown by the API.
pub type KafkaPassword = crate::sealing::SealedText;

/// A Kafka destination's connection settings, stored on the subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KafkaSettings {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// The SASL mechanism (SASL protocols only; default `PLAIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// SASL password (sealed at rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<KafkaPassword>,
    /// PEM certificates of the authorities to trust for the brokers' TLS
    /// certificates (TLS protocols only; default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl KafkaSettings {
    /// Checks the settings hang together: SASL protocols need a username and
    /// a password, the others take neither.
    pub fn validate(&self) -> Result<(), String> {
        let sasl = self.security_protocol.sasl();
        let has_credentials = self.username.is_some() || self.password.is_some();
        if sasl && (self.username.is_none() || self.password.is_none()) {
            return Err(format!(
                "security_protocol {:?} needs a username and a password",
                self.security_protocol.as_str()
            ));
        }
        if !sasl && (has_credentials || self.sasl_mechanism.is_some()) {
            return Err(
                "username, password and sasl_mechanism need security_protocol \
                 \"sasl_plaintext\" or \"sasl_ssl\""
                    .into(),
            );
        }
        if let Some(pem) = &self.ca_pem {
            if !self.security_protocol.tls() {
                return Err("ca_pem needs security_protocol \"ssl\" or \"sasl_ssl\"".into());
            }
            check_ca_pem(pem)?;
        }
        let too_long = |s: &str| s.is_empty() || s.len() > MAX_CREDENTIAL;
        if self.username.as_deref().is_some_and(too_long)
            || self.password.as_ref().is_some_and(|p| too_long(p.expose()))
        {
            return Err(format!(
                "username and password are 1 to {MAX_CREDENTIAL} bytes"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_brokers_and_a_topic() {
        let t = KafkaTarget::parse("kafka://127.0.0.1:9092,Broker-2.example.com:19092/orders.v1")
            .unwrap();
        assert_eq!(t.topic, "orders.v1");
        assert_eq!(t.bootstrap(), "127.0.0.1:9092,broker-2.example.com:19092");
        assert_eq!(t.named_brokers().count(), 1);
        let v6 = KafkaTarget::parse("KAFKA://[::1]:9092/t").unwrap();
        assert_eq!(v6.bootstrap(), "[::1]:9092");
        assert!(is_kafka_url("Kafka://x:1/t"));
        assert!(!is_kafka_url("http://x/"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (raw, says) in [
            ("kafka://127.0.0.1:9092", "no topic"),
            ("kafka://127.0.0.1:9092/", "no topic"),
            ("kafka:///t", "no broker"),
            ("kafka://127.0.0.1/t", "host:port"),
            ("kafka://127.0.0.1:0/t", "port"),
            ("kafka://127.0.0.1:70000/t", "port"),
            ("kafka://127.0.0.1:x/t", "port"),
            ("kafka://u:p@127.0.0.1:9092/t", "credentials"),
            ("kafka://127.0.0.1:9092/a/b", "invalid topic"),
            ("kafka://127.0.0.1:9092/a b", "invalid topic"),
            ("kafka://127.0.0.1:9092/t?x=1", "invalid topic"),
            ("kafka://127.0.0.1:9092/..", "cannot be"),
            ("kafka://h!:1/t", "invalid host"),
            ("kafka://[zz]:1/t", "IPv6"),
        ] {
            let err = KafkaTarget::parse(raw).expect_err(raw);
            assert!(err.contains(says), "{raw}: {err}");
        }
        let long = format!("kafka://h:1/{}", "t".repeat(250));
        assert!(KafkaTarget::parse(&long).is_err());
    }

    #[test]
    fn broker_addresses_go_through_the_guard() {
        let open = TargetGuard::default();
        let loopback = TargetGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        for raw in [
            "kafka://127.0.0.1:9092/t",
            "kafka://8.8.8.8:9092,10.0.0.1:9092/t",
            "kafka://[::ffff:127.0.0.1]:9092/t",
            "kafka://localhost:9092/t",
        ] {
            let t = KafkaTarget::parse(raw).unwrap();
            assert!(t.check(&open).expect_err(raw).is_blocked(), "{raw}");
        }
        let t = KafkaTarget::parse("kafka://127.0.0.1:9092,localhost:9093/t").unwrap();
        assert_eq!(t.check(&loopback), Ok(()));
        let public = KafkaTarget::parse("kafka://8.8.8.8:9092,kafka.example.com:9092/t").unwrap();
        assert_eq!(public.check(&open), Ok(()));
    }

    #[test]
    fn settings_need_credentials_exactly_with_sasl() {
        let sasl = KafkaSettings {
            security_protocol: SecurityProtocol::SaslPlaintext,
            sasl_mechanism: Some(SaslMechanism::ScramSha256),
            username: Some("u".into()),
            password: Some(KafkaPassword::new("p")),
            ca_pem: None,
        };
        assert_eq!(sasl.validate(), Ok(()));
        let no_password = KafkaSettings {
            password: None,
            ..sasl.clone()
        };
        assert!(no_password.validate().is_err());
        let plain_with_user = KafkaSettings {
            security_protocol: SecurityProtocol::Plaintext,
            ..sasl.clone()
        };
        assert!(plain_with_user.validate().is_err());
        assert_eq!(KafkaSettings::default().validate(), Ok(()));
        assert!(!format!("{sasl:?}").contains("\"p\""), "{sasl:?}");
    }

    /// A self-signed test authority (P-256, made with `openssl req -x509`).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBiDCCAS+gAwIBAgIUSekbnv2xy/RFBLgAAT/sII1+QpUwCgYIKoZIzj0EAwIw\nGTEXMBUGA1UEAwwOaGVyYWxkLXRlc3QtY2EwIBcNMjYxMjA1MDI0ODU2WhgPMjEy\nNjExMTEwMjQ4NTZaMBkxFzAVBgNVBAMMDmhlcmFsZC10ZXN0LWNhMFkwEwYHKoZI\nzj0CAQYIKoZIzj0DAQcDQgAE++uMxCiO02K78CMjLgjDYSMbjmKvOeG3NTvd5f8w\nOiSDXukouOZJPdumPlAzyDsHPFYvZS54+J/xUXWNp42XdKNTMFEwHQYDVR0OBBYE\nFKJnlN+s1k6jEsC3dL2pBHNxlnmQMB8GA1UdIwQYMBaAFKJnlN+s1k6jEsC3dL2p\nBHNxlnmQMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgPiXLB/ni\ngQ7rteH/U05p5PdKVKCkr+e4+leVXMQZW/ICIFmEsG44z/vCo/esJGZdO3Dd43BP\nwSqa7L05T2TnPIQ3\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_ca_bundle_is_checked_and_needs_tls() {
        let tls = KafkaSettings {
            security_protocol: SecurityProtocol::Ssl,
            ca_pem: Some(TEST_CA.into()),
            ..KafkaSettings::default()
        };
        assert_eq!(tls.validate(), Ok(()));
        let two = format!("{TEST_CA}{TEST_CA}");
        let bundle = KafkaSettings {
            ca_pem: Some(two),
            ..tls.clone()
        };
        assert_eq!(bundle.validate(), Ok(()));
        let plaintext = KafkaSettings {
            security_protocol: SecurityProtocol::Plaintext,
            ..tls.clone()
        };
        assert!(plaintext.validate().unwrap_err().contains("ssl"));
        for (bad, says) in [
            ("not a certificate", "no certificate"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "cannot be read",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
                "PEM",
            ),
        ] {
            let s = KafkaSettings {
                ca_pem: Some(bad.into()),
                ..tls.clone()
            };
            let err = s.validate().expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn settings_read_their_wire_names() {
        let s: KafkaSettings = serde_json::from_value(serde_json::json!({
            "security_protocol": "sasl_ssl", "sasl_mechanism": "SCRAM-SHA-512",
            "username": "u", "password": "p"
        }))
        .unwrap();
        assert_eq!(s.security_protocol, SecurityProtocol::SaslSsl);
        assert_eq!(s.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(s.password.as_ref().map(KafkaPassword::expose), Some("p"));
    }
}
