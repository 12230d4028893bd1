//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! Every delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! headers. The signature is `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//! so any Standard Webhooks library can verify Herald's deliveries.
//!
//! Guarantees:
//! - A [`SigningSecret`] always holds 24 to 64 key bytes and never prints them:
//!   its `Debug` output is `SigningSecret(<redacted>)`, and there is no `Display`.
//!   The only way to get the key out is [`SigningSecret::to_whsec`].
//! - During secret rotation [`signature_header`] signs with several secrets at once
//!   (space separated), so receivers holding either the old or the new secret verify.
//! - [`verify`] compares MACs in constant time and ignores malformed entries; it
//!   never panics on any header. It checks the signature only: rejecting stale
//!   timestamps (replay protection) is the caller's job.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a serialised secret: `whsec_<standard base64 of the key>`.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes a secret may hold.
pub const MIN_SECRET_LEN: usize = 24;
/// Most key bytes a secret may hold.
pub const MAX_SECRET_LEN: usize = 64;
/// Key bytes in a secret made by [`SigningSecret::generate`].
const GENERATED_SECRET_LEN: usize = 32;
/// Version tag of the signature scheme, the part before the comma.
const SIGNATURE_VERSION: &str = "v1,";

/// Why a secret string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The string does not start with `whsec_`.
    #[error("signing secret must start with \"{SECRET_PREFIX}\"")]
    MissingPrefix,
    /// The part after `whsec_` is not standard (padded) base64.
    #[error("signing secret is not valid base64 after \"{SECRET_PREFIX}\": {0}")]
    Base64(#[from] base64::DecodeError),
    /// The key has too few or too many bytes.
    #[error(
        "signing secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes long, got {len} bytes"
    )]
    Length {
        /// The length of the decoded key.
        len: usize,
    },
}

/// An HMAC key for signing deliveries: 24 to 64 raw bytes.
///
/// Equality is checked in constant time. `Debug` redacts the key.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    /// A new random secret of 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_LEN];
        OsRng.fill_bytes(&mut key);
        Self { key }
    }

    /// Parses `whsec_<standard base64>`, the form shown to tenants and stored.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let encoded = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        Self::from_bytes(&STANDARD.decode(encoded)?)
    }

    /// A secret from raw key bytes, which must be 24 to 64 bytes long.
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&key.len()) {
            return Err(SecretError::Length { len: key.len() });
        }
        Ok(Self { key: key.to_vec() })
    }

    /// The secret as `whsec_<standard base64>`; [`SigningSecret::parse`] reads it back.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// Signs one message: `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("{SIGNATURE_VERSION}{}", STANDARD.encode(tag))
    }

    /// The HMAC state after absorbing the signed content.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// What `Debug` output shows in place of a secret string: `<redacted>`
/// when there is one. For the `Debug` impls of types carrying a secret.
pub fn redacted<S>(secret: &Option<S>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        self.key.ct_eq(&other.key).into()
    }
}

impl Eq for SigningSecret {}

