//! Endpoint authentication beyond the signature (issue 21): bearer and
//! basic credentials, OAuth2 client credentials against a token server in
//! the test, mutual TLS against a TLS receiver that requires a client
//! certificate (made here with `rcgen`), and every delivery through an HTTP
//! CONNECT proxy in the test. Secrets are never shown again nor written in
//! the clear.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
    Form, Json, Router,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{eventually, files_containing, Herald, HeraldProcess, Receiver};

const WAIT: Duration = Duration::from_secs(30);

async fn subscribe(h: &Herald, key: &str, body: Value) -> Value {
    let (status, sub) = h.post(key, "/api/v1/portal/webhooks/subscribe", body).await;
    assert_eq!(status, 201, "{sub}");
    sub
}

/// The delivery log of one subscription, oldest first.
async fn attempts(h: &Herald, key: &str, sub: &str) -> Vec<Value> {
    let mut logs = h.logs(key, &format!("subscription_id={sub}")).await;
    logs.reverse();
    logs
}

#[tokio::test]
async fn bearer_and_basic_credentials_reach_the_endpoint_and_are_never_shown() {
    let h = Herald::start().await;
    let key = h.tenant("auth-static").await;
    let rx = Receiver::start(200).await;
    let bearer = subscribe(
        &h,
        &key,
        json!({ "url": rx.url, "event_types": ["bearer.*"],
                "auth": { "type": "bearer", "token": "tok-3f9a1c-secret" } }),
    )
    .await;
    let basic = subscribe(
        &h,
        &key,
        json!({ "url": rx.url, "event_types": ["basic.*"],
                "auth": { "type": "basic", "username": "herald", "password": "pw-77e2-secret" } }),
    )
    .await;
    assert_eq!(
        bearer["auth"],
        json!({ "type": "bearer", "secret_set": true })
    );
    assert_eq!(
        basic["auth"],
        json!({ "type": "basic", "username": "herald", "secret_set": true })
    );

    h.emit(&key, "bearer.sent", json!({ "n": 1 })).await;
    h.emit(&key, "basic.sent", json!({ "n": 2 })).await;
    let got = eventually("both deliveries", WAIT, || async {
        let got = rx.received();
        (got.len() == 2).then_some(got)
    })
    .await;
    let auth_of = |t: &str| {
        got.iter()
            .find(|r| r.header("herald-event-type") == t)
            .map(|r| r.header("authorization").to_string())
            .unwrap()
    };
    assert_eq!(auth_of("bearer.sent"), "Bearer tok-3f9a1c-secret");
    // base64("herald:pw-77e2-secret")
    assert_eq!(auth_of("basic.sent"), "Basic aGVyYWxkOnB3LTc3ZTItc2VjcmV0");

    // Never shown again, never written in the clear.
    let id = bearer["id"].as_str().unwrap();
    let (_, read) = h.get(&key, &format!("/api/v1/portal/webhooks/{id}")).await;
    let (_, list) = h.get(&key, "/api/v1/portal/webhooks").await;
    for shown in [read.to_string(), list.to_string()] {
        assert!(!shown.contains("tok-3f9a1c-secret") && !shown.contains("pw-77e2-secret"));
        assert!(shown.contains("secret_set"), "{shown}");
    }

    // Removing the auth: the next delivery carries none.
    let (status, patched) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{id}"),
            Some(json!({ "auth": null })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched.get("auth").is_none(), "{patched}");
    h.emit(&key, "bearer.sent", json!({ "n": 3 })).await;
    let third = eventually("the delivery after the change", WAIT, || async {
        rx.received()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains("\"n\":3"))
    })
    .await;
    assert_eq!(third.header("authorization"), "");

    let dir = h.stop().await;
    for needle in ["tok-3f9a1c-secret", "pw-77e2-secret"] {
        let found = files_containing(dir.path(), needle.as_bytes());
        assert!(found.is_empty(), "{needle} in the clear in {found:?}");
    }
}

