//! `GET /api/v1/webhooks/stream`: a WebSocket carrying the tenant's events.
//!
//! What it guarantees:
//! - Each text frame is the event envelope (DESIGN §4) plus `"cursor"`;
//!   `?cursor=` resumes exactly after that event (the cursor is a log
//!   position, so this holds across server restarts). Without a cursor the
//!   stream starts at the live end of the log.
//! - Filters (`?event_types=a.b,c.*`) keep exact types and families.
//! - Memory per connection is bounded: a reader task moves matching events
//!   from the log into a queue of at most `buffer_frames` frames; the writer
//!   sends them. When the queue stays full for `slow_consumer_after` the
//!   consumer is too slow: the
//!   connection is closed with code 4008 and a reason naming the last cursor
//!   whose frame was fully handed to the network, so the consumer resumes
//!   from there and misses nothing (it may see a frame twice; envelope ids
//!   identify duplicates).
//! - A ping every `ping_interval`; no pong for two intervals closes the
//!   connection (code 4009).
//! - Browsers, which cannot set `Authorization` on a WebSocket, send the key
//!   as the subprotocol `herald.bearer.<key>` next to `herald.v1`; the
//!   server selects `herald.v1`, so the key never comes back in a header.
//!   Keys are never taken from the query string (it ends up in logs).
//! - The key is checked again at every ping: a revoked key ends the stream
//!   (code 4001).
//! - Readers wake on appends (the log's append signal) rather than polling.

use std::time::{Duration, Instant};

use axum::{
    extract::{
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
        State,
    },
    response::Response,
};
use futures_util::{SinkExt, StreamExt};
use herald_engine::{log::LogPosition, Engine};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::non_empty;
use crate::{
    error::ApiError,
    extract::{ApiQuery, StreamTenant, STREAM_SUBPROTOCOL},
    AppState, StreamConfig,
};

/// Close code of a consumer that could not keep up.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code of a consumer that stopped answering pings.
pub const CLOSE_NO_PONG: u16 = 4009;
/// Close code when the key that opened the stream was revoked.
pub const CLOSE_REVOKED: u16 = 4001;
/// Close code when the log cannot be read.
pub const CLOSE_UNAVAILABLE: u16 = 1011;
/// Log records read per batch.
const READ_BATCH: usize = 256;

/// `GET /api/v1/webhooks/stream` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated event types and `prefix.*` families (default: all).
    pub event_types: Option<String>,
    /// The `cursor` of the last frame received; resume after it.
    pub cursor: Option<String>,
}

/// Opens the tenant's event stream (WebSocket upgrade).
///
/// Authenticate with `Authorization: Bearer <key>`, or (browsers) by offering
/// the subprotocols `herald.v1` and `herald.bearer.<key>`; the server then
/// selects `herald.v1`. Keys in the query string are never accepted.
#[utoipa::path(get, path = "/api/v1/webhooks/stream", tag = "stream",
    params(StreamQuery), security(("api_key" = ["events:read"])),
    responses(
        (status = 101, description = "Switching to WebSocket: one text frame per event, the envelope plus `cursor`. Close codes: 4008 slow consumer (the reason names the cursor to resume from), 4009 no pong, 4001 API key revoked or expired, 1011 log unavailable."),
        (status = 426, description = "Not a WebSocket upgrade request", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    auth: StreamTenant,
    ApiQuery(q): ApiQuery<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let StreamTenant {
        tenant,
        key,
        via_subprotocol,
    } = auth;
    let filters: Vec<String> = non_empty(q.event_types)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    state.engine.validate_stream_filters(&filters)?;
    let start = state
        .engine
        .stream_start(&tenant, non_empty(q.cursor).as_deref())
        .await?;
    let mut upgrade = upgrade.map_err(|_| ApiError::upgrade_required())?;
    if via_subprotocol {
        // Select the plain protocol name: the key is never echoed back.
        upgrade = upgrade.protocols([STREAM_SUBPROTOCOL]);
    }
    let engine = state.engine.clone();
    let config = state.stream.clone();
    // The key (from the header or the subprotocol) is kept to notice a
    // revocation while the stream is open.
    Ok(upgrade
        .write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| {
            run(socket, engine, Auth { tenant, key }, filters, start, config)
        }))
}

struct Frame {
    text: String,
    cursor: String,
}

enum ReaderEnd {
    Overflow,
    Failed,
    Done,
}

