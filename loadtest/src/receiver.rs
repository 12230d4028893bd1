//! Webhook receivers: a printing one for humans, a counting one for runs.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use herald_engine::signing::{self, SigningSecret};
use time::OffsetDateTime;

/// `receiver` settings.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; deliveries go to http://ADDR/ (any path).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The subscription's secret, to verify signatures.
    #[arg(long)]
    secret: Option<String>,
}

/// Verifies a delivery's Standard Webhooks signature.
pub fn verify(secret: &SigningSecret, headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Ok(ts) = get("webhook-timestamp").parse::<i64>() else {
        return false;
    };
    signing::verify(
        secret,
        get("webhook-id"),
        ts,
        body,
        get("webhook-signature"),
    )
}

/// Runs the printing receiver until Ctrl-C.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let secret = args
        .secret
        .as_deref()
        .map(SigningSecret::parse)
        .transpose()?;
    let app = Router::new().fallback(post(move |headers: HeaderMap, body: Bytes| async move {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let verdict = match &secret {
            Some(s) if verify(s, &headers, &body) => "signature OK",
            Some(_) => "signature INVALID",
            None => "signature not checked (pass --secret)",
        };
        println!(
            "{} {} attempt {} — {verdict}\n  {}",
            get("webhook-id"),
            get("herald-event-type"),
            get("herald-attempt"),
            String::from_utf8_lossy(&body)
        );
        StatusCode::OK
    }));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("receiving webhooks on http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// What a counting receiver saw.
#[derive(Default)]
pub struct Tally {
    /// Deliveries per event id.
    pub per_event: HashMap<String, u32>,
    /// Deliveries whose signature did not verify.
    pub bad_signatures: u64,
    /// Emit-to-delivery latencies, microseconds.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
}

#[derive(Clone)]
struct CountState {
    secret: Arc<Mutex<Option<SigningSecret>>>,
    tally: Arc<Mutex<Tally>>,
}

/// A receiver that counts and verifies; returns its URL, the slot for its
/// secret (known after subscribing) and its tally.
pub async fn counting(
) -> anyhow::Result<(String, Arc<Mutex<Option<SigningSecret>>>, Arc<Mutex<Tally>>)> {
    let state = CountState {
        secret: Arc::default(),
        tally: Arc::new(Mutex::new(Tally {
            latency: Some(hdrhistogram::Histogram::new_with_bounds(
                1,
                3_600_000_000,
                3,
            )?),
            ..Tally::default()
        })),
    };
    let app = Router::new()
        .fallback(post(count))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, state.secret, state.tally))
}

async fn count(State(s): State<CountState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = OffsetDateTime::now_utc();
    let ok = s
        .secret
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|k| verify(k, &headers, &body));
    let occurred = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["occurred_at"].as_str().map(str::to_string))
        .and_then(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        });
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut tally = s.tally.lock().unwrap();
    if !ok {
        tally.bad_signatures += 1;
    }
    *tally.per_event.entry(id).or_default() += 1;
    if let (Some(at), Some(h)) = (occurred, tally.latency.as_mut()) {
        let micros = Duration::try_from(now - at)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let _ = h.record(micros.max(1));
    }
    StatusCode::OK
}
