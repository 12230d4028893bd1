//! The one place a subscription becomes a stored body and back, for every
//! store: its signing secrets are typed fields that serde seals with the
//! [`SecretCipher`] on the way in and opens on the way out (see
//! [`crate::sealing`]), so no store ever writes a plaintext secret and
//! nothing looks for secrets by field name. Each secret is bound (GCM
//! associated data) to its tenant and subscription id.
//!
//! Secrets are sealed under their tenant's own key ([`TenantKeys`]), which
//! the store must have made or read before it encodes a subscription of
//! that tenant (`encode` refuses otherwise); deleting that key
//! crypto-shreds every copy of the tenant's secrets.
//!
//! Bodies written before encryption existed hold `whsec_…` plaintext; they
//! still load, and [`SubscriptionCodec::reseal`] (run by each store when it
//! opens) rewrites them — and values sealed under the master key or an
//! older key — under the tenant's key.

use serde::Deserialize;

use super::StoreError;
use crate::{
    encryption::SecretCipher, model::WebhookSubscription, sealing, tenant_keys::TenantKeys,
};

/// Encodes and decodes stored subscription bodies, sealing their secrets.
#[derive(Debug, Clone)]
pub struct SubscriptionCodec {
    keys: TenantKeys,
}

/// The associated data binding a sealed secret to its subscription.
fn aad(tenant_id: &str, id: &str) -> Vec<u8> {
    format!("herald/subscription/{tenant_id}/{id}").into_bytes()
}

/// Whose body it is: read first, as the secrets are bound to it.
#[derive(Deserialize)]
struct Owner {
    id: String,
    tenant_id: String,
}

impl SubscriptionCodec {
    /// A codec whose tenant keys are wrapped by the master `cipher`.
    pub fn new(cipher: SecretCipher) -> Self {
        Self {
            keys: TenantKeys::new(cipher),
        }
    }

    /// The master cipher (it wraps the tenant keys).
    pub fn cipher(&self) -> &SecretCipher {
        self.keys.master()
    }

    /// The tenant keys this codec seals with.
    pub fn keys(&self) -> &TenantKeys {
        &self.keys
    }

    /// The stored body of `sub`, its secrets sealed under its tenant's key.
    /// Refused when that key is not known yet: the store makes it first.
    pub fn encode(&self, sub: &WebhookSubscription) -> Result<String, StoreError> {
        if !self.keys.knows(&sub.tenant_id) {
            return Err(StoreError::Secrets(format!(
                "no key for tenant {} yet: its secrets are sealed only under its own key",
                sub.tenant_id
            )));
        }
        let cipher = self.keys.cipher(&sub.tenant_id);
        let (body, _) = sealing::within(&cipher, aad(&sub.tenant_id, &sub.id), || {
            serde_json::to_string(sub)
        });
        body.map_err(corrupt)
    }

    /// The tenant a stored body belongs to.
    pub fn owner(raw: &str) -> Result<String, StoreError> {
        serde_json::from_str::<Owner>(raw)
            .map(|o| o.tenant_id)
            .map_err(|e| {
                StoreError::Corrupt(format!(
                    "subscription body without its id and tenant: {}",
                    redact_whsec(&e.to_string())
                ))
            })
    }

    /// Decodes a stored body, opening its secrets (plaintext ones from
    /// before encryption are accepted).
    pub fn decode(&self, raw: &str) -> Result<WebhookSubscription, StoreError> {
        let (sub, _) = self.decode_checked(raw)?;
        Ok(sub)
    }

    /// Decodes a stored body; also says whether any secret in it is stale
    /// (plaintext, or sealed under a key other than its tenant's current one).
    pub fn decode_checked(&self, raw: &str) -> Result<(WebhookSubscription, bool), StoreError> {
        let owner: Owner = serde_json::from_str(raw).map_err(|e| {
            StoreError::Corrupt(format!(
                "subscription body without its id and tenant: {}",
                redact_whsec(&e.to_string())
            ))
        })?;
        let cipher = self.keys.cipher(&owner.tenant_id);
        let (sub, report) = sealing::within(&cipher, aad(&owner.tenant_id, &owner.id), || {
            serde_json::from_str::<WebhookSubscription>(raw)
        });
        let id = &owner.id;
        match (sub, report.failure) {
            (Ok(sub), _) => Ok((sub, report.stale)),
            (Err(_), Some(e)) => Err(StoreError::Secrets(format!(
                "cannot decrypt the signing secret of subscription {id}: {e}"
            ))),
            // serde's message may quote the value: never let it carry a secret.
            (Err(e), None) => Err(StoreError::Corrupt(format!(
                "subscription {id} does not decode: {}",
                redact_whsec(&e.to_string())
            ))),
        }
    }

