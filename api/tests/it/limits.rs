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
