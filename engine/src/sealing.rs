//! How a [`SigningSecret`](crate::signing::SigningSecret) is written at rest: serde itself seals it.
//!
//! A subscription's secrets are typed fields (`#[serde(with =
//! "crate::sealing::secret")]`), so nothing walks a JSON body looking for
//! them by name. Inside [`within`] — which the store's codec opens around
//! every subscription it encodes or decodes — a secret serializes as the
//! sealed `enc:v1:…` form of [`SecretCipher::seal`], bound to its
//! subscription, and deserializes by [`SecretCipher::open`] (a legacy
//! plaintext `whsec_…` or a value under an older key opens too, and is
//! reported stale so the store seals it again).
//!
//! Ed25519 private keys ([`crate::ed25519::SigningKey`], `whsk_…`) are
//! sealed the same way (`#[serde(with = "crate::sealing::signing_key")]`).
//!
//! Outside a scope a secret serializes as `whsec_…` (in-memory copies and
//! comparisons only: every store writes through the codec) and a sealed value
//! refuses to deserialize: it cannot turn into a secret without the key.
//!
//! The scope is per thread and serde is synchronous, so a scope covers
//! exactly the one `serde_json` call made inside it.

use std::cell::RefCell;

use crate::encryption::{OpenError, SecretCipher};

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

struct Scope {
    cipher: SecretCipher,
    aad: Vec<u8>,
    stale: bool,
    failure: Option<OpenError>,
}

/// What a sealing scope saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// A secret opened was plaintext or sealed under a key other than the
    /// sealing key: the body should be written again.
    pub stale: bool,
    /// Why a sealed secret did not open (the serde error then says only that).
    pub failure: Option<OpenError>,
}

/// Restores the enclosing scope, also when `f` panics.
struct Restore(Option<Scope>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// Runs `f` (one serde call) with signing secrets sealed and opened by
/// `cipher`, bound to `aad`.
pub fn within<T>(cipher: &SecretCipher, aad: Vec<u8>, f: impl FnOnce() -> T) -> (T, Report) {
    let scope = Scope {
        cipher: cipher.clone(),
        aad,
        stale: false,
        failure: None,
    };
    let restore = Restore(SCOPE.with(|s| s.borrow_mut().replace(scope)));
    let out = f();
    let ours = SCOPE.with(|s| s.borrow_mut().take());
    drop(restore);
    let report = ours.map_or_else(Report::default, |s| Report {
        stale: s.stale,
        failure: s.failure,
    });
    (out, report)
}

/// Seals `plain` inside a scope; outside one, returns it as it is.
fn seal(plain: &str) -> String {
    SCOPE
        .with(|scope| {
            scope
                .borrow()
                .as_ref()
                .map(|scope| scope.cipher.seal(plain, &scope.aad))
        })
        .unwrap_or_else(|| plain.to_string())
}

/// Opens a stored value inside a scope; outside one, only plaintext reads.
fn open<E: serde::de::Error>(stored: String) -> Result<String, E> {
    SCOPE.with(|scope| match scope.borrow_mut().as_mut() {
        Some(scope) => match scope.cipher.open(&stored, &scope.aad) {
            Ok(opened) => {
                scope.stale |= opened.stale;
                Ok(opened.plaintext)
            }
            Err(e) => {
                scope.failure = Some(e);
                Err(E::custom("a sealed signing secret does not open"))
            }
        },
        None if crate::encryption::SecretCipher::is_sealed(&stored) => Err(E::custom(
            "a sealed signing secret reads only through the store's codec",
        )),
        None => Ok(stored),
    })
}

/// The serde of a stored signing secret (`#[serde(with = "crate::sealing::secret")]`).
pub mod secret {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::signing::SigningSecret;

    /// Sealed inside a scope, `whsec_…` outside.
    pub fn serialize<S: Serializer>(s: &SigningSecret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&super::seal(&s.to_whsec()))
    }

    /// Opened inside a scope; outside, only a plaintext `whsec_…` reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SigningSecret, D::Error> {
        let plain = super::open::<D::Error>(String::deserialize(de)?)?;
        SigningSecret::parse(&plain).map_err(D::Error::custom)
    }
}

/// The serde of a stored Ed25519 private key
/// (`#[serde(with = "crate::sealing::signing_key")]`), sealed like a secret.
pub mod signing_key {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::ed25519::SigningKey;

