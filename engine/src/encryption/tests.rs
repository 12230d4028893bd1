use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const AAD: &[u8] = b"acme/sub_1";

fn cipher() -> SecretCipher {
    SecretCipher::random()
}

#[test]
fn round_trip_with_a_fresh_nonce_each_time() {
    let c = cipher();
    let a = c.seal(SECRET, AAD);
    let b = c.seal(SECRET, AAD);
    assert!(a.starts_with(SEALED_PREFIX), "{a}");
    assert_ne!(a, b, "a random nonce per value");
    assert!(!a.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    for sealed in [a, b] {
        let opened = c.open(&sealed, AAD).unwrap();
        assert_eq!(opened.plaintext, SECRET);
        assert!(!opened.stale);
    }
}

#[test]
fn wrong_key_fails_and_names_both_keys() {
    let c = cipher();
    let other = cipher();
    let sealed = c.seal(SECRET, AAD);
    let err = other.open(&sealed, AAD).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OpenError::UnknownKey { .. }), "{msg}");
    assert!(msg.contains(c.ring().primary().id()), "{msg}");
    assert!(msg.contains(other.ring().primary().id()), "{msg}");
    assert!(msg.contains("a random key"), "{msg}");
    // A wrong key that claims the right id (forged id) still fails: GCM authenticates.
    let forged = sealed.replace(c.ring().primary().id(), other.ring().primary().id());
    assert!(matches!(
        other.open(&forged, AAD),
        Err(OpenError::Tampered { .. })
    ));
}

#[test]
fn tampered_values_fail() {
    let c = cipher();
    let sealed = c.seal(SECRET, AAD);
    let (head, body) = sealed.rsplit_once(':').unwrap();
    let mut raw = STANDARD.decode(body).unwrap();
    for i in [0, NONCE_LEN, raw.len() - 1] {
        raw[i] ^= 1;
        let bad = format!("{head}:{}", STANDARD.encode(&raw));
        assert!(
            matches!(c.open(&bad, AAD), Err(OpenError::Tampered { .. })),
            "flipping byte {i}"
        );
        raw[i] ^= 1;
    }
    // Bound to its record: another subscription's AAD does not open it.
    assert!(matches!(
        c.open(&sealed, b"acme/sub_2"),
        Err(OpenError::Tampered { .. })
    ));
    // Truncated, not base64, unknown version, no key id.
    for bad in [
        format!("{head}:{}", &body[..8]),
        format!("{head}:!!!"),
        sealed.replace("enc:v1:", "enc:v9:"),
        "enc:v1:abcdef".to_string(),
    ] {
        assert!(
            matches!(c.open(&bad, AAD), Err(OpenError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn legacy_plaintext_is_accepted_and_stale() {
    let opened = cipher().open(SECRET, AAD).unwrap();
    assert_eq!(opened.plaintext, SECRET);
    assert!(opened.stale);
}

#[test]
fn a_ring_opens_old_values_and_seals_with_its_first_key() {
    let old = EncryptionKey::generate();
    let new = EncryptionKey::generate();
    let before = SecretCipher::new(KeyRing::single(old.clone()), "test");
    let sealed_old = before.seal(SECRET, AAD);
    let ring = KeyRing::parse(&format!("{}, {}", new.to_base64(), old.to_base64())).unwrap();
    assert_eq!(ring.ids(), vec![new.id(), old.id()]);
    let after = SecretCipher::new(ring, "test");
    let opened = after.open(&sealed_old, AAD).unwrap();
    assert_eq!(opened.plaintext, SECRET);
    assert!(opened.stale, "sealed under an older key: re-seal");
    let resealed = after.seal(SECRET, AAD);
    assert!(resealed.starts_with(&format!("{SEALED_PREFIX}{}:", new.id())));
    assert!(!after.open(&resealed, AAD).unwrap().stale);
}

#[test]
fn key_parsing_errors_never_echo_the_key() {
    let short = STANDARD.encode([7u8; 16]);
    let err = KeyRing::parse(&short).unwrap_err();
    assert_eq!(err, KeyError::Length { index: 1, len: 16 });
    assert!(!err.to_string().contains(&short));
    let good = EncryptionKey::generate().to_base64();
    assert_eq!(
        KeyRing::parse(&format!("{good},not base64!")).unwrap_err(),
        KeyError::Base64 { index: 2 }
    );
    assert_eq!(
        KeyRing::parse(&format!("{good},{good}")).unwrap_err(),
        KeyError::Duplicate { index: 2 }
    );
    assert_eq!(KeyRing::parse(" , ").unwrap_err(), KeyError::Empty);
    assert_eq!(
        EncryptionKey::from_base64(&format!(" {good}\n")).unwrap(),
        EncryptionKey::from_base64(&good).unwrap()
    );
}

#[test]
fn debug_shows_key_ids_only() {
    let key = EncryptionKey::generate();
    let b64 = key.to_base64();
    let ring = KeyRing::single(key.clone());
    let cipher = SecretCipher::new(ring.clone(), "test");
    for debug in [
        format!("{key:?}"),
        format!("{ring:?}"),
        format!("{cipher:?}"),
        format!("{cipher:#?}"),
    ] {
        assert!(debug.contains(key.id()), "{debug}");
        assert!(!debug.contains(&b64), "{debug}");
        assert!(!debug.contains(&b64[..12]), "{debug}");
    }
}

#[test]
fn key_file_is_created_once_with_mode_0600_and_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("secret.key");
    let (key, created) = load_or_create_key_file(&path).unwrap();
    assert!(created);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (again, created) = load_or_create_key_file(&path).unwrap();
    assert!(!created);
    assert_eq!(again, key);
    std::fs::write(&path, "not a key").unwrap();
    let err = load_or_create_key_file(&path).unwrap_err().to_string();
    assert!(err.contains("does not hold a key"), "{err}");
}

#[test]
fn racing_creators_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.key");
    let keys: Vec<(EncryptionKey, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| load_or_create_key_file(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(keys.iter().filter(|(_, created)| *created).count(), 1);
    assert!(keys.iter().all(|(k, _)| *k == keys[0].0));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}
