//! Standard Webhooks asymmetric signatures (`v1a`, Ed25519).
//!
//! A subscription that asks for `"signature": "ed25519"` (or `"both"`) is
//! signed with an Ed25519 key: the signature entry is
//! `v1a,<base64 Ed25519(key, "{id}.{timestamp}.{body}")>`, the same signed
//! content as HMAC's `v1`. Herald keeps the private key (`whsk_<base64 of the
//! 32-byte seed>`, sealed at rest like HMAC secrets); receivers get only the
//! public key (`whpk_<base64 of the 32-byte key>`), and can fetch it as a JWK
//! (OKP / Ed25519, RFC 8037) whose `kid` is its RFC 7638 thumbprint.
//!
//! Guarantees:
//! - A [`SigningKey`] never prints its private half: `Debug` shows only its
//!   public key, and there is no `Display`. The only way to get it out is
//!   [`SigningKey::to_whsk`].
//! - [`verify`] ignores malformed and non-`v1a` entries and never panics.
//!   It checks the signature only: rejecting stale timestamps is the caller's job.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signer, Verifier};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of a serialised private key.
pub const PRIVATE_PREFIX: &str = "whsk_";
/// Prefix of a serialised public key.
pub const PUBLIC_PREFIX: &str = "whpk_";
/// Version tag of an Ed25519 signature entry.
const SIGNATURE_VERSION: &str = "v1a,";

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string does not start with the expected prefix.
    #[error("key must start with \"{0}\"")]
    MissingPrefix(&'static str),
    /// The part after the prefix is not standard (padded) base64.
    #[error("key is not valid base64 after its prefix: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Not 32 bytes (or, for a private key, a 64-byte seed and public key that match).
    #[error("an Ed25519 key is 32 bytes (a private key may also be 64: seed then public key), got {len} bytes")]
    Length {
        /// The length of the decoded key.
        len: usize,
    },
    /// The bytes are not a valid Ed25519 key.
    #[error("not a valid Ed25519 key")]
    Invalid,
}

/// An Ed25519 private key for signing deliveries.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

/// An Ed25519 public key, as receivers hold it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
}

impl SigningKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// Parses `whsk_<standard base64>` of the 32-byte seed (or of the
    /// 64-byte seed and public key, which must match).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let encoded = s
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(KeyError::MissingPrefix(PRIVATE_PREFIX))?;
        let bytes = STANDARD.decode(encoded)?;
        match bytes.len() {
            32 => {
                let seed: [u8; 32] = bytes[..].try_into().map_err(|_| KeyError::Invalid)?;
                Ok(Self {
                    key: ed25519_dalek::SigningKey::from_bytes(&seed),
                })
            }
            64 => {
                let pair: [u8; 64] = bytes[..].try_into().map_err(|_| KeyError::Invalid)?;
                ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
                    .map(|key| Self { key })
                    .map_err(|_| KeyError::Invalid)
            }
            len => Err(KeyError::Length { len }),
        }
    }

    /// The key as `whsk_<standard base64 of the seed>`.
    pub fn to_whsk(&self) -> String {
        format!("{PRIVATE_PREFIX}{}", STANDARD.encode(self.key.to_bytes()))
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// Signs one message: `v1a,<base64 Ed25519(key, "{msg_id}.{timestamp}.{body}")>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let signature = self.key.sign(&signed_content(msg_id, timestamp, body));
        format!(
            "{SIGNATURE_VERSION}{}",
            STANDARD.encode(signature.to_bytes())
        )
    }
}

/// The bytes both schemes sign: `{msg_id}.{timestamp}.{body}`.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

impl PublicKey {
    /// Parses `whpk_<standard base64 of the 32-byte key>`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let encoded = s
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or(KeyError::MissingPrefix(PUBLIC_PREFIX))?;
        let bytes = STANDARD.decode(encoded)?;
        let raw: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| KeyError::Length { len: bytes.len() })?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map(|key| Self { key })
            .map_err(|_| KeyError::Invalid)
    }

    /// The key as `whpk_<standard base64>`.
    pub fn to_whpk(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", STANDARD.encode(self.key.as_bytes()))
    }

    /// The JWK `x` member: base64url (no padding) of the raw key.
    pub fn jwk_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.as_bytes())
    }

    /// The RFC 7638 thumbprint of its JWK (base64url of SHA-256 over the
    /// required members in lexicographic order), used as the JWK `kid`.
    pub fn thumbprint(&self) -> String {
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, self.jwk_x());
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(<redacted>, {})", self.public_key().to_whpk())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_whpk())
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.key.to_bytes().ct_eq(&other.key.to_bytes()).into()
    }
}