#[tokio::test]
async fn bad_auth_and_tls_settings_are_refused_and_change_nothing() {
    let h = Herald::start().await;
    let key = h.tenant("auth-bad").await;
    let rx = Receiver::start(200).await;
    for (body, says) in [
        (
            json!({ "url": rx.url, "event_types": ["a.b"], "auth": { "type": "bearer", "token": "two words" } }),
            "visible ASCII",
        ),
        (
            json!({ "url": rx.url, "event_types": ["a.b"], "auth": { "type": "digest", "token": "t" } }),
            "digest",
        ),
        (
            json!({ "url": rx.url, "event_types": ["a.b"],
                    "headers": { "Authorization": "Bearer x" },
                    "auth": { "type": "bearer", "token": "t" } }),
            "exclude each other",
        ),
        (
            json!({ "url": "kafka://127.0.0.1:9092/t", "event_types": ["a.b"],
                    "auth": { "type": "bearer", "token": "t" } }),
            "kafka",
        ),
        (
            json!({ "url": rx.url, "event_types": ["a.b"],
                    "auth": { "type": "oauth2", "token_url": "http://169.254.169.254/token",
                              "client_id": "c", "client_secret": "s" } }),
            "token_url",
        ),
        (
            json!({ "url": rx.url, "event_types": ["a.b"], "tls": { "ca_pem": ca().cert.pem() } }),
            "https:// endpoints only",
        ),
        (
            json!({ "url": "https://localhost:1/hook", "event_types": ["a.b"],
                    "tls": { "cert_pem": ca().cert.pem() } }),
            "come together",
        ),
    ] {
        let (status, problem) = h
            .post(&key, "/api/v1/portal/webhooks/subscribe", body.clone())
            .await;
        assert!(status == 422 || status == 400, "{body}: {status} {problem}");
        assert!(problem.to_string().contains(says), "{body}: {problem}");
    }
    let (_, list) = h.get(&key, "/api/v1/portal/webhooks").await;
    assert_eq!(list["data"], json!([]), "nothing was created");

    // A change that would not fit the subscription is refused, and changes nothing.
    let sub = subscribe(
        &h,
        &key,
        json!({ "url": rx.url, "event_types": ["a.b"],
        "headers": { "Authorization": "Bearer static" } }),
    )
    .await;
    let id = sub["id"].as_str().unwrap();
    let (status, problem) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{id}"),
            Some(json!({ "auth": { "type": "basic", "username": "u", "password": "p" } })),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (_, read) = h.get(&key, &format!("/api/v1/portal/webhooks/{id}")).await;
    assert!(read.get("auth").is_none(), "{read}");
    h.stop().await;
}

/// A token request's `grant_type` and `scope`.
type Grant = (String, Option<String>);

/// The token server's state: the tokens it issued and which still work.
#[derive(Clone, Default)]
struct Idp {
    issued: Arc<AtomicUsize>,
    valid: Arc<Mutex<HashSet<String>>>,
    /// Each request's `grant_type` and `scope`.
    forms: Arc<Mutex<Vec<Grant>>>,
}

/// `POST /token`: client credentials `herald-client:idp-secret` only.
async fn token(
    State(idp): State<Idp>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    // base64("herald-client:idp-secret")
    let expected = "Basic aGVyYWxkLWNsaWVudDppZHAtc2VjcmV0";
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    idp.forms.lock().unwrap().push((
        form.get("grant_type").cloned().unwrap_or_default(),
        form.get("scope").cloned(),
    ));
    if auth != Some(expected) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        );
    }
    let n = idp.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("access-{n}");
    idp.valid.lock().unwrap().insert(token.clone());
    (
        StatusCode::OK,
        Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 })),
    )
}

/// `POST /hook`: only a valid token gets a 200.
async fn protected(
    State((idp, got)): State<(Idp, Arc<Mutex<Vec<String>>>)>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    if !idp.valid.lock().unwrap().contains(&presented) {
        return StatusCode::UNAUTHORIZED;
    }
    got.lock().unwrap().push(body);
    StatusCode::OK
}

