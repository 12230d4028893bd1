//! Encryption at rest of subscription signing secrets (AES-256-GCM).
//!
//! A stored secret is `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`:
//! a fresh random 96-bit nonce per value, the 128-bit GCM tag, and as
//! associated data the subscription it belongs to, so a value copied into
//! another subscription's row does not decrypt. The key id (8 hex digits of
//! a SHA-256 of the key, not secret) names the key that sealed the value, so
//! a [`KeyRing`] of several keys can decrypt values sealed under any of them
//! while sealing new ones under its first key — that is how the key is
//! rotated (docs/security.md).
//!
//! Guarantees:
//! - [`SecretCipher::open`] never returns a value that did not authenticate:
//!   a wrong key or an altered value is an error naming the key, never a
//!   garbage secret that would sign deliveries.
//! - A value without the `enc:` prefix is a secret stored before encryption
//!   existed; it is returned as is and marked stale, so the store re-seals it.
//! - Keys never print: `Debug` of [`EncryptionKey`], [`KeyRing`] and
//!   [`SecretCipher`] shows key ids only.

use std::{fmt, io, path::Path, sync::Arc};

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};

/// Prefix of every sealed value, format version 1.
pub const SEALED_PREFIX: &str = "enc:v1:";
/// Bytes of an encryption key (AES-256).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a key was refused. The messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key in the list.
    #[error("no key given: set a base64 key of 32 bytes, e.g. from `openssl rand -base64 32`")]
    Empty,
    /// Key number `index` (1-based) is not standard base64.
    #[error("key {index} of the list is not standard base64 (generate one with `openssl rand -base64 32`)")]
    Base64 {
        /// Position of the key in the comma-separated list, from 1.
        index: usize,
    },
    /// Key number `index` does not decode to 32 bytes.
    #[error("key {index} of the list decodes to {len} bytes; AES-256 needs exactly 32 (generate one with `openssl rand -base64 32`)")]
    Length {
        /// Position of the key in the comma-separated list, from 1.
        index: usize,
        /// Its decoded length.
        len: usize,
    },
    /// The same key appears twice.
    #[error("key {index} of the list repeats an earlier key")]
    Duplicate {
        /// Position of the repeated key, from 1.
        index: usize,
    },
}

/// Why a stored secret could not be opened. The messages never contain
/// the secret or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed under a key the ring does not hold.
    #[error(
        "it was encrypted with key {found}, which is not among the configured keys [{configured}] \
         ({source_name}); start Herald with the key the store was written with (to change keys, \
         list the new key first and the old one after it)"
    )]
    UnknownKey {
        /// Id of the key that sealed the value.
        found: String,
        /// Ids of the keys configured.
        configured: String,
        /// Where the keys came from.
        source_name: String,
    },
    /// The key id matches but the value does not authenticate.
    #[error(
        "it does not authenticate under key {key} ({source_name}): the stored value was altered, \
         belongs to another record, or the key is wrong"
    )]
    Tampered {
        /// The key tried.
        key: String,
        /// Where the keys came from.
        source_name: String,
    },
    /// Starts with `enc:` but is not a well-formed `enc:v1:` value.
    #[error("it is not a well-formed sealed value ({0})")]
    Malformed(&'static str),
}

/// One AES-256 key. `Debug` shows its id only.
#[derive(Clone)]
pub struct EncryptionKey {
    bytes: [u8; KEY_LEN],
    id: String,
}

impl EncryptionKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"herald secret-encryption key id\0")
            .chain_update(bytes)
            .finalize();
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self { bytes, id }
    }

    /// Parses standard base64 of 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        Self::parse_at(s.trim(), 1)
    }

    /// Parses key number `index` of a list.
    fn parse_at(s: &str, index: usize) -> Result<Self, KeyError> {
        let raw = STANDARD.decode(s).map_err(|_| KeyError::Base64 { index })?;
        let bytes: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| KeyError::Length {
            index,
            len: raw.len(),
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as standard base64 (for writing it to a key file).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// The key's id: 8 hex digits derived from the key, safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey(id={}, <redacted>)", self.id)
    }
}

impl PartialEq for EncryptionKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl Eq for EncryptionKey {}

/// The keys Herald encrypts signing secrets with: the first seals new
/// values, every one opens values sealed under it. `Debug` shows ids only.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<EncryptionKey>,
}

impl KeyRing {
    /// A ring of one key.
    pub fn single(key: EncryptionKey) -> Self {
        Self { keys: vec![key] }
    }

    /// Parses a comma-separated list of base64 keys, the sealing key first.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<EncryptionKey> = Vec::new();
        for (i, part) in s.split(',').enumerate() {
            let index = i + 1;
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let key = EncryptionKey::parse_at(part, index)?;
            if keys.contains(&key) {
                return Err(KeyError::Duplicate { index });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// Adds `key` as one more key that opens (but does not seal), unless
    /// the ring holds it already.
    pub fn with_fallback(mut self, key: EncryptionKey) -> Self {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        self
    }

    /// The key that seals new values.
    pub fn primary(&self) -> &EncryptionKey {
        &self.keys[0]
    }

    /// All keys, sealing key first.
    pub fn keys(&self) -> &[EncryptionKey] {
        &self.keys
    }

    /// The ids of all keys, sealing key first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(EncryptionKey::id).collect()
    }

    /// Whether the ring holds `key`.
    pub fn contains(&self, key: &EncryptionKey) -> bool {
        self.keys.contains(key)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({})", self.ids().join(","))
    }
}

/// What [`SecretCipher::open`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: String,
    /// Whether the stored value should be sealed again: it was plaintext
    /// (stored before encryption) or sealed under a key that is not the
    /// sealing key.
    pub stale: bool,
}

