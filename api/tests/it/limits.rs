//! Request head limits of the real `herald` binary: an oversized header
//! and too many headers are refused with 431 before any handler runs
//! (HTTP/1.1 and HTTP/2), a head just inside the limits is served, and the
//! server keeps serving normal requests afterwards.

use std::time::Duration;

use herald_api::server::{MAX_HEADERS, MAX_HEADER_BYTES};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::HeraldProcess;

/// Sends a raw HTTP/1.1 request head; returns the status line of the
/// answer and whether the server closed the connection after it.
async fn raw_http1(addr: &str, extra_headers: &[(String, String)]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                // A complete answer to a kept-alive connection: stop reading.
                let text = String::from_utf8_lossy(&answer);
                if text.starts_with("HTTP/1.1 200") && text.contains("\"status\":\"ok\"") {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&answer).to_string();
    let status_line = text.lines().next().unwrap_or("").to_string();
    (status_line, closed)
}

/// Sends a GET over HTTP/2 (prior knowledge) with `extra_headers`; returns
/// the status, or `None` when the request failed without one.
async fn http2_status(addr: &str, extra_headers: &[(String, String)]) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(format!("http://{addr}/healthz"));
    for (name, value) in extra_headers {
        req = req.header(name, value);
    }
    let response = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .ok()?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Some(status)
}

fn headers(count: usize, value_len: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-h{i}"), "v".repeat(value_len)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_too_many_headers_get_431_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let h = HeraldProcess::start(
        &tmp.path().join("data"),
        &tmp.path().join("herald.log"),
        &[],
        &[],
    )
    .await
    .unwrap();
    let addr = h.base.trim_start_matches("http://").to_string();
    let healthz = || async {
        let r = reqwest::get(h.url("/healthz")).await.unwrap();
        r.status().as_u16()
    };

    // Inside the limits: MAX_HEADERS - 2 headers (host is one), half the bytes.
    let near = headers(MAX_HEADERS - 2, MAX_HEADER_BYTES / 2 / MAX_HEADERS);
    let (status, closed) = raw_http1(&addr, &near).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(!closed);

    // One header larger than the whole head may be.
    let big = vec![("x-big".to_string(), "a".repeat(MAX_HEADER_BYTES + 1))];
    let (status, closed) = raw_http1(&addr, &big).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    assert!(closed, "the connection is closed after a 431");

    // A huge head: 1 MiB of headers. The server answers 431 and closes
    // with most of it unread, so the client may see a reset instead.
    let huge = headers(1024, 1024);
    let (status, closed) = raw_http1(&addr, &huge).await;
    assert!(
        status.starts_with("HTTP/1.1 431") || (status.is_empty() && closed),
        "{status}"
    );

    // Many small headers: over the count, well under the size.
    let many = headers(MAX_HEADERS + 1, 1);
    let (status, closed) = raw_http1(&addr, &many).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    assert!(closed);
    let (status, closed) = raw_http1(&addr, &headers(10_000, 1)).await;
    assert!(
        status.starts_with("HTTP/1.1 431") || (status.is_empty() && closed),
        "{status}"
    );

    // HTTP/2 (cleartext, prior knowledge): the same head size limit.
    assert_eq!(http2_status(&addr, &[]).await, Some(200));
    let refused = http2_status(&addr, &big).await;
    assert!(
        refused.is_none() || refused == Some(431),
        "HTTP/2 oversized head: {refused:?}"
    );

    // Normal requests still work, on new connections.
    for _ in 0..3 {
        assert_eq!(healthz().await, 200);
    }
    h.stop().await;
}

/// An emit request held open after its head, `length` bytes announced and
/// `body`'s first half sent; the rest is sent by [`HeldEmit::finish`].
struct HeldEmit {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldEmit {
    async fn start(addr: &str, key: &str, body: &[u8]) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/integrations/events HTTP/1.1\r\nhost: {addr}\r\n\
             authorization: Bearer {key}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..half]).await.unwrap();
        Self {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body; returns the answer's status line.
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut buf))
                .await
                .expect("an answer to the held emit")
                .unwrap();
            assert!(n > 0, "the connection closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer).to_string();
        text.lines().next().unwrap_or("").to_string()
    }
}

/// An emit body of about `bytes` bytes.
fn emit_body(n: u64, bytes: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "event_type": "work_order.completed",
        "payload": { "n": n, "pad": "x".repeat(bytes.saturating_sub(90)) },
    });
    serde_json::to_vec(&body).unwrap()
}

/// A Herald process with `--max-emit-bytes-in-flight budget`, its address,
/// and an HTTP client.
async fn with_emit_budget(
    tmp: &tempfile::TempDir,
    budget: &str,
) -> (HeraldProcess, String, reqwest::Client) {
    let h = HeraldProcess::start(
        &tmp.path().join("data"),
        &tmp.path().join("herald.log"),
        &["--max-emit-bytes-in-flight", budget],
        &[],
    )
    .await
    .unwrap();
    let addr = h.base.trim_start_matches("http://").to_string();
    (h, addr, reqwest::Client::new())
}