/// Moves matching events from the log into the bounded queue.
async fn read_log(
    engine: Arc<Engine>,
    tenant: String,
    filters: Vec<String>,
    mut next: LogPosition,
    tx: mpsc::Sender<Frame>,
    slow_after: Duration,
    stop: CancellationToken,
) -> ReaderEnd {
    let mut appends = engine.log().appends();
    loop {
        // Mark the signal seen before reading, so no append slips between.
        if let Some(rx) = appends.as_mut() {
            rx.borrow_and_update();
        }
        let batch = match engine
            .stream_read(&tenant, &filters, next, READ_BATCH)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "stream cannot read the event log");
                return ReaderEnd::Failed;
            }
        };
        let caught_up = batch.next == next;
        next = batch.next;
        for f in batch.frames {
            let frame = Frame {
                text: f.text,
                cursor: f.cursor,
            };
            match tokio::time::timeout(slow_after, tx.send(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return ReaderEnd::Done,
                Err(_) => return ReaderEnd::Overflow,
            }
        }
        if !caught_up {
            continue;
        }
        match appends.as_mut() {
            Some(rx) => tokio::select! {
                changed = rx.changed() => if changed.is_err() { return ReaderEnd::Done },
                _ = stop.cancelled() => return ReaderEnd::Done,
            },
            None => tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.cancelled() => return ReaderEnd::Done,
            },
        }
    }
}

/// Who the stream belongs to, and the key that opened it.
struct Auth {
    tenant: String,
    key: String,
}

async fn run(
    socket: WebSocket,
    engine: Arc<Engine>,
    auth: Auth,
    filters: Vec<String>,
    start: LogPosition,
    config: StreamConfig,
) {
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Frame>(config.buffer_frames.max(1));
    let stop = CancellationToken::new();
    let mut reader = tokio::spawn(read_log(
        engine.clone(),
        auth.tenant.clone(),
        filters,
        start,
        tx,
        config.slow_consumer_after,
        stop.clone(),
    ));
    let mut last_cursor = herald_engine::encode_cursor(start);
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let mut reader_end: Option<ReaderEnd> = None;

    let close = 'conn: loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else {
                    // The reader stopped and everything it queued is sent.
                    break match reader_end.take() {
                        Some(ReaderEnd::Overflow) => Some(slow(&last_cursor)),
                        Some(ReaderEnd::Failed) => Some((CLOSE_UNAVAILABLE, "event log unavailable; reconnect later".to_string())),
                        _ => None,
                    };
                };
                // A send blocks while the consumer does not read; an overflow
                // meanwhile ends the connection without waiting for it.
                let send = sink.send(Message::Text(frame.text.into()));
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        sent = &mut send => {
                            if sent.is_err() { break 'conn None; }
                            last_cursor = frame.cursor;
                            break;
                        }
                        end = &mut reader, if reader_end.is_none() => {
                            match end {
                                Ok(ReaderEnd::Overflow) => break 'conn Some(slow(&last_cursor)),
                                Ok(e) => reader_end = Some(e),
                                Err(_) => reader_end = Some(ReaderEnd::Failed),
                            }
                        }
                    }
                }
            }
            end = &mut reader, if reader_end.is_none() => {
                reader_end = Some(end.unwrap_or(ReaderEnd::Failed));
                if matches!(reader_end, Some(ReaderEnd::Overflow)) {
                    break Some(slow(&last_cursor));
                }
            }
            _ = ping.tick() => {
                // A key revoked while the stream is open ends it.
                match engine.authenticate(&auth.key).await {
                    Ok(Some(g)) if g.expired_at(herald_engine::clock::now_ms()) => {
                        break Some((CLOSE_REVOKED, "API key expired".to_string()))
                    }
                    Ok(Some(g)) if g.tenant_id == auth.tenant => {}
                    Ok(_) => break Some((CLOSE_REVOKED, "API key revoked".to_string())),
                    Err(_) => {}
                }
                if last_pong.elapsed() > config.ping_interval * 2 {
                    break Some((CLOSE_NO_PONG, format!("no pong within {} s", (config.ping_interval * 2).as_secs())));
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
            msg = incoming.next() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    stop.cancel();
    reader.abort();
    drop(rx);
    if let Some((code, reason)) = close {
        tracing::info!(code, %reason, "closing an event stream");
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(config.close_timeout, async {
            let _ = sink.send(frame).await;
            // Give the consumer the time to read up to the close frame.
            while let Some(Ok(msg)) = incoming.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

fn slow(last_cursor: &str) -> (u16, String) {
    (
        CLOSE_SLOW_CONSUMER,
        format!("slow consumer; resume with cursor={last_cursor}"),
    )
}
