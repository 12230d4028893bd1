//! Per-tenant data keys, for crypto-shredding.
//!
//! Every secret of a tenant's subscriptions (signing secrets, Ed25519
//! private keys, endpoint credentials, Kafka passwords) is sealed under that
//! tenant's own random AES-256 key, not under the master key. The tenant key
//! is stored *wrapped* — sealed by the master [`SecretCipher`], bound to the
//! tenant id — apart from the subscriptions: a file of its own in embedded
//! mode, the `tenant_keys` table on the CQL store. Deleting a tenant deletes
//! its key, so every copy of its sealed secrets (a backup of the store, a
//! snapshot, a page SQLite freed without overwriting) no longer opens, with
//! or without the master key.
//!
//! [`TenantKeys`] is the in-memory side: the unwrapped keys a process has
//! learned, each as a cipher whose ring is the tenant key followed by the
//! master keys, so a secret sealed before tenant keys existed (under the
//! master key) still opens — reported stale, and sealed again under the
//! tenant key by the store. Persistence is the store's: it calls
//! [`TenantKeys::wrap_new`] to make a key, [`TenantKeys::learn`] with what
//! it stored or read, and [`TenantKeys::forget`] when it deletes one. A
//! store that several processes share may also give a
//! [`loader`](TenantKeys::set_loader), asked for a tenant's wrapped key when
//! this process does not know it (another process made it).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, RwLock},
};

use crate::encryption::{EncryptionKey, KeyRing, OpenError, SecretCipher};

/// The associated data binding a wrapped key to its tenant: a wrapped key
/// copied to another tenant's row does not open.
fn aad(tenant_id: &str) -> Vec<u8> {
    format!("herald/tenant-key/{tenant_id}").into_bytes()
}

/// Reads a tenant's wrapped key from where the store keeps it.
pub type Loader = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The tenant keys a process knows, unwrapped. Cheap to clone (shared).
#[derive(Clone)]
pub struct TenantKeys {
    master: SecretCipher,
    known: Arc<RwLock<HashMap<String, SecretCipher>>>,
    loader: Arc<OnceLock<Loader>>,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.known.read().map_or(0, |k| k.len());
        write!(f, "TenantKeys({n} tenants, master {:?})", self.master)
    }
}

impl TenantKeys {
    /// No tenant keys yet; `master` wraps them.
    pub fn new(master: SecretCipher) -> Self {
        Self {
            master,
            known: Arc::default(),
            loader: Arc::default(),
        }
    }

    /// Sets how a key this process does not know is read (once; later
    /// calls are ignored).
    pub fn set_loader(&self, loader: Loader) {
        let _ = self.loader.set(loader);
    }

    /// The master cipher, which wraps the tenant keys.
    pub fn master(&self) -> &SecretCipher {
        &self.master
    }

    /// A new random key for `tenant_id`, wrapped: what the store writes.
    /// Not known until the store [`learn`](Self::learn)s what it kept (two
    /// processes may race to make one; the store keeps the first).
    pub fn wrap_new(&self, tenant_id: &str) -> String {
        let key = EncryptionKey::generate();
        self.master.seal(&key.to_base64(), &aad(tenant_id))
    }

    /// Unwraps and remembers `tenant_id`'s stored key. Returns the key
    /// wrapped again when it was wrapped under a master key other than the
    /// current one (the store should write that back), `None` when current.
    pub fn learn(&self, tenant_id: &str, wrapped: &str) -> Result<Option<String>, OpenError> {
        if !SecretCipher::is_sealed(wrapped) {
            // A tenant key is never stored in the clear: refuse it.
            return Err(OpenError::Malformed("a tenant key stored unwrapped"));
        }
        let opened = self.master.open(wrapped, &aad(tenant_id))?;
        let key = EncryptionKey::from_base64(&opened.plaintext)
            .map_err(|_| OpenError::Malformed("a tenant key that is not 32 bytes of base64"))?;
        let rewrapped = opened
            .stale
            .then(|| self.master.seal(&opened.plaintext, &aad(tenant_id)));
        let mut ring = KeyRing::single(key);
        for k in self.master.ring().keys() {
            ring = ring.with_fallback(k.clone());
        }
        let source = format!("the key of tenant {tenant_id}, or {}", self.master.source());
        self.known
            .write()
            .expect("tenant keys lock")
            .insert(tenant_id.to_string(), SecretCipher::new(ring, source));
        Ok(rewrapped)
    }