    /// Sealed inside a scope, `whsk_…` outside.
    pub fn serialize<S: Serializer>(k: &SigningKey, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&super::seal(&k.to_whsk()))
    }

    /// Opened inside a scope; outside, only a plaintext `whsk_…` reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SigningKey, D::Error> {
        let plain = super::open::<D::Error>(String::deserialize(de)?)?;
        SigningKey::parse(&plain).map_err(D::Error::custom)
    }
}

/// The serde of any other stored credential kept as text, such as a Kafka
/// destination's SASL password (`#[serde(with = "crate::sealing::text")]`),
/// sealed like a secret.
pub mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Sealed inside a scope, plain outside.
    pub fn serialize<S: Serializer>(s: &str, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&super::seal(s))
    }

    /// Opened inside a scope; outside, only a plaintext value reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
        super::open::<D::Error>(String::deserialize(de)?)
    }
}

/// A credential kept as text (a Kafka SASL password, an endpoint's bearer
/// token or OAuth2 client secret, a client certificate's private key):
/// sealed at rest like a signing secret ([`text`]), `Debug` redacted, never
/// shown by the API.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SealedText(#[serde(with = "text")] String);

impl SealedText {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the request or client that uses it only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SealedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedText(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encryption::SEALED_PREFIX, signing::SigningSecret};

    /// A secret that serializes and deserializes alone.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Alone(#[serde(with = "secret")] SigningSecret);

    #[test]
    fn a_secret_is_sealed_only_inside_a_scope_and_opens_only_inside_one() {
        let cipher = SecretCipher::random();
        let secret = SigningSecret::generate();
        let (sealed, report) = within(&cipher, b"sub_1".to_vec(), || {
            serde_json::to_string(&Alone(secret.clone())).unwrap()
        });
        assert_eq!(report, Report::default());
        assert!(
            sealed.starts_with(&format!("\"{SEALED_PREFIX}")),
            "{sealed}"
        );
        // The scope ended: outside it the secret is plain, and the sealed form does not read.
        let plain = serde_json::to_string(&Alone(secret.clone())).unwrap();
        assert_eq!(plain, format!("\"{}\"", secret.to_whsec()));
        let err = serde_json::from_str::<Alone>(&sealed)
            .err()
            .expect("no secret without the key");
        assert!(
            err.to_string().contains("through the store's codec"),
            "{err}"
        );

        let (opened, report) = within(&cipher, b"sub_1".to_vec(), || {
            serde_json::from_str::<Alone>(&sealed).unwrap()
        });
        assert!(opened.0 == secret);
        assert!(!report.stale);
        let (legacy, report) = within(&cipher, b"sub_1".to_vec(), || {
            serde_json::from_str::<Alone>(&plain).unwrap()
        });
        assert!(legacy.0 == secret);
        assert!(report.stale, "plaintext is stale");
    }

    #[test]
    fn a_value_bound_elsewhere_fails_and_the_failure_is_reported() {
        let cipher = SecretCipher::random();
        let (sealed, _) = within(&cipher, b"sub_1".to_vec(), || {
            serde_json::to_string(&Alone(SigningSecret::generate())).unwrap()
        });
        let (result, report) = within(&cipher, b"sub_2".to_vec(), || {
            serde_json::from_str::<Alone>(&sealed)
        });
        assert!(result.is_err());
        assert!(matches!(report.failure, Some(OpenError::Tampered { .. })));
    }

    #[test]
    fn scopes_nest_and_end_even_when_the_call_panics() {
        let (outer, inner) = (SecretCipher::random(), SecretCipher::random());
        let secret = SigningSecret::generate();
        let (sealed, _) = within(&outer, b"a".to_vec(), || {
            let _ = within(&inner, b"b".to_vec(), || ());
            serde_json::to_string(&Alone(secret.clone())).unwrap()
        });
        assert!(
            sealed.contains(SEALED_PREFIX),
            "the outer scope was restored after the inner one: {sealed}"
        );
        let (opened, _) = within(&outer, b"a".to_vec(), || {
            serde_json::from_str::<Alone>(&sealed)
        });
        assert!(opened.is_ok(), "sealed under the outer cipher");
        let panicked = std::panic::catch_unwind(|| {
            within(&outer, b"a".to_vec(), || panic!("inside the scope"))
        });
        assert!(panicked.is_err());
        let plain = serde_json::to_string(&Alone(secret.clone())).unwrap();
        assert!(plain.contains("whsec_"), "no scope is left behind: {plain}");
    }
}
