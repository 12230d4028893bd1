//! The HTTP server the API runs on: axum's router on hyper-util's
//! HTTP/1.1 + HTTP/2 (cleartext) connection builder, with limits on what a
//! client may send before the router sees a request.
//!
//! - **Request head size**: at most [`MAX_HEADER_BYTES`] of request line
//!   and headers (HTTP/1.1: hyper's read buffer; HTTP/2: the
//!   `SETTINGS_MAX_HEADER_LIST_SIZE` Herald advertises). Over it, HTTP/1.1
//!   gets `431 Request Header Fields Too Large` and the connection is
//!   closed; HTTP/2 gets the stream refused.
//! - **Header count**: at most [`MAX_HEADERS`] headers (HTTP/1.1), else 431.
//! - **Slow heads**: a client that has not sent its whole request head
//!   within [`HEADER_READ_TIMEOUT`] is disconnected.
//! - Bodies are limited by the router ([`crate::MAX_BODY_BYTES`], 413).
//!
//! Shutdown is graceful: on the signal the listener closes, connections
//! finish the requests they are serving, and [`serve`] returns once they
//! have (upgraded WebSocket connections are the stream handler's to end).

use std::{future::Future, io, time::Duration};

use axum::{body::Body, extract::Request, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Largest request head (request line and headers), in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers one HTTP/1.1 request may carry.
pub const MAX_HEADERS: usize = 64;
/// How long a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection builder with Herald's limits.
fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // The read buffer bounds the request head: a head that does not fit
        // is refused with 431 (hyper's minimum buffer is 8 KiB).
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        // WebSockets over HTTP/2 (RFC 8441), as axum::serve allows.
        .enable_connect_protocol();
    builder
}

/// Serves `router` on `listener` until `shutdown` completes, then waits
/// for the connections' requests in flight to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|req: Request<Incoming>| req.map(Body::new)),
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of one incoming connection (not of the listener).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
