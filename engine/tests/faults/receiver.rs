//! A webhook receiver on loopback that answers 200 and keeps what it got.

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::{net::TcpListener, sync::Notify};

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id` (the event id).
    pub event_id: String,
    /// The envelope.
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Delivery>>,
    arrived: Notify,
}

/// The receiver; dropping it does not stop the server (the test ends it).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        let state = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let id = req
                                .headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or_default();
                            state.got.lock().push(Delivery { event_id: id, body });
                            state.arrived.notify_waiters();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/hooks"),
            inner,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Delivery> {
        self.inner.got.lock().clone()
    }

    /// Deliveries per event id.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for d in self.inner.got.lock().iter() {
            *counts.entry(d.event_id.clone()).or_default() += 1;
        }
        counts
    }

    /// Waits until `event_id` has arrived; panics after `limit` (a guard
    /// against a hang, not a timing assertion).
    pub async fn wait_for(&self, event_id: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.inner.arrived.notified();
            if self.inner.got.lock().iter().any(|d| d.event_id == event_id) {
                return;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{event_id} was not delivered within {limit:?}");
            }
        }
    }
}
