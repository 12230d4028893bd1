//! Signing secrets at rest, against the real `herald` binary logging at
//! trace level: subscriptions with chosen secrets, a rotation (dual
//! signing), signed deliveries; then no secret in any byte of the data dir
//! (the SQLite database and its WAL included) nor in anything the process
//! printed; a restart with the same key still signs correctly; a restart
//! with another key refuses to start, naming the key.

use std::{path::Path, time::Duration};

use herald_engine::{encryption::EncryptionKey, signing::SigningSecret};
use serde_json::json;
use standardwebhooks::Webhook;

use crate::support::{eventually, files_containing, HeraldProcess, Received, Receiver};

const WAIT: Duration = Duration::from_secs(30);
const TRACE: &[(&str, &str)] = &[("HERALD_LOG", "trace"), ("RUST_LOG", "trace")];

/// Trace logging and `HERALD_SECRET_ENCRYPTION_KEY=key`.
fn with_key(key: &str) -> Vec<(&str, &str)> {
    let mut env = TRACE.to_vec();
    env.push(("HERALD_SECRET_ENCRYPTION_KEY", key));
    env
}

fn verifies(secret: &str, r: &Received) -> bool {
    Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

/// Every form of a secret that must not leak: `whsec_…` and its base64 part.
fn forms(secret: &str) -> [String; 2] {
    [
        secret.to_string(),
        secret.trim_start_matches("whsec_").to_string(),
    ]
}

fn assert_nowhere(dir: &Path, log: &Path, needles: &[String], when: &str) {
    let log_text = std::fs::read(log).unwrap();
    for needle in needles {
        let hits = files_containing(dir, needle.as_bytes());
        assert!(hits.is_empty(), "{when}: a secret is stored in {hits:?}");
        assert!(
            !log_text
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "{when}: a secret is in the logs ({})",
            log.display()
        );
    }
}

/// Emits one `order.created` event and waits for its two deliveries;
/// returns them keyed (first: subscription `a`, second: `b`).
async fn deliver_one(
    h: &HeraldProcess,
    key: &str,
    receiver: &Receiver,
    a: &str,
    n: u32,
) -> (Received, Received) {
    let (status, event) = h
        .post(
            key,
            "/api/v1/integrations/events",
            json!({ "event_type": "order.created", "payload": { "n": n } }),
        )
        .await;
    assert_eq!(status, 202, "{event}");
    let id = event["id"].as_str().unwrap().to_string();
    let got = eventually("both deliveries", WAIT, || async {
        let got: Vec<Received> = receiver
            .received()
            .into_iter()
            .filter(|r| r.header("webhook-id") == id)
            .collect();
        (got.len() >= 2).then_some(got)
    })
    .await;
    let (to_a, to_b): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|r| r.header("herald-subscription-id") == a);
    (to_a[0].clone(), to_b[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_never_logged_and_need_their_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("herald.log");
    let key1 = EncryptionKey::generate();
    let key2 = EncryptionKey::generate();
    let (key1_b64, key2_b64) = (key1.to_base64(), key2.to_base64());
    let receiver = Receiver::start(200).await;

    let h = HeraldProcess::start(&data, &log, &[], &with_key(&key1_b64))
        .await
        .unwrap();
    let key = h.tenant("acme").await;
    let (s_a, s_b, s_a2) = (
        SigningSecret::generate().to_whsec(),
        SigningSecret::generate().to_whsec(),
        SigningSecret::generate().to_whsec(),
    );
    let mut subs = Vec::new();
    for secret in [&s_a, &s_b] {
        let (status, sub) = h
            .post(
                &key,
                "/api/v1/portal/webhooks/subscribe",
                json!({ "url": receiver.url, "event_types": ["order.*"], "secret": secret }),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        assert_eq!(sub["secret"], secret.as_str());
        subs.push(sub["id"].as_str().unwrap().to_string());
    }
    let (a, _b) = (subs[0].clone(), subs[1].clone());
    // Rotate a's secret to a chosen one; the old one signs for an hour more.
    let (status, rotated) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{a}/rotate-secret"),
            json!({ "secret": s_a2, "grace_period_seconds": 3600 }),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["secret"], s_a2.as_str());

    let check = |to_a: &Received, to_b: &Received| {
        assert!(verifies(&s_a2, to_a), "a: the new secret verifies");
        assert!(
            verifies(&s_a, to_a),
            "a: the old secret verifies (dual signing)"
        );
        assert_eq!(to_a.header("webhook-signature").split(' ').count(), 2);
        assert!(verifies(&s_b, to_b), "b: its secret verifies");
        assert!(!verifies(&s_a, to_b), "b is not signed with a's secret");
    };
    let (to_a, to_b) = deliver_one(&h, &key, &receiver, &a, 1).await;
    check(&to_a, &to_b);

    let mut needles: Vec<String> = [&s_a, &s_b, &s_a2]
        .into_iter()
        .flat_map(|s| forms(s))
        .collect();
    needles.push(key1_b64.clone());
    // While running: the WAL holds the latest writes.
    assert!(data.join("store/herald.db-wal").exists());
    assert_nowhere(&data, &log, &needles, "while running");
    h.stop().await;
    assert_nowhere(&data, &log, &needles, "after a stop");

    // (c) The same key again: the stored secrets still sign.
    let h = HeraldProcess::start(&data, &log, &[], &with_key(&key1_b64))
        .await
        .unwrap();
    let (to_a, to_b) = deliver_one(&h, &key, &receiver, &a, 2).await;
    check(&to_a, &to_b);
    h.stop().await;

    // (d) Another key: refused at start-up, saying which key is needed.
    let err = HeraldProcess::start(&data, &log, &[], &with_key(&key2_b64))
        .await
        .err()
        .expect("a wrong key must not start");
    for expected in [
        "cannot decrypt the key of tenant acme",
        "HERALD_SECRET_ENCRYPTION_KEY",
        key1.id(),
        key2.id(),
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    needles.push(key2_b64);
    assert_nowhere(&data, &log, &needles, "after every run");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("TRACE"),
        "the runs logged at trace level ({})",
        log.display()
    );
}

/// With no key configured, the embedded server generates one into
/// `<data-dir>/secret.key` (mode 0600), says so without printing it, and
/// uses it across restarts; configuring a key later migrates every secret
/// to it, after which the generated file is no longer needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_is_kept_in_the_data_dir_and_a_configured_key_takes_over() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("herald.log");
    let receiver = Receiver::start(200).await;

    let h = HeraldProcess::start(&data, &log, &[], TRACE).await.unwrap();
    let key_file = data.join("secret.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let generated =
        EncryptionKey::from_base64(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("generated the key that encrypts signing secrets"),
        "{text}"
    );
    assert!(text.contains(generated.id()));
    assert!(
        !text.contains(&generated.to_base64()),
        "the key is not logged"
    );

    let key = h.tenant("acme").await;
    let secret = SigningSecret::generate().to_whsec();
    let (status, sub) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": receiver.url, "event_types": ["order.*"], "secret": secret }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    h.stop().await;

    let emit_and_verify = |h: HeraldProcess, n: u32| {
        let (key, receiver, secret) = (key.clone(), receiver.clone(), secret.clone());
        async move {
            let (status, event) = h
                .post(
                    &key,
                    "/api/v1/integrations/events",
                    json!({ "event_type": "order.created", "payload": { "n": n } }),
                )
                .await;
            assert_eq!(status, 202, "{event}");
            let id = event["id"].as_str().unwrap().to_string();
            let got = eventually("the delivery", WAIT, || async {
                receiver
                    .received()
                    .into_iter()
                    .find(|r| r.header("webhook-id") == id)
            })
            .await;
            assert!(verifies(&secret, &got));
            h.stop().await;
        }
    };
    // Restart without a key: the generated one is read back.
    let h = HeraldProcess::start(&data, &log, &[], TRACE).await.unwrap();
    emit_and_verify(h, 1).await;

    // A configured key takes over: the stored secrets move to it...
    let configured = EncryptionKey::generate();
    let configured_b64 = configured.to_base64();
    let h = HeraldProcess::start(
        &data,
        &log,
        &["--secret-encryption-key", &configured_b64],
        TRACE,
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the generated key file is no longer needed"));
    emit_and_verify(h, 2).await;
    // ...so the generated key can go.
    std::fs::remove_file(&key_file).unwrap();
    let h = HeraldProcess::start(
        &data,
        &log,
        &["--secret-encryption-key", &configured_b64],
        TRACE,
    )
    .await
    .unwrap();
    emit_and_verify(h, 3).await;
    assert!(!key_file.exists(), "a configured key writes no key file");

    let all: Vec<String> = forms(&secret)
        .into_iter()
        .chain([generated.to_base64(), configured.to_base64()])
        .collect();
    assert_nowhere(&data, &log, &all, "after every run");
}

/// The CQL store keeps nothing on a node's local disk, so it refuses to
/// start without a configured key (checked before connecting anywhere).
#[tokio::test]
async fn the_cql_store_needs_a_configured_key() {
    let tmp = tempfile::tempdir().unwrap();
    let err = HeraldProcess::start(
        &tmp.path().join("data"),
        &tmp.path().join("herald.log"),
        &["--scylla-nodes", "127.0.0.1:1"],
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert!(err.contains("--secret-encryption-key"), "{err}");
    assert!(err.contains("HERALD_SECRET_ENCRYPTION_KEY"), "{err}");
    assert!(!tmp.path().join("data/secret.key").exists());
}