/// Posts `body` as an emit of `key`'s tenant.
async fn post_emit(
    http: &reqwest::Client,
    h: &HeraldProcess,
    key: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    http.post(h.url("/api/v1/integrations/events"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The `payload.n` of the events `key`'s tenant lists, sorted.
async fn listed_numbers(http: &reqwest::Client, h: &HeraldProcess, key: &str) -> Vec<u64> {
    let r = http
        .get(h.url("/api/v1/integrations/events?limit=100"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    let mut ns: Vec<u64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["n"].as_u64().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_beyond_the_bytes_in_flight_get_503_with_retry_after_and_are_taken_once_there_is_room(
) {
    let tmp = tempfile::tempdir().unwrap();
    let (h, addr, http) = with_emit_budget(&tmp, "3000").await;
    let key = h.tenant("acme").await;
    let emit = |body: Vec<u8>| post_emit(&http, &h, &key, body);
    let listed = || listed_numbers(&http, &h, &key);

    // One emit of 2,000 bytes, its body half sent: it holds 2,000 of the
    // 3,000 bytes until it is answered.
    let held = HeldEmit::start(&addr, &key, &emit_body(1, 2000)).await;
    // Barrier: a body of the same size that is not JSON is refused with 400
    // (and stores nothing) while there is room, and with 503 once the held
    // emit has its share.
    let refused = crate::support::eventually(
        "the held emit to take its share",
        Duration::from_secs(30),
        || async {
            let r = emit(vec![b'x'; 2000]).await;
            (r.status() == 503).then_some(r)
        },
    )
    .await;
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    // Its body was not read: the connection is not reused for the next call.
    assert_eq!(refused.headers()["connection"], "close");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("/overloaded"),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--max-emit-bytes-in-flight"),
        "{problem}"
    );

    // A valid emit that does not fit is refused the same, and not stored.
    let r = emit(emit_body(2, 1500)).await;
    assert_eq!(r.status(), 503);
    assert!(listed().await.is_empty(), "nothing accepted while full");
    // One that fits beside the held one is served.
    let r = emit(emit_body(3, 500)).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());

    // The held emit completes and is accepted; its share comes back, and
    // the refused emit, sent again, is accepted too.
    let status = held.finish().await;
    assert!(status.starts_with("HTTP/1.1 202"), "{status}");
    let r = emit(emit_body(2, 1500)).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    crate::support::eventually(
        "the three accepted events listed",
        Duration::from_secs(30),
        || async { (listed().await == [1, 2, 3]).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_quarter_of_the_emit_budget_gets_503_while_another_tenant_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 MiB in all: a tenant holds at most a quarter, 1 MiB (1,048,576
    // bytes).
    let (h, addr, http) = with_emit_budget(&tmp, "4194304").await;
    let (acme, globex) = (h.tenant("acme").await, h.tenant("globex").await);
    let listed = |key: String| {
        let (http, h) = (&http, &h);
        async move { listed_numbers(http, h, &key).await }
    };

    // Four emits of 250,000 bytes by acme (an event's payload is at most
    // 256 KiB), held half sent: 1,000,000 of its 1,048,576 bytes.
    let mut held = Vec::new();
    for n in 1..=4 {
        held.push(HeldEmit::start(&addr, &acme, &emit_body(n, 250_000)).await);
    }
    // Barrier: a 100,000-byte body that is not JSON is refused with 400
    // while acme has room, with 503 once the held emits have their shares.
    let refused = crate::support::eventually(
        "the held emits to take their shares",
        Duration::from_secs(30),
        || async {
            let r = post_emit(&http, &h, &acme, vec![b'x'; 100_000]).await;
            (r.status() == 503).then_some(r)
        },
    )
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    // Its body was not read: the connection is not reused for the next call.
    assert_eq!(refused.headers()["connection"], "close");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("/overloaded")
            && problem["detail"].as_str().unwrap().contains("this tenant"),
        "{problem}"
    );

    // Another tenant is served: the budget has 3 MiB left.
    let r = post_emit(&http, &h, &globex, emit_body(10, 100_000)).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    // A valid emit of acme past its share is refused and not stored.
    let r = post_emit(&http, &h, &acme, emit_body(5, 100_000)).await;
    assert_eq!(r.status(), 503);
    assert!(
        listed(acme.clone()).await.is_empty(),
        "nothing of acme's accepted"
    );

    // The held emits complete; acme's refused emit, sent again, is taken.
    for h in held {
        let status = h.finish().await;
        assert!(status.starts_with("HTTP/1.1 202"), "{status}");
    }
    let r = post_emit(&http, &h, &acme, emit_body(5, 100_000)).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    crate::support::eventually(
        "each tenant's accepted events listed",
        Duration::from_secs(30),
        || async {
            (listed(acme.clone()).await == [1, 2, 3, 4, 5] && listed(globex.clone()).await == [10])
                .then_some(())
        },
    )
    .await;
}
