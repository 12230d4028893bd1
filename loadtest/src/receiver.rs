//! The printing receiver (`herald-loadtest receiver`) and the signature
//! check every receiver of the farm uses.

use std::net::SocketAddr;

use axum::{body::Bytes, http::HeaderMap, http::StatusCode, routing::post, Router};
use herald_engine::{
    ed25519::{self, PublicKey},
    signing::{self, SigningSecret},
};

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

/// What a subscription's deliveries are checked with: its HMAC secret
/// (`v1`; a subscription signing with `both` is checked by this one, which
/// costs the receiver least) or, for `ed25519` only, its public key (`v1a`).
pub enum Verifier {
    /// The `whsec_` secret.
    Hmac(SigningSecret),
    /// The `whpk_` public key.
    Ed25519(PublicKey),
}

impl Verifier {
    /// Verifies a delivery's Standard Webhooks signature.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let Ok(ts) = get("webhook-timestamp").parse::<i64>() else {
            return false;
        };
        let (id, header) = (get("webhook-id"), get("webhook-signature"));
        match self {
            Self::Hmac(secret) => signing::verify(secret, id, ts, body, header),
            Self::Ed25519(key) => ed25519::verify(key, id, ts, body, header),
        }
    }
}

/// Verifies a delivery's `v1` signature with `secret`.
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