    /// Whether `tenant_id`'s key is known here.
    pub fn knows(&self, tenant_id: &str) -> bool {
        self.known
            .read()
            .expect("tenant keys lock")
            .contains_key(tenant_id)
    }

    /// The cipher for `tenant_id`'s secrets: its key when known (sealing)
    /// or loaded now, else the master cipher, which opens only what was
    /// sealed before tenant keys existed.
    pub fn cipher(&self, tenant_id: &str) -> SecretCipher {
        let known = |keys: &Self| {
            keys.known
                .read()
                .expect("tenant keys lock")
                .get(tenant_id)
                .cloned()
        };
        if let Some(cipher) = known(self) {
            return cipher;
        }
        let loaded = self.loader.get().and_then(|load| load(tenant_id));
        if let Some(wrapped) = loaded {
            if let Err(e) = self.learn(tenant_id, &wrapped) {
                tracing::warn!(tenant_id, error = %e, "a tenant key that does not unwrap");
            }
        }
        known(self).unwrap_or_else(|| self.master.clone())
    }

    /// Drops `tenant_id`'s key from memory (its stored copy is deleted).
    pub fn forget(&self, tenant_id: &str) {
        self.known
            .write()
            .expect("tenant keys lock")
            .remove(tenant_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_key_seals_and_a_forgotten_one_opens_nothing() {
        let keys = TenantKeys::new(SecretCipher::random());
        let wrapped = keys.wrap_new("t1");
        assert!(!wrapped.contains(&keys.master().ring().primary().to_base64()));
        assert_eq!(keys.learn("t1", &wrapped).unwrap(), None);
        let sealed = keys.cipher("t1").seal("whsec_x", b"sub");
        assert!(!sealed.contains(keys.master().ring().primary().id()));
        assert_eq!(
            keys.cipher("t1").open(&sealed, b"sub").unwrap().plaintext,
            "whsec_x"
        );
        // The master key alone does not open it.
        assert!(keys.master().open(&sealed, b"sub").is_err());
        keys.forget("t1");
        assert!(keys.cipher("t1").open(&sealed, b"sub").is_err());
        // Nor does the same wrapped key learned again under another tenant.
        assert!(keys.learn("t2", &wrapped).is_err());
    }

    #[test]
    fn a_key_made_by_another_process_is_loaded_on_first_use() {
        let master = SecretCipher::random();
        let (maker, other) = (TenantKeys::new(master.clone()), TenantKeys::new(master));
        let wrapped = maker.wrap_new("t1");
        maker.learn("t1", &wrapped).unwrap();
        let sealed = maker.cipher("t1").seal("whsec_z", b"sub");
        assert!(
            other.cipher("t1").open(&sealed, b"sub").is_err(),
            "no loader yet"
        );
        let stored = wrapped.clone();
        other.set_loader(Box::new(move |t| (t == "t1").then(|| stored.clone())));
        assert_eq!(
            other.cipher("t1").open(&sealed, b"sub").unwrap().plaintext,
            "whsec_z"
        );
        assert!(other.knows("t1"));
        assert!(!other.knows("t2") && !other.cipher("t2").ring().ids().is_empty());
    }

    #[test]
    fn master_sealed_secrets_open_stale_and_a_rotated_master_rewraps() {
        let old = EncryptionKey::generate();
        let master = SecretCipher::new(KeyRing::single(old.clone()), "test");
        let keys = TenantKeys::new(master.clone());
        let legacy = master.seal("whsec_y", b"sub");
        let wrapped = keys.wrap_new("t1");
        keys.learn("t1", &wrapped).unwrap();
        let opened = keys.cipher("t1").open(&legacy, b"sub").unwrap();
        assert!(opened.stale, "sealed under the master key: seal again");

        let new = EncryptionKey::generate();
        let rotated = SecretCipher::new(KeyRing::single(new).with_fallback(old), "test");
        let keys = TenantKeys::new(rotated);
        let rewrapped = keys.learn("t1", &wrapped).unwrap().expect("rewrapped");
        assert_eq!(keys.learn("t1", &rewrapped).unwrap(), None);
    }
}
