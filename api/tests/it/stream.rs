//! The WebSocket event stream: filters, cursors, restarts, slow consumers.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::support::Herald;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Herald, key: &str, query: &str) -> Ws {
    let url = format!(
        "{}/api/v1/webhooks/stream?{query}",
        h.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (ws, _) = connect_async(req).await.expect("websocket connects");
    // The stream starts at the live end as soon as it is set up; give the
    // server a moment to have read the end offset.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws
}

async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("no error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Emits a barrier event (`n` = `mark`) that the stream's filter passes and
/// asserts that it is the next frame: nothing else was on its way before it.
async fn next_is_barrier(h: &Herald, key: &str, ws: &mut Ws, event_type: &str, mark: i64) {
    h.emit(key, event_type, json!({ "n": mark })).await;
    let frame = next_frame(ws).await;
    assert_eq!(
        frame["data"]["n"].as_i64(),
        Some(mark),
        "nothing but the barrier was due; got {frame}"
    );
}

#[tokio::test]
async fn stream_filters_by_tenant_and_type_and_resumes_from_a_cursor() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let other = h.tenant("globex").await;
    let mut ws = connect(&h, &key, "event_types=order.*,invoice.paid").await;
    h.emit(&key, "order.created", json!({"n": 1})).await;
    h.emit(&key, "shipment.sent", json!({"n": 2})).await;
    h.emit(&other, "order.created", json!({"n": 3})).await;
    h.emit(&key, "invoice.paid", json!({"n": 4})).await;
    h.emit(&key, "order.item.added", json!({"n": 5})).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_frame(&mut ws).await);
    }
    next_is_barrier(&h, &key, &mut ws, "invoice.paid", -1).await;
    let ns: Vec<i64> = got
        .iter()
        .map(|f| f["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [1, 4, 5]);
    for f in &got {
        assert_eq!(f["tenant_id"], "acme");
        for field in ["id", "type", "schema_version", "occurred_at", "cursor"] {
            assert!(f.get(field).is_some(), "{field} in {f}");
        }
    }
    drop(ws);
    h.emit(&key, "order.cancelled", json!({"n": 6})).await;
    // Resume after the first frame: the rest, then what came while away.
    let cursor = got[0]["cursor"].as_str().unwrap();
    let mut ws = connect(
        &h,
        &key,
        &format!("event_types=order.*,invoice.paid&cursor={cursor}"),
    )
    .await;
    let mut resumed = Vec::new();
    for _ in 0..4 {
        resumed.push(next_frame(&mut ws).await["data"]["n"].as_i64().unwrap());
    }
    assert_eq!(resumed, [4, 5, -1, 6]);
    next_is_barrier(&h, &key, &mut ws, "invoice.paid", -2).await;

    // Bad parameters are refused before the upgrade.
    let (s, body) = h.get(&key, "/api/v1/webhooks/stream?cursor=garbage").await;
    assert_eq!(s, 422, "{body}");
    let (s, _) = h
        .get(&key, "/api/v1/webhooks/stream?event_types=a..b")
        .await;
    assert_eq!(s, 422);
    let (s, body) = h.get(&key, "/api/v1/webhooks/stream").await;
    assert_eq!(s, 426, "{body}");
    let (s, _) = h.get("wrong", "/api/v1/webhooks/stream").await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn stream_resumes_from_a_cursor_after_a_restart() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let mut ws = connect(&h, &key, "").await;
    h.emit(&key, "a.b", json!({"n": 1})).await;
    let first = next_frame(&mut ws).await;
    drop(ws);
    h.emit(&key, "a.b", json!({"n": 2})).await;
    let dir = h.stop().await;

    let h = Herald::start_in(dir, |_| {}, |s| s).await;
    h.emit(&key, "a.b", json!({"n": 3})).await;
    let mut ws = connect(
        &h,
        &key,
        &format!("cursor={}", first["cursor"].as_str().unwrap()),
    )
    .await;
    let a = next_frame(&mut ws).await;
    let b = next_frame(&mut ws).await;
    assert_eq!(
        (a["data"]["n"].as_i64(), b["data"]["n"].as_i64()),
        (Some(2), Some(3))
    );
    next_is_barrier(&h, &key, &mut ws, "a.b", -1).await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_its_cursor_and_resumes_without_loss() {
    let h = Herald::start_in(
        tempfile::tempdir().unwrap(),
        |_| {},
        |mut s| {
            s.stream.buffer_frames = 4;
            s.stream.slow_consumer_after = Duration::from_millis(300);
            s
        },
    )
    .await;
    let key = h.tenant("acme").await;
    let mut ws = connect(&h, &key, "").await;
    // Never read while far more is emitted than the socket buffers hold.
    let filler = "x".repeat(200 * 1024);
    let mut ids = Vec::new();
    for n in 0..80 {
        let e = h
            .emit(&key, "bulk.item", json!({"n": n, "filler": filler}))
            .await;
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let close = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the server closes the slow consumer");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                seen.push(v["id"].as_str().unwrap().to_string());
            }
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a reason"),
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    let reason = close.reason.to_string();
    let cursor = reason
        .split("cursor=")
        .nth(1)
        .unwrap_or_else(|| panic!("the reason names a cursor: {reason}"))
        .to_string();
    assert!(seen.len() < ids.len(), "the consumer was cut off early");
    drop(ws);
    // Resume from the reported cursor: everything after it arrives.
    let mut ws = connect(&h, &key, &format!("cursor={cursor}")).await;
    let mut rest = Vec::new();
    while rest.last() != ids.last() {
        rest.push(
            next_frame(&mut ws).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut all: Vec<String> = seen.clone();
    all.extend(rest.iter().cloned());
    all.dedup();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "nothing missed");
    assert!(
        rest.len() <= ids.len() - seen.len() + 1,
        "at most one frame is seen twice"
    );
}

#[tokio::test]
async fn a_consumer_that_never_answers_pings_is_closed() {
    let h = Herald::start_in(
        tempfile::tempdir().unwrap(),
        |_| {},
        |mut s| {
            s.stream.ping_interval = Duration::from_millis(200);
            s
        },
    )
    .await;
    let key = h.tenant("acme").await;
    let mut ws = connect(&h, &key, "").await;
    // Not reading means not answering the pings.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut pings = 0;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pings >= 1);
    assert_eq!(u16::from(close.code), 4009, "{close:?}");
}

#[tokio::test]
async fn revoking_the_key_ends_an_open_stream() {
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
            json!({"name": "stream"}),
        )
        .await;
    let key = made["api_key"].as_str().unwrap();
    let mut ws = connect(&h, key, "").await;
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
