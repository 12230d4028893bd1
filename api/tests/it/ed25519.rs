//! Ed25519 (`v1a`) signatures end to end: real deliveries to a real HTTP
//! receiver, checked by an independent verifier (scripts/verify-v1a.py,
//! PyNaCl from `.cache/venv`, no Herald code): every delivery verifies with
//! the subscription's `whpk_` key; a tampered body, a wrong key and an
//! expired timestamp are rejected; a rotation dual-signs; `both` carries a
//! `v1` the standardwebhooks crate verifies next to the `v1a`; the JWKS
//! documents list the live keys; an unknown scheme is a 422.

use std::{path::PathBuf, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};
use standardwebhooks::Webhook;

use crate::support::{eventually, files_containing, Herald, Received, Receiver};

const WAIT: Duration = Duration::from_secs(30);

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test creates it (PyNaCl from PyPI)",
        python.display()
    );
    python
}

/// Runs the independent verifier; returns its per-delivery results.
async fn verify(
    keys: Value,
    deliveries: &[(Received, Option<Vec<u8>>)],
    now: Option<i64>,
) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|(r, body)| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            let body = body.clone().unwrap_or_else(|| r.body.to_vec());
            json!({ "headers": headers, "body_b64": STANDARD.encode(body) })
        })
        .collect();
    let input = json!({ "keys": keys, "now": now, "deliveries": deliveries }).to_string();
    let mut child = tokio::process::Command::new(python())
        .arg(root.join("scripts/verify-v1a.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "verifier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["results"].as_array().unwrap().clone()
}

async fn subscribe(h: &Herald, key: &str, url: &str, signature: &str) -> Value {
    let (status, sub) = h
        .post(
            key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": url, "event_types": ["order.*"], "signature": signature }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["signature"], signature);
    sub
}

/// Emits one event and returns its delivery to `sub`.
async fn deliver(h: &Herald, key: &str, receiver: &Receiver, sub: &str, n: u32) -> Received {
    let event = h.emit(key, "order.created", json!({ "n": n })).await;
    let id = event["id"].as_str().unwrap().to_string();
    eventually("the delivery", WAIT, || async {
        receiver
            .received()
            .into_iter()
            .find(|r| r.header("webhook-id") == id && r.header("herald-subscription-id") == sub)
    })
    .await
}

fn entries<'a>(r: &'a Received, version: &str) -> Vec<&'a str> {
    r.header("webhook-signature")
        .split(' ')
        .filter(|e| e.split(',').next() == Some(version))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_deliveries_verify_independently_and_rotation_dual_signs() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let receiver = Receiver::start(200).await;

    let sub = subscribe(&h, &key, &receiver.url, "ed25519").await;
    let id = sub["id"].as_str().unwrap().to_string();
    let whpk = sub["public_key"].as_str().unwrap().to_string();
    assert!(whpk.starts_with("whpk_"), "{sub}");
    assert!(
        sub.get("secret").is_none(),
        "no HMAC secret for ed25519: {sub}"
    );
    assert!(
        !sub.to_string().contains("whsk_"),
        "the private key never leaves: {sub}"
    );
    let (status, got) = h.get(&key, &format!("/api/v1/portal/webhooks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["public_key"], whpk.as_str());
    assert_eq!(got["signature"], "ed25519");
    // A second subscription, whose key must not verify the first one's deliveries.
    let other = subscribe(&h, &key, &receiver.url, "ed25519").await;
    let other_whpk = other["public_key"].as_str().unwrap().to_string();

    let mut delivered = Vec::new();
    for n in 0..3 {
        delivered.push(deliver(&h, &key, &receiver, &id, n).await);
    }
    for r in &delivered {
        assert_eq!(entries(r, "v1a").len(), 1, "{:?}", r.headers);
        assert!(entries(r, "v1").is_empty(), "ed25519 only: {:?}", r.headers);
    }
    let plain: Vec<_> = delivered.iter().map(|r| (r.clone(), None)).collect();
    for result in verify(json!([whpk, other_whpk]), &plain, None).await {
        assert_eq!(result["valid"], true, "{result}");
        assert_eq!(result["by_key"], json!([true, false]), "{result}");
    }

    // Tampered body; wrong key; a valid signature 10 minutes later (expired).
    let mut tampered = delivered[0].body.to_vec();
    let at = tampered.iter().position(|b| *b == b'0').unwrap();
    tampered[at] = b'7';
    let r = verify(
        json!([whpk]),
        &[(delivered[0].clone(), Some(tampered))],
        None,
    )
    .await;
    assert_eq!(r[0]["valid"], false, "tampered body: {}", r[0]);
    let r = verify(json!([other_whpk]), &plain[..1], None).await;
    assert_eq!(r[0]["valid"], false, "wrong key: {}", r[0]);
    let ts: i64 = delivered[0].header("webhook-timestamp").parse().unwrap();
    let r = verify(json!([whpk]), &plain[..1], Some(ts + 600)).await;
    assert_eq!(r[0]["valid"], false, "expired: {}", r[0]);
    assert_eq!(
        r[0]["by_key"],
        json!([true]),
        "the signature itself is fine"
    );
    assert_eq!(r[0]["error"], "timestamp outside the tolerance");

    // The JWKS documents: the subscription's, and the tenant's (both subscriptions).
    let (status, jwks) = h
        .get(&key, &format!("/api/v1/portal/webhooks/{id}/jwks"))
        .await;
    assert_eq!(status, 200, "{jwks}");
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["whpk"], whpk.as_str());
    let r = verify(jwks["keys"].clone(), &plain, None).await;
    assert!(
        r.iter().all(|r| r["valid"] == true),
        "the JWK verifies: {r:?}"
    );
    let (_, all) = h.get(&key, "/api/v1/portal/jwks").await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 2, "{all}");

    // Rotation: for the grace window, one v1a entry per live key.
    let (status, rotated) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{id}/rotate-secret"),
            json!({ "grace_period_seconds": 3600 }),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_whpk = rotated["public_key"].as_str().unwrap().to_string();
    assert_ne!(new_whpk, whpk);
    assert!(rotated.get("secret").is_none(), "{rotated}");
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    let r = deliver(&h, &key, &receiver, &id, 10).await;
    assert_eq!(entries(&r, "v1a").len(), 2, "{:?}", r.headers);
    let result = verify(json!([whpk, new_whpk, other_whpk]), &[(r, None)], None).await;
    assert_eq!(result[0]["valid"], true, "{}", result[0]);
    assert_eq!(
        result[0]["by_key"],
        json!([true, true, false]),
        "{}",
        result[0]
    );
    let (_, jwks) = h
        .get(&key, &format!("/api/v1/portal/webhooks/{id}/jwks"))
        .await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    assert_eq!(keys[0]["whpk"], new_whpk.as_str());
    assert!(
        keys[0].get("exp").is_none() && keys[1]["exp"].is_i64(),
        "{jwks}"
    );

    // Rotating again with no grace: only the newest key signs.
    let (_, rotated) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{id}/rotate-secret"),
            json!({ "grace_period_seconds": 0 }),
        )
        .await;
    let newest = rotated["public_key"].as_str().unwrap().to_string();
    let r = deliver(&h, &key, &receiver, &id, 11).await;
    assert_eq!(entries(&r, "v1a").len(), 1, "{:?}", r.headers);
    let result = verify(json!([newest, new_whpk, whpk]), &[(r, None)], None).await;
    assert_eq!(
        result[0]["by_key"],
        json!([true, false, false]),
        "{}",
        result[0]
    );
    h.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_carries_v1_and_v1a_hmac_stays_the_default_and_a_patch_opts_in() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let receiver = Receiver::start(200).await;

    let both = subscribe(&h, &key, &receiver.url, "both").await;
    let both_id = both["id"].as_str().unwrap().to_string();
    let secret = both["secret"].as_str().unwrap().to_string();
    let whpk = both["public_key"].as_str().unwrap().to_string();
    let plain = h.subscribe(&key, &receiver.url, &["order.*"]).await;
    assert_eq!(plain["signature"], "hmac");
    assert!(plain["public_key"].is_null(), "{plain}");
    let plain_id = plain["id"].as_str().unwrap().to_string();

    let r = deliver(&h, &key, &receiver, &both_id, 1).await;
    assert_eq!(entries(&r, "v1").len(), 1, "{:?}", r.headers);
    assert_eq!(entries(&r, "v1a").len(), 1, "{:?}", r.headers);
    Webhook::new(&secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .expect("standardwebhooks verifies the v1 entry");
    let result = verify(json!([whpk]), &[(r, None)], None).await;
    assert_eq!(result[0]["valid"], true, "{}", result[0]);

    let r = deliver(&h, &key, &receiver, &plain_id, 2).await;
    assert!(entries(&r, "v1a").is_empty(), "hmac only: {:?}", r.headers);
    let (_, jwks) = h
        .get(&key, &format!("/api/v1/portal/webhooks/{plain_id}/jwks"))
        .await;
    assert_eq!(jwks, json!({ "keys": [] }));

    // An existing HMAC subscription opts in with a PATCH: it gets a key.
    let path = format!("/api/v1/portal/webhooks/{plain_id}");
    let (status, bad) = h
        .call("PATCH", &key, &path, Some(json!({ "signature": "rsa" })))
        .await;
    assert_eq!(status, 422, "{bad}");
    let (status, patched) = h
        .call(
            "PATCH",
            &key,
            &path,
            Some(json!({ "signature": "ed25519" })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["signature"], "ed25519");
    let patched_whpk = patched["public_key"].as_str().unwrap().to_string();
    let r = deliver(&h, &key, &receiver, &plain_id, 3).await;
    assert!(entries(&r, "v1").is_empty(), "{:?}", r.headers);
    let result = verify(json!([patched_whpk]), &[(r, None)], None).await;
    assert_eq!(result[0]["valid"], true, "{}", result[0]);
    // The private key is sealed: no byte of the data dir holds it (the
    // SQLite database and whatever WAL is left) once stopped.
    let stored = h.engine.subscription("acme", &both_id).await.unwrap();
    let whsk = stored.signing_keys[0].key.to_whsk();
    let seed = whsk.trim_start_matches("whsk_").to_string();
    assert_eq!(stored.signing_keys[0].key.public_key().to_whpk(), whpk);
    let dir = h.stop().await;
    for needle in [&whsk, &seed] {
        let hits = files_containing(dir.path(), needle.as_bytes());
        assert!(hits.is_empty(), "the private key is stored in {hits:?}");
    }
}

#[tokio::test]
async fn an_unknown_signature_kind_is_a_422_problem() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    for bad in [
        json!("rsa"),
        json!("HMAC"),
        json!(""),
        json!(5),
        json!(["both"]),
    ] {
        let r = h
            .http
            .post(h.url("/api/v1/portal/webhooks/subscribe"))
            .bearer_auth(&key)
            .json(&json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["a.b"], "signature": bad }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let ct = r.headers()["content-type"].clone();
        let problem: Value = r.json().await.unwrap();
        assert_eq!(status, 422, "{bad} {problem}");
        assert_eq!(ct, "application/problem+json", "{bad}");
        assert!(
            problem["detail"].to_string().contains("signature"),
            "{problem}"
        );
    }
    let (_, list) = h.get(&key, "/api/v1/portal/webhooks").await;
    assert_eq!(list["data"], json!([]), "nothing was created");
    h.engine.shutdown().await;
}
