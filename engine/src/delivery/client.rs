//! The outbound HTTP client: one pooled hyper-util client shared by every
//! shard (HTTP/1.1 keep-alive, HTTP/2 by ALPN, rustls with the webpki roots,
//! so certificates are verified by default), behind the SSRF guard, straight
//! or through the egress proxy ([`super::egress`]). A subscription with TLS
//! settings (a client certificate, its own authorities) gets a client of its
//! own built the same way ([`DeliveryClient::with_tls`]).
//!
//! The guard runs twice: on the URL (IP literals, in every spelling the URL
//! parser normalises) and in the DNS resolver on the addresses actually
//! connected to, which is what defeats DNS rebinding. Redirects are never
//! followed; a 3xx is a failure whose `Location` is recorded.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::egress::Egress;
use crate::{
    egress_proxy::EgressProxy,
    endpoint_auth::ClientTls,
    model::ErrorClass,
    ssrf::{find_ssrf_error, TargetGuard},
};

/// What the endpoint answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The response body, truncated to the configured limit.
    pub body: String,
    /// The `Location` header, for redirects.
    pub location: Option<String>,
    /// The `Retry-After` header, as a delay from now.
    pub retry_after: Option<Duration>,
    /// Time from request start to the end of the (truncated) body.
    pub latency: Duration,
}

impl Answer {
    /// Whether this answer counts as delivered (2xx).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why no answer came.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// The error class recorded in the delivery log.
    pub class: ErrorClass,
    /// Detail for humans.
    pub message: String,
    /// Time spent before failing.
    pub latency: Duration,
}

type Connector = HttpsConnector<Egress>;

/// The shared, pooled delivery client.
#[derive(Clone)]
pub struct DeliveryClient {
    client: Client<Connector, Full<Bytes>>,
    egress: Egress,
    guard: TargetGuard,
    timeout: Duration,
    body_limit: usize,
}

impl DeliveryClient {
    /// Builds the client: connections straight to the targets, or through
    /// `proxy`.
    pub fn new(
        guard: TargetGuard,
        connect_timeout: Duration,
        timeout: Duration,
        body_limit: usize,
        proxy: Option<EgressProxy>,
    ) -> Self {
        let egress = Egress::new(guard.clone(), connect_timeout, proxy);
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(public_roots())
            .with_no_client_auth();
        Self {
            client: pooled(egress.clone(), tls),
            egress,
            guard,
            timeout,
            body_limit,
        }
    }

    /// A client like this one (same egress, guard and limits) with `tls`:
    /// its client certificate, and its authorities instead of the public
    /// roots. Its connections are its own, never shared with other
    /// subscriptions.
    pub fn with_tls(&self, tls: &ClientTls) -> Result<Self, String> {
        let roots = tls.roots()?.unwrap_or_else(public_roots);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (tls.chain()?, tls.key()?) {
            (Some(chain), Some(key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Self {
            client: pooled(self.egress.clone(), config),
            egress: self.egress.clone(),
            guard: self.guard.clone(),
            timeout: self.timeout,
            body_limit: self.body_limit,
        })
    }

    /// POSTs `body` to `url` with `headers` (`Content-Type:
    /// application/json` unless they say otherwise), within `timeout` (or
    /// the client's default total timeout).
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Answer, SendError> {
        let timeout = timeout.unwrap_or(self.timeout);
        let started = Instant::now();
        let fail = |class, message: String| SendError {
            class,
            message,
            latency: started.elapsed(),
        };
        let checked = self.guard.check_url(url).map_err(|e| {
            let class = if e.is_blocked() {
                ErrorClass::SsrfBlocked
            } else {
                ErrorClass::Connect
            };
            fail(class, e.to_string())
        })?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(checked.as_str())
            .body(Full::new(body))
            .map_err(|e| fail(ErrorClass::Connect, format!("invalid request: {e}")))?;
        *request.headers_mut() = headers;
        request
            .headers_mut()
            .entry(header::CONTENT_TYPE)
            .or_insert(header::HeaderValue::from_static("application/json"));

        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| classify(&e))?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // Keep only the first `body_limit` bytes; a larger body is cut off.
            let mut body = Vec::new();
            let mut stream = response.into_body();
            while let Some(frame) = stream.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    let room = self.body_limit.saturating_sub(body.len());
                    body.extend_from_slice(&data[..data.len().min(room)]);
                    if room < data.len() {
                        break;
                    }
                }
            }
            Ok::<_, (ErrorClass, String)>((
                status,
                location,
                retry_after,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(fail(
                ErrorClass::Timeout,
                format!("no complete answer within {timeout:?}"),
            )),
            Ok(Err((class, message))) => Err(fail(class, message)),
            Ok(Ok((status, location, retry_after, body))) => Ok(Answer {
                status,
                body,
                location,
                retry_after,
                latency: started.elapsed(),
            }),
        }
    }
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The public (webpki) roots, which every endpoint without its own
/// authorities is checked against.
fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A pooled client over `egress` with `tls` (HTTP/1.1, HTTP/2 by ALPN).
fn pooled(egress: Egress, tls: rustls::ClientConfig) -> Client<Connector, Full<Bytes>> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(egress);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .build(https)
}

/// Connections kept open to one host between requests. Subscriptions to the
/// same host share its connections, up to `max_in_flight` (32 by default)
/// each at once: with 256, 100 subscriptions to one receiver closed most
/// connections after each request and opened new ones (4 % of the server's
/// CPU in connects, scenario B of docs/performance.md). Idle ones close
/// after 90 s.
const IDLE_PER_HOST: usize = 4_096;

/// Parses `Retry-After`: delay-seconds or an HTTP date (a date in the past is 0).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sorts a client error into the delivery log's error classes.
fn classify(err: &hyper_util::client::legacy::Error) -> (ErrorClass, String) {
    let mut message = err.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    let mut class = if err.is_connect() {
        ErrorClass::Connect
    } else {
        ErrorClass::Transport
    };
    if let Some(ssrf) = find_ssrf_error(err) {
        return (ErrorClass::SsrfBlocked, ssrf.to_string());
    }
    // An io::Error's source() skips its payload, and hyper-rustls wraps the
    // TLS stack's io::Error (whose payload is the rustls::Error) in another
    // one: step into payloads, so a certificate failure is `tls`, not
    // `connect`. A payload prints as its io::Error did: say it once.
    let mut last = String::new();
    while let Some(e) = source {
        let text = e.to_string();
        if text != last {
            message = format!("{message}: {text}");
        }
        last = text;
        if e.is::<rustls::Error>() {
            class = ErrorClass::Tls;
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                class = ErrorClass::Timeout;
            }
            if let Some(inner) = io.get_ref() {
                source = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        source = e.source();
    }
    (class, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(61);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!(
            parsed > Duration::from_secs(55) && parsed <= Duration::from_secs(61),
            "{parsed:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