/// The token server and the receiver that takes only its valid tokens:
/// their state, the bodies accepted, and their addresses.
async fn oauth_servers() -> (Idp, Arc<Mutex<Vec<String>>>, SocketAddr, SocketAddr) {
    let idp = Idp::default();
    let got = Arc::new(Mutex::new(Vec::new()));
    let idp_addr = serve(
        Router::new()
            .route("/token", post(token))
            .with_state(idp.clone()),
    )
    .await;
    let hook_addr = serve(
        Router::new()
            .route("/hook", post(protected))
            .with_state((idp.clone(), got.clone())),
    )
    .await;
    (idp, got, idp_addr, hook_addr)
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

#[tokio::test]
async fn oauth2_tokens_are_cached_refreshed_on_401_and_a_failing_token_endpoint_is_an_auth_failure()
{
    let (idp, got, idp_addr, hook_addr) = oauth_servers().await;
    let h = Herald::start().await;
    let key = h.tenant("auth-oauth").await;
    let oauth = |secret: &str| {
        json!({ "type": "oauth2", "token_url": format!("http://{idp_addr}/token"),
                "client_id": "herald-client", "client_secret": secret, "scope": "webhooks:receive" })
    };
    let sub = subscribe(
        &h,
        &key,
        json!({ "url": format!("http://{hook_addr}/hook"), "event_types": ["wo.*"],
                "auth": oauth("idp-secret") }),
    )
    .await;
    assert_eq!(sub["auth"]["client_id"], "herald-client");
    assert_eq!(sub["auth"]["secret_set"], true);
    assert!(!sub.to_string().contains("idp-secret"));

    // Three deliveries, one token.
    for n in 0..3 {
        h.emit(&key, "wo.completed", json!({ "n": n })).await;
    }
    eventually("three deliveries", WAIT, || async {
        (got.lock().unwrap().len() == 3).then_some(())
    })
    .await;
    assert_eq!(idp.issued.load(Ordering::SeqCst), 1, "the token is cached");
    assert_eq!(
        idp.forms.lock().unwrap()[0],
        (
            "client_credentials".to_string(),
            Some("webhooks:receive".to_string())
        )
    );

    // The token is revoked before it expires: the endpoint says 401, a new
    // token is fetched and the same attempt succeeds.
    idp.valid.lock().unwrap().clear();
    h.emit(&key, "wo.completed", json!({ "n": 3 })).await;
    eventually("the delivery after the revocation", WAIT, || async {
        (got.lock().unwrap().len() == 4).then_some(())
    })
    .await;
    assert_eq!(idp.issued.load(Ordering::SeqCst), 2);
    let id = sub["id"].as_str().unwrap();
    let logs = attempts(&h, &key, id).await;
    assert_eq!(logs.len(), 4, "{logs:?}");
    assert!(
        logs.iter()
            .all(|l| l["outcome"] == "delivered" && l["attempt"] == 1),
        "{logs:?}"
    );

    // A token endpoint that refuses the client: the attempt fails as `auth`,
    // says why, and nothing reaches the endpoint.
    let (status, _) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{id}"),
            Some(json!({ "auth": oauth("wrong-secret") })),
        )
        .await;
    assert_eq!(status, 200);
    h.emit(&key, "wo.completed", json!({ "n": 4 })).await;
    let failed = eventually("the auth failure", WAIT, || async {
        attempts(&h, &key, id)
            .await
            .into_iter()
            .find(|l| l["outcome"] != "delivered")
    })
    .await;
    assert_eq!(failed["error"], "auth", "{failed}");
    let message = failed["error_message"].as_str().unwrap();
    assert!(
        message.contains("answered 401") && message.contains("invalid_client"),
        "{message}"
    );
    assert!(failed["status_code"].is_null(), "{failed}");
    assert_eq!(got.lock().unwrap().len(), 4);

    // Fixed: the retry delivers the held event.
    let (status, _) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{id}"),
            Some(json!({ "auth": oauth("idp-secret") })),
        )
        .await;
    assert_eq!(status, 200);
    eventually("the retried delivery", WAIT, || async {
        (got.lock().unwrap().len() == 5).then_some(())
    })
    .await;
    assert!(got.lock().unwrap()[4].contains("\"n\":4"));
    h.stop().await;
}

/// A certificate authority for the TLS tests.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Herald test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate for `names`, signed by `ca`: (certificate PEM, key PEM).
fn issue(ca: &Ca, names: &[&str], client: bool) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// An HTTPS receiver that requires a client certificate issued by `ca`.
/// Returns its address, the bodies it accepted and the handshakes it refused.
async fn mtls_receiver(ca: &Ca) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let (cert_pem, key_pem) = issue(ca, &["localhost", "127.0.0.1"], false);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let (b, r) = (bodies.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, bodies, refused) = (acceptor.clone(), b.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let bodies = bodies.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await?.to_bytes();
                            bodies
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                hyper::body::Bytes::from_static(b"ok"),
                            )))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, bodies, refused)
}