/// Seals and opens secrets with a [`KeyRing`]. Cheap to clone.
#[derive(Clone)]
pub struct SecretCipher {
    inner: Arc<Inner>,
}

struct Inner {
    ring: KeyRing,
    ciphers: Vec<Aes256Gcm>,
    source: String,
}

impl SecretCipher {
    /// A cipher over `ring`; `source` says where the keys came from, for
    /// error messages (e.g. `HERALD_SECRET_ENCRYPTION_KEY`).
    pub fn new(ring: KeyRing, source: impl Into<String>) -> Self {
        let ciphers = ring
            .keys
            .iter()
            .map(|k| Aes256Gcm::new_from_slice(&k.bytes).expect("a 32-byte key"))
            .collect();
        Self {
            inner: Arc::new(Inner {
                ring,
                ciphers,
                source: source.into(),
            }),
        }
    }

    /// A cipher with a random key (tests and tools).
    pub fn random() -> Self {
        Self::new(KeyRing::single(EncryptionKey::generate()), "a random key")
    }

    /// The key ring.
    pub fn ring(&self) -> &KeyRing {
        &self.inner.ring
    }

    /// Where the keys came from.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Seals `plaintext` under the sealing key, bound to `aad`.
    pub fn seal(&self, plaintext: &str, aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self.inner.ciphers[0]
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .expect("AES-GCM encrypts any message below 64 GiB");
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.inner.ring.primary().id(),
            STANDARD.encode(raw)
        )
    }

    /// Whether `stored` is a sealed value (rather than a legacy plaintext).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with("enc:")
    }

    /// Opens a stored value bound to `aad`. A value without the `enc:`
    /// prefix is legacy plaintext: returned as is, marked stale.
    pub fn open(&self, stored: &str, aad: &[u8]) -> Result<Opened, OpenError> {
        if !Self::is_sealed(stored) {
            return Ok(Opened {
                plaintext: stored.to_string(),
                stale: true,
            });
        }
        let rest = stored
            .strip_prefix(SEALED_PREFIX)
            .ok_or(OpenError::Malformed("unknown version; expected enc:v1:"))?;
        let (key_id, encoded) = rest
            .split_once(':')
            .ok_or(OpenError::Malformed("no key id"))?;
        let raw = STANDARD
            .decode(encoded)
            .map_err(|_| OpenError::Malformed("not base64"))?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed("too short"));
        }
        let index = self
            .inner
            .ring
            .keys
            .iter()
            .position(|k| k.id() == key_id)
            .ok_or_else(|| OpenError::UnknownKey {
                found: key_id.chars().take(16).collect(),
                configured: self.inner.ring.ids().join(", "),
                source_name: self.inner.source.clone(),
            })?;
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = self.inner.ciphers[index]
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| OpenError::Tampered {
                key: key_id.to_string(),
                source_name: self.inner.source.clone(),
            })?;
        let plaintext = String::from_utf8(plain).map_err(|_| OpenError::Malformed("not UTF-8"))?;
        Ok(Opened {
            plaintext,
            stale: index != 0,
        })
    }
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretCipher")
            .field("keys", &self.inner.ring)
            .field("source", &self.inner.source)
            .finish()
    }
}

/// Reads the key kept in `path`, or makes a random one and writes it there
/// (mode 0600, created exclusively, synced) when the file does not exist.
/// Returns the key and whether it was created now. Errors never contain
/// key material.
pub fn load_or_create_key_file(path: &Path) -> io::Result<(EncryptionKey, bool)> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let read = |path: &Path| -> io::Result<EncryptionKey> {
        let meta = std::fs::metadata(path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the secret-encryption key file is readable by other users; chmod 600 it"
            );
        }
        let text = std::fs::read_to_string(path)?;
        EncryptionKey::from_base64(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} does not hold a key: {e}", path.display()),
            )
        })
    };
    match read(path) {
        Ok(key) => return Ok((key, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written whole to a private temporary file, then linked into place:
    // another process sharing the data dir sees no key file or a complete
    // one, and if two race, the first link wins and both use its key.
    let key = EncryptionKey::generate();
    let mut nonce = [0u8; 8];
    OsRng.fill_bytes(&mut nonce);
    let tmp = path.with_extension(format!(
        "tmp-{}",
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
        file.sync_all()?;
        let created = match std::fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(created)
    })();
    let _ = std::fs::remove_file(&tmp);
    if result? {
        Ok((key, true))
    } else {
        Ok((read(path)?, false))
    }
}

#[cfg(test)]
mod tests;