    /// The body again with every secret sealed under the current key, when
    /// any of its secrets is stale; `None` when it is current.
    pub fn reseal(&self, raw: &str) -> Result<Option<String>, StoreError> {
        let (sub, stale) = self.decode_checked(raw)?;
        if stale {
            self.encode(&sub).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(redact_whsec(&e.to_string()))
}

/// `text` with anything that looks like a `whsec_` secret or a `whsk_`
/// private key cut out.
fn redact_whsec(text: &str) -> String {
    ["whsec_", "whsk_"]
        .into_iter()
        .fold(text.to_string(), |text, prefix| redact(&text, prefix))
}

fn redact(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at]);
        out.push_str(prefix);
        out.push_str("<redacted>");
        rest = rest[at + prefix.len()..].trim_start_matches(|c: char| {
            c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='
        });
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use time::OffsetDateTime;

    use super::*;
    use crate::{
        encryption::{EncryptionKey, KeyRing},
        model::{Ordering, SecretEntry, SubscriptionStatus},
        signing::SigningSecret,
    };

    fn sub(id: &str, secrets: &[&SigningSecret]) -> WebhookSubscription {
        let now = OffsetDateTime::now_utc();
        WebhookSubscription {
            id: id.into(),
            tenant_id: "acme".into(),
            url: "https://example.com/hook".into(),
            event_types: vec!["order.*".into()],
            description: None,
            status: SubscriptionStatus::Active,
            disabled_reason: None,
            secrets: secrets
                .iter()
                .enumerate()
                .map(|(i, s)| SecretEntry {
                    secret: (*s).clone(),
                    expires_at: (i > 0).then_some(now),
                })
                .collect(),
            signature: Default::default(),
            signing_keys: Vec::new(),
            headers: BTreeMap::new(),
            rate_limit: None,
            ordering: Ordering::Unordered,
            payload: Default::default(),
            max_in_flight: None,
            timeout_seconds: None,
            filter: None,
            kafka: None,
            auth: None,
            tls: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// A codec that knows tenant `acme`'s key, wrapped by `master`.
    fn codec_with(master: SecretCipher) -> SubscriptionCodec {
        let codec = SubscriptionCodec::new(master);
        let wrapped = codec.keys().wrap_new("acme");
        codec.keys().learn("acme", &wrapped).unwrap();
        codec
    }

    fn base64_part(s: &SigningSecret) -> String {
        s.to_whsec().trim_start_matches("whsec_").to_string()
    }

    #[test]
    fn bodies_hold_no_plaintext_secret_and_decode_back() {
        let codec = codec_with(SecretCipher::random());
        let (current, previous) = (SigningSecret::generate(), SigningSecret::generate());
        let s = sub("sub_1", &[&current, &previous]);
        let body = codec.encode(&s).unwrap();
        for secret in [&current, &previous] {
            assert!(!body.contains(&base64_part(secret)), "{body}");
        }
        assert!(!body.contains("whsec_"), "{body}");
        assert_eq!(body.matches("enc:v1:").count(), 2, "{body}");
        let (back, stale) = codec.decode_checked(&body).unwrap();
        assert_eq!(back, s);
        assert!(!stale);
        assert_eq!(codec.reseal(&body).unwrap(), None);
    }

    #[test]
    fn a_kafka_password_is_sealed_and_decodes_back() {
        use crate::kafka_target::{KafkaPassword, KafkaSettings, SecurityProtocol};
        let codec = codec_with(SecretCipher::random());
        let mut s = sub("sub_1", &[&SigningSecret::generate()]);
        s.url = "kafka://broker.example.com:9092/orders".into();
        s.kafka = Some(KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: None,
            username: Some("herald".into()),
            password: Some(KafkaPassword::new("kafka-pass-5Jq7")),
            ca_pem: None,
        });
        let body = codec.encode(&s).unwrap();
        assert!(!body.contains("kafka-pass-5Jq7"), "{body}");
        assert_eq!(body.matches("enc:v1:").count(), 2, "{body}");
        let (back, stale) = codec.decode_checked(&body).unwrap();
        assert_eq!(back, s);
        assert!(!stale);
    }

    #[test]
    fn ed25519_keys_are_sealed_too_and_old_bodies_default_to_hmac() {
        use crate::{
            ed25519::SigningKey,
            model::{KeyEntry, SignatureScheme},
        };
        let codec = codec_with(SecretCipher::random());
        let mut s = sub("sub_1", &[&SigningSecret::generate()]);
        let (current, previous) = (SigningKey::generate(), SigningKey::generate());
        s.signature = SignatureScheme::Both;
        s.signing_keys = vec![
            KeyEntry {
                key: current.clone(),
                expires_at: None,
            },
            KeyEntry {
                key: previous.clone(),
                expires_at: Some(s.created_at),
            },
        ];
        let body = codec.encode(&s).unwrap();
        for key in [&current, &previous] {
            let whsk = key.to_whsk();
            assert!(!body.contains(whsk.trim_start_matches("whsk_")), "{body}");
        }
        assert_eq!(body.matches("enc:v1:").count(), 3, "{body}");
        assert!(body.contains(r#""signature":"both""#), "{body}");
        assert_eq!(codec.decode(&body).unwrap(), s);
        let printed = format!("{s:?}");
        assert!(!printed.contains(current.to_whsk().trim_start_matches("whsk_")));

        // A body from before Ed25519: no scheme, no keys.
        let old = codec
            .encode(&sub("sub_2", &[&SigningSecret::generate()]))
            .unwrap();
        let old = old.replace(r#","signature":"hmac""#, "");
        assert!(!old.contains("signature"), "{old}");
        let back = codec.decode(&old).unwrap();
        assert_eq!(back.signature, SignatureScheme::Hmac);
        assert!(back.signing_keys.is_empty());
    }

    #[test]
    fn a_subscription_never_prints_its_secrets() {
        let secret = SigningSecret::generate();
        let s = sub("sub_1", &[&secret]);
        let printed = format!("{s:?} {s:#?}");
        assert!(!printed.contains(&base64_part(&secret)), "{printed}");
        assert!(printed.contains("SigningSecret(<redacted>)"), "{printed}");
    }

    #[test]
    fn a_sealed_body_decodes_only_through_the_codec() {
        let codec = codec_with(SecretCipher::random());
        let body = codec
            .encode(&sub("sub_1", &[&SigningSecret::generate()]))
            .unwrap();
        let err = serde_json::from_str::<WebhookSubscription>(&body)
            .expect_err("no secret without the key")
            .to_string();
        assert!(err.contains("through the store's codec"), "{err}");
        let err = codec
            .decode("{\"url\": \"https://example.com\"}")
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn legacy_plaintext_bodies_load_and_are_resealed() {
        let codec = codec_with(SecretCipher::random());
        let secret = SigningSecret::generate();
        let s = sub("sub_1", &[&secret]);
        let legacy = serde_json::to_string(&s).unwrap();
        assert!(legacy.contains(&secret.to_whsec()));
        let (back, stale) = codec.decode_checked(&legacy).unwrap();
        assert_eq!(back, s);
        assert!(stale);
        let resealed = codec.reseal(&legacy).unwrap().expect("resealed");
        assert!(!resealed.contains(&base64_part(&secret)));
        assert_eq!(codec.decode(&resealed).unwrap(), s);
    }

    #[test]
    fn wrong_key_or_moved_value_fails_with_the_subscription_and_keys_named() {
        let codec = codec_with(SecretCipher::random());
        let secret = SigningSecret::generate();
        let body = codec.encode(&sub("sub_1", &[&secret])).unwrap();
        let other = codec_with(SecretCipher::random());
        let err = other.decode(&body).unwrap_err().to_string();
        assert!(err.contains("sub_1"), "{err}");
        let tenant_key = codec.keys().cipher("acme");
        assert!(err.contains(tenant_key.ring().primary().id()), "{err}");
        assert!(!err.contains(&base64_part(&secret)), "{err}");
        // The sealed value moved into another subscription's body.
        let moved = body.replace("\"sub_1\"", "\"sub_2\"");
        let err = codec.decode(&moved).unwrap_err().to_string();
        assert!(err.contains("does not authenticate"), "{err}");
    }

    #[test]
    fn secrets_sealed_under_the_master_key_move_to_the_tenant_key() {
        let master = SecretCipher::new(KeyRing::single(EncryptionKey::generate()), "t");
        let s = sub("sub_1", &[&SigningSecret::generate()]);
        // As sealed before tenant keys existed: under the master key.
        let before = SubscriptionCodec::new(master.clone());
        let (body, _) =
            sealing::within(&master, aad("acme", "sub_1"), || serde_json::to_string(&s));
        let body = body.unwrap();
        assert_eq!(before.decode(&body).unwrap(), s);
        assert!(
            matches!(before.encode(&s), Err(StoreError::Secrets(_))),
            "no sealing before the tenant key is known"
        );
        let after = codec_with(master.clone());
        let resealed = after.reseal(&body).unwrap().expect("stale: the master key");
        let tenant_key = after.keys().cipher("acme");
        assert!(resealed.contains(&format!("enc:v1:{}:", tenant_key.ring().primary().id())));
        assert_eq!(after.decode(&resealed).unwrap(), s);
        // Without the tenant key (deleted), the master key opens nothing.
        after.keys().forget("acme");
        assert!(matches!(
            after.decode(&resealed),
            Err(StoreError::Secrets(_))
        ));
    }

    #[test]
    fn master_key_rotation_rewraps_tenant_keys_and_keeps_secrets_sealed() {
        let old = EncryptionKey::generate();
        let new = EncryptionKey::generate();
        let before = SubscriptionCodec::new(SecretCipher::new(KeyRing::single(old.clone()), "t"));
        let wrapped = before.keys().wrap_new("acme");
        before.keys().learn("acme", &wrapped).unwrap();
        let s = sub("sub_1", &[&SigningSecret::generate()]);
        let body = before.encode(&s).unwrap();
        let ring = KeyRing::single(new.clone()).with_fallback(old);
        let after = SubscriptionCodec::new(SecretCipher::new(ring, "t"));
        let rewrapped = after
            .keys()
            .learn("acme", &wrapped)
            .unwrap()
            .expect("rewrapped");
        assert_eq!(
            after.reseal(&body).unwrap(),
            None,
            "still under the tenant key"
        );
        let only_new = SubscriptionCodec::new(SecretCipher::new(KeyRing::single(new), "t"));
        assert!(only_new.keys().learn("acme", &wrapped).is_err());
        only_new.keys().learn("acme", &rewrapped).unwrap();
        assert_eq!(only_new.decode(&body).unwrap(), s);
    }

    #[test]
    fn decode_errors_never_quote_a_secret() {
        assert_eq!(
            redact_whsec("invalid value: string \"whsec_AAAA+/==\", expected x whsec_"),
            "invalid value: string \"whsec_<redacted>\", expected x whsec_<redacted>"
        );
        assert_eq!(
            redact_whsec("key whsk_AB+/== end"),
            "key whsk_<redacted> end"
        );
    }

    fn files_contain(dir: &std::path::Path, needle: &str) -> Vec<String> {
        let mut hits = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // The -wal and -shm files come and go as connections close.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path.display().to_string());
            }
        }
        hits
    }

    #[tokio::test]
    async fn embedded_store_reseals_legacy_plaintext_rows_and_leaves_no_copy_in_its_files() {
        use crate::store::{embedded::EmbeddedStore, SubscriptionStore};

        let dir = tempfile::tempdir().unwrap();
        let cipher = SecretCipher::random();
        let (current, previous) = (SigningSecret::generate(), SigningSecret::generate());
        let s = sub("sub_1", &[&current, &previous]);
        {
            let store = EmbeddedStore::open(dir.path(), cipher.clone()).unwrap();
            store.create_subscription(&s).await.unwrap();
        }
        for secret in [&current, &previous] {
            assert!(files_contain(dir.path(), &base64_part(secret)).is_empty());
        }
        // A row as written before encryption existed: the secrets in plaintext.
        {
            let conn = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn.execute(
                "UPDATE subscriptions SET body = ?1 WHERE id = 'sub_1'",
                [serde_json::to_string(&s).unwrap()],
            )
            .unwrap();
        }
        assert!(!files_contain(dir.path(), &base64_part(&current)).is_empty());

        let store = EmbeddedStore::open(dir.path(), cipher.clone()).unwrap();
        assert_eq!(
            store.get_subscription("acme", "sub_1").await.unwrap(),
            Some(s.clone())
        );
        for secret in [&current, &previous] {
            let hits = files_contain(dir.path(), &base64_part(secret));
            assert!(hits.is_empty(), "plaintext left in {hits:?}");
        }
        drop(store);

        // Another key cannot open it, and says which key it needs.
        let err = EmbeddedStore::open(dir.path(), SecretCipher::random())
            .err()
            .expect("a wrong key fails the open")
            .to_string();
        assert!(err.contains(cipher.ring().primary().id()), "{err}");
        assert!(err.contains("tenant acme"), "{err}");
    }
}