#[tokio::test]
async fn mutual_tls_presents_the_subscription_certificate() {
    let ca = ca();
    let (addr, bodies, refused) = mtls_receiver(&ca).await;
    let url = format!("https://localhost:{}/hook", addr.port());
    let h = Herald::start().await;
    let key = h.tenant("auth-mtls").await;
    let (cert_pem, key_pem) = issue(&ca, &["herald-client"], true);
    let with_cert = subscribe(
        &h,
        &key,
        json!({ "url": url, "event_types": ["mtls.with"],
                "tls": { "cert_pem": cert_pem, "key_pem": key_pem.clone(), "ca_pem": ca.cert.pem() } }),
    )
    .await;
    assert_eq!(with_cert["tls"]["key_set"], true);
    assert!(
        !with_cert.to_string().contains("PRIVATE KEY"),
        "{with_cert}"
    );
    // Trusts the receiver's authority but has no certificate to present.
    let without_cert = subscribe(
        &h,
        &key,
        json!({ "url": url, "event_types": ["mtls.without"], "tls": { "ca_pem": ca.cert.pem() } }),
    )
    .await;
    // No settings: the public roots do not know the test authority.
    let public_roots = subscribe(
        &h,
        &key,
        json!({ "url": url, "event_types": ["mtls.public"] }),
    )
    .await;

    h.emit(&key, "mtls.without", json!({ "n": 1 })).await;
    h.emit(&key, "mtls.public", json!({ "n": 2 })).await;
    h.emit(&key, "mtls.with", json!({ "n": 3 })).await;
    // The barrier: the delivery that presents the certificate arrives.
    eventually("the delivery with the client certificate", WAIT, || async {
        (!bodies.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    for (sub, what) in [(&without_cert, "without"), (&public_roots, "public")] {
        let id = sub["id"].as_str().unwrap();
        let failed = eventually("the refused attempt", WAIT, || async {
            attempts(&h, &key, id).await.into_iter().next()
        })
        .await;
        assert_ne!(failed["outcome"], "delivered", "{what}: {failed}");
        let class = failed["error"].as_str().unwrap();
        if what == "public" {
            // The receiver's certificate is checked, and the failure named.
            assert_eq!(class, "tls", "{failed}");
            assert!(
                failed["error_message"]
                    .as_str()
                    .unwrap()
                    .contains("UnknownIssuer"),
                "{failed}"
            );
        } else {
            // Refused by the receiver after the client's half of the handshake
            // (TLS 1.3): an alert, or a connection closed mid-request.
            assert!(["tls", "transport"].contains(&class), "{failed}");
        }
    }
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the receiver refused a handshake"
    );
    let delivered = bodies.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].contains("\"n\":3"), "{delivered:?}");
    let dir = h.stop().await;
    // A line of the key's base64 body is nowhere in the clear.
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(files_containing(dir.path(), key_line.as_bytes()).is_empty());
}

/// A CONNECT proxy that records each request head, then tunnels.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                log.lock().unwrap().push(head.clone());
                let target = head.split_whitespace().nth(1).unwrap().to_string();
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn deliveries_and_token_requests_go_through_the_egress_proxy() {
    let (proxy, seen) = connect_proxy().await;
    let (_, got, idp_addr, hook_addr) = oauth_servers().await;
    let rx = Receiver::start(200).await;
    // The real binary, configured by its environment, logging at debug.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("herald.log");
    let proxy_url = format!("http://egress:pr0xy-pass-5t@{proxy}");
    let h = HeraldProcess::start(
        &dir.path().join("data"),
        &log,
        &[],
        &[("HERALD_EGRESS_PROXY", &proxy_url), ("HERALD_LOG", "debug")],
    )
    .await
    .unwrap();
    let key = h.tenant("egress").await;
    for body in [
        json!({ "url": rx.url, "event_types": ["plain.*"] }),
        json!({ "url": format!("http://{hook_addr}/hook"), "event_types": ["oauth.*"],
                "auth": { "type": "oauth2", "token_url": format!("http://{idp_addr}/token"),
                          "client_id": "herald-client", "client_secret": "idp-secret" } }),
    ] {
        let (status, sub) = h
            .post(&key, "/api/v1/portal/webhooks/subscribe", body)
            .await;
        assert_eq!(status, 201, "{sub}");
    }
    for t in ["plain.sent", "oauth.sent"] {
        let (status, _) = h
            .post(
                &key,
                "/api/v1/integrations/events",
                json!({ "event_type": t, "payload": {} }),
            )
            .await;
        assert_eq!(status, 202);
    }
    eventually("both deliveries", WAIT, || async {
        (rx.received().len() == 1 && got.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    let heads = seen.lock().unwrap().clone();
    let rx_addr: SocketAddr = rx.url["http://".len()..]
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    // base64("egress:pr0xy-pass-5t")
    let proxy_auth = "Proxy-Authorization: Basic ZWdyZXNzOnByMHh5LXBhc3MtNXQ=";
    for target in [rx_addr, idp_addr, hook_addr] {
        let head = heads
            .iter()
            .find(|h| h.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")))
            .unwrap_or_else(|| panic!("no tunnel to {target}: {heads:?}"));
        assert!(head.contains(proxy_auth), "{head}");
    }
    h.stop().await;
    let printed = std::fs::read_to_string(&log).unwrap();
    assert!(
        !printed.contains("pr0xy-pass-5t"),
        "the proxy password was logged"
    );
}