impl FromStr for SigningSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The `webhook-signature` header value: one signature per secret, space separated.
///
/// Pass the current secret and any not yet expired older ones while rotating.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SigningSecret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|secret| secret.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any `v1,` entry of a space-separated `webhook-signature` header is a valid
/// signature of the message under `secret`.
///
/// MACs are compared in constant time. Entries of other versions, bad base64 or the
/// wrong length are skipped. The timestamp is not checked for freshness.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let expected = secret.mac(msg_id, timestamp, body);
    header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(SIGNATURE_VERSION))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{SystemTime, UNIX_EPOCH};

    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn now() -> i64 {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        i64::try_from(secs).expect("timestamp fits i64")
    }

    fn headers(id: &str, ts: i64, signature: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            (standardwebhooks::HEADER_WEBHOOK_ID, id.to_owned()),
            (standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string()),
            (
                standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
                signature.to_owned(),
            ),
        ] {
            headers.insert(name, value.parse().expect("valid header value"));
        }
        headers
    }

    #[test]
    fn published_test_vector() {
        let secret = SigningSecret::parse(VECTOR_SECRET).expect("vector secret parses");
        assert_eq!(secret.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        assert!(verify(
            &secret,
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY,
            VECTOR_SIG
        ));
        assert_eq!(secret.to_whsec(), VECTOR_SECRET);
    }

    #[test]
    fn independent_library_verifies_our_header() {
        let ours = SigningSecret::generate();
        let other = SigningSecret::generate();
        let ts = now();
        let body = br#"{"type":"invoice.paid","data":{"id":"inv_1"}}"#;
        let header = signature_header([&other, &ours], "msg_1", ts, body);

        let webhook = standardwebhooks::Webhook::new(&ours.to_whsec()).expect("secret accepted");
        webhook
            .verify(body, &headers("msg_1", ts, &header))
            .expect("standardwebhooks verifies our signature");
        assert!(webhook
            .verify(b"tampered", &headers("msg_1", ts, &header))
            .is_err());

        // And the other way round: we verify what the library signs.
        let theirs = webhook.sign("msg_1", ts, body).expect("library signs");
        assert!(verify(&ours, "msg_1", ts, body, &theirs));
    }

    #[test]
    fn dual_signed_header_verifies_with_either_secret_only() {
        let (old, new, third) = (
            SigningSecret::generate(),
            SigningSecret::generate(),
            SigningSecret::generate(),
        );
        let header = signature_header([&new, &old], "msg_2", 1_700_000_000, b"body");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&old, "msg_2", 1_700_000_000, b"body", &header));
        assert!(verify(&new, "msg_2", 1_700_000_000, b"body", &header));
        assert!(!verify(&third, "msg_2", 1_700_000_000, b"body", &header));
        assert!(!verify(&new, "msg_2", 1_700_000_001, b"body", &header));
        assert!(!verify(&new, "msg_3", 1_700_000_000, b"body", &header));
        assert!(!verify(&new, "msg_2", 1_700_000_000, b"bodY", &header));
    }

    #[test]
    fn malformed_headers_are_ignored() {
        let secret = SigningSecret::parse(VECTOR_SECRET).expect("vector secret parses");
        let good_tag = VECTOR_SIG.trim_start_matches(SIGNATURE_VERSION);
        for header in [
            "",
            " ",
            "v1,",
            "v1",
            ",,,",
            "v1,!!!not-base64!!!",
            "v1,AAAA",
            &format!("v2,{good_tag}"),
            &format!("v1a,{good_tag}"),
            &format!("v1,{}", &good_tag[..good_tag.len() - 4]),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
        ] {
            assert!(
                !verify(&secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY, header),
                "{header:?} must not verify"
            );
        }
        let mixed = format!("v2,xyz v1,@@  {VECTOR_SIG} junk");
        assert!(verify(&secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY, &mixed));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert!(matches!(
            SigningSecret::parse("whsec_not base64!"),
            Err(SecretError::Base64(_))
        ));
        let short = format!("whsec_{}", STANDARD.encode([7u8; 23]));
        assert_eq!(
            SigningSecret::parse(&short),
            Err(SecretError::Length { len: 23 })
        );
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(
            SigningSecret::parse(&long),
            Err(SecretError::Length { len: 65 })
        );
        let message = SecretError::Length { len: 23 }.to_string();
        assert!(message.contains("24 to 64 bytes"), "{message}");
        for len in [MIN_SECRET_LEN, MAX_SECRET_LEN] {
            let ok = format!("whsec_{}", STANDARD.encode(vec![7u8; len]));
            assert!(SigningSecret::parse(&ok).is_ok());
        }
    }

    #[test]
    fn generate_and_round_trip() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        assert_ne!(a, b);
        let parsed: SigningSecret = a.to_whsec().parse().expect("round trip");
        assert_eq!(parsed, a);
        assert_eq!(parsed.clone(), a);
    }

    #[test]
    fn debug_is_redacted() {
        let secret = SigningSecret::parse(VECTOR_SECRET).expect("vector secret parses");
        let debug = format!("{secret:?}");
        assert_eq!(debug, "SigningSecret(<redacted>)");
        assert!(!debug.contains("MfKQ9r8G"));
        assert_eq!(format!("{secret:#?}"), "SigningSecret(<redacted>)");
    }
}