impl Eq for SigningKey {}

/// Whether any `v1a,` entry of a space-separated `webhook-signature` header
/// is a valid Ed25519 signature of the message under `key`.
///
/// Entries of other versions, bad base64 or the wrong length are skipped.
/// The timestamp is not checked for freshness.
pub fn verify(key: &PublicKey, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let content = signed_content(msg_id, timestamp, body);
    header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix(SIGNATURE_VERSION))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .filter_map(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
        .any(|signature| key.key.verify(&content, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{self, SigningSecret};

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 §7.1, TEST 1: the key derivation from the seed, and the
        // signature of the empty message.
        let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
        let public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let seed: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&seed[i..i + 2], 16).unwrap())
            .collect();
        let key = SigningKey::parse(&format!("whsk_{}", STANDARD.encode(&seed))).unwrap();
        let hex: String = key
            .public_key()
            .key
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, public);
        let sig: String = key
            .key
            .sign(b"")
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sig,
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065\
             224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24\
             655141438e7a100b"
        );
    }

    #[test]
    fn sign_and_verify_and_reject() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let sig = key.sign("msg_1", 1_700_000_000, b"body");
        assert!(sig.starts_with("v1a,"));
        let public = key.public_key();
        assert!(verify(&public, "msg_1", 1_700_000_000, b"body", &sig));
        assert!(!verify(&public, "msg_1", 1_700_000_000, b"bodY", &sig));
        assert!(!verify(&public, "msg_2", 1_700_000_000, b"body", &sig));
        assert!(!verify(&public, "msg_1", 1_700_000_001, b"body", &sig));
        assert!(!verify(
            &other.public_key(),
            "msg_1",
            1_700_000_000,
            b"body",
            &sig
        ));
        // Mixed with HMAC entries, as in a "both" header.
        let secret = SigningSecret::generate();
        let header = format!("{} {sig}", secret.sign("msg_1", 1_700_000_000, b"body"));
        assert!(verify(&public, "msg_1", 1_700_000_000, b"body", &header));
        assert!(signing::verify(
            &secret,
            "msg_1",
            1_700_000_000,
            b"body",
            &header
        ));
        for bad in ["", "v1a,", "v1a,!!", "v1a,AAAA", "v1,AAAA v2,x", &sig[1..]] {
            assert!(!verify(&public, "msg_1", 1_700_000_000, b"body", bad));
        }
    }

    #[test]
    fn keys_round_trip_and_parse_errors() {
        let key = SigningKey::generate();
        assert_eq!(SigningKey::parse(&key.to_whsk()).unwrap(), key);
        let public = key.public_key();
        assert_eq!(PublicKey::parse(&public.to_whpk()).unwrap(), public);
        let mut pair = key.key.to_bytes().to_vec();
        pair.extend_from_slice(public.key.as_bytes());
        let long = format!("whsk_{}", STANDARD.encode(&pair));
        assert_eq!(SigningKey::parse(&long).unwrap(), key);
        pair[40] ^= 1;
        let mismatched = format!("whsk_{}", STANDARD.encode(&pair));
        assert_eq!(SigningKey::parse(&mismatched), Err(KeyError::Invalid));
        assert_eq!(
            SigningKey::parse("whsec_AAAA"),
            Err(KeyError::MissingPrefix("whsk_"))
        );
        assert!(matches!(
            SigningKey::parse("whsk_***"),
            Err(KeyError::Base64(_))
        ));
        assert_eq!(
            SigningKey::parse(&format!("whsk_{}", STANDARD.encode([1u8; 31]))),
            Err(KeyError::Length { len: 31 })
        );
        assert_eq!(
            PublicKey::parse(&format!("whpk_{}", STANDARD.encode([1u8; 33]))),
            Err(KeyError::Length { len: 33 })
        );
    }

    #[test]
    fn debug_is_redacted_and_thumbprint_is_stable() {
        let key = SigningKey::generate();
        let debug = format!("{key:?} {key:#?}");
        let seed = key.to_whsk();
        assert!(!debug.contains(seed.trim_start_matches("whsk_")), "{debug}");
        assert!(debug.contains("<redacted>"));
        // RFC 8037 §A.3: the thumbprint of the RFC 8032 TEST 1 public key.
        let public = PublicKey::parse("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").unwrap();
        assert_eq!(
            public.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert_eq!(
            public.jwk_x(),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
    }
}
