//! The web portal: served from the binary with the right headers, and the
//! browser way of authenticating the WebSocket stream (a subprotocol).
//! The portal itself is tested in Chromium by `scripts/test-portal`.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, Error as WsError, Message},
};

use crate::support::Herald;

#[tokio::test]
async fn the_portal_is_served_with_content_types_cache_headers_and_a_csp() {
    let h = Herald::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(h.url("/portal")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], "/portal/");

    let r = http.get(h.url("/portal/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let headers = r.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>Herald portal</title>"), "{html}");

    // Every asset the page references is served, typed and cached for good.
    let assets: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/portal/assets/"))
        .collect();
    assert!(
        assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")),
        "{assets:?}"
    );
    for a in assets {
        let r = http.get(h.url(a)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{a}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let want = if a.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert_eq!(ct, want, "{a}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(!r.bytes().await.unwrap().is_empty());
    }

    let r = http
        .get(h.url("/portal/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "unknown portal files are problem+json 404s"
    );
}

async fn ws_with_protocols(
    h: &Herald,
    protocols: &str,
    query: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
    ),
    WsError,
> {
    let url = format!(
        "{}/api/v1/webhooks/stream{query}",
        h.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    connect_async(req).await
}

fn status_of(e: WsError) -> u16 {
    match e {
        WsError::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn browsers_authenticate_the_stream_with_a_subprotocol_that_is_never_echoed() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let other = h.tenant("globex").await;

    let (mut ws, res) = ws_with_protocols(&h, &format!("herald.v1, herald.bearer.{key}"), "")
        .await
        .expect("the subprotocol key is accepted");
    assert_eq!(
        res.headers()["sec-websocket-protocol"],
        "herald.v1",
        "the server selects herald.v1 and never sends the key back"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.emit(&other, "order.created", json!({"n": 0})).await;
    h.emit(&key, "order.created", json!({"n": 1})).await;
    let frame = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            break serde_json::from_str::<Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(frame["tenant_id"], "acme", "only the key's tenant: {frame}");
    assert_eq!(frame["data"]["n"], 1);

    // A wrong key, no key, or a key in the query string: refused before the upgrade.
    let e = ws_with_protocols(&h, "herald.v1, herald.bearer.hk_wrong", "")
        .await
        .unwrap_err();
    assert_eq!(status_of(e), 401);
    let e = ws_with_protocols(&h, "herald.v1", "").await.unwrap_err();
    assert_eq!(status_of(e), 401);
    for q in [
        format!("?api_key={key}"),
        format!("?key={key}"),
        format!("?access_token={key}"),
    ] {
        let e = ws_with_protocols(&h, "herald.v1", &q).await.unwrap_err();
        assert_eq!(status_of(e), 401, "{q}");
    }
    // The Authorization header still wins when both are present.
    let url = format!(
        "{}/api/v1/webhooks/stream",
        h.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer hk_wrong".parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("herald.v1, herald.bearer.{key}").parse().unwrap(),
    );
    assert_eq!(status_of(connect_async(req).await.unwrap_err()), 401);
}

#[tokio::test]
async fn a_subprotocol_stream_outlives_its_pings_and_ends_when_its_key_is_revoked() {
    let h = Herald::start_in(
        tempfile::tempdir().unwrap(),
        |_| {},
        |mut s| {
            s.stream.ping_interval = Duration::from_millis(200);
            s
        },
    )
    .await;
    let admin_key = h.tenant("acme").await;
    let (_, made) = h
        .post(
            &admin_key,
            "/api/v1/portal/api-keys",
            json!({"name": "browser"}),
        )
        .await;
    let key = made["api_key"].as_str().unwrap();
    let (mut ws, _) = ws_with_protocols(&h, &format!("herald.v1, herald.bearer.{key}"), "")
        .await
        .unwrap();
    // Several pings later (each re-checks the key, and reading answers them)
    // the stream is still open and works.
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    let mut pings = 0;
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings");
    h.emit(&admin_key, "a.b", json!({"n": 1})).await;
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
        {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected the event, got {other:?}"),
        }
    };
    assert_eq!(frame["data"]["n"], 1);
    let (s, _) = h
        .call(
            "DELETE",
            &admin_key,
            &format!("/api/v1/portal/api-keys/{}", made["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 4001, "{close:?}");
}
