//! The outbound HTTP client: one pooled hyper-util client shared by every
//! shard (HTTP/1.1 keep-alive, HTTP/2 by ALPN, rustls with the webpki roots,
//! so certificates are verified by default), behind the SSRF guard.
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
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use crate::{
    model::ErrorClass,
    ssrf::{find_ssrf_error, GuardedResolver, TargetGuard},
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

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

/// The shared, pooled delivery client.
#[derive(Clone)]
pub struct DeliveryClient {
    client: Client<Connector, Full<Bytes>>,
    guard: TargetGuard,
    timeout: Duration,
    body_limit: usize,
}

impl DeliveryClient {
    /// Builds the client.
    pub fn new(
        guard: TargetGuard,
        connect_timeout: Duration,
        timeout: Duration,
        body_limit: usize,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(guard.clone()));
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("the ring provider supports the default protocol versions")
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Self {
            client,
            guard,
            timeout,
            body_limit,
        }
    }

    /// POSTs `body` to `url` with `headers`, within `timeout` (or the
    /// client's default total timeout).
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
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );

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
    while let Some(e) = source {
        message = format!("{message}: {e}");
        if e.downcast_ref::<rustls::Error>().is_some() {
            class = ErrorClass::Tls;
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                class = ErrorClass::Timeout;
            }
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                class = ErrorClass::Tls;
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
