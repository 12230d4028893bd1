//! Where the delivery client's connections go: straight to the target, or
//! through an HTTP CONNECT proxy (`--egress-proxy`), so that operators can
//! send every delivery from one static address.
//!
//! The SSRF guard holds either way. Straight, the guarded resolver admits
//! only the addresses the policy allows. Through the proxy, Herald resolves
//! and checks the target itself and asks the proxy to `CONNECT` to that
//! checked address, never to a name the proxy would resolve on its own. TLS
//! still runs end to end with the target (the proxy sees only the tunnel),
//! and its certificate is checked against the URL's host name.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    egress_proxy::EgressProxy,
    ssrf::{GuardedResolver, SsrfError, TargetGuard},
};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Longest proxy answer head read before giving up.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// The connector under the TLS layer: straight, or through the proxy.
#[derive(Clone)]
pub enum Egress {
    /// Straight to the target, names resolved by the guarded resolver.
    Direct(HttpConnector<GuardedResolver>),
    /// Through a CONNECT proxy.
    Proxy(Arc<Tunnel>),
}

impl Egress {
    /// Straight connections, or tunnels through `proxy` when one is set.
    pub fn new(guard: TargetGuard, connect_timeout: Duration, proxy: Option<EgressProxy>) -> Self {
        match proxy {
            Some(proxy) => Self::Proxy(Arc::new(Tunnel {
                proxy,
                guard,
                connect_timeout,
            })),
            None => {
                let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(guard));
                http.enforce_http(false);
                http.set_connect_timeout(Some(connect_timeout));
                http.set_nodelay(true);
                Self::Direct(http)
            }
        }
    }
}

impl tower::Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Direct(http) => http.poll_ready(cx).map_err(Into::into),
            Self::Proxy(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        match self {
            Self::Direct(http) => {
                let connecting = http.call(target);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Self::Proxy(tunnel) => Box::pin(tunnel.clone().open(target)),
        }
    }
}

/// Opens tunnels through one proxy.
pub struct Tunnel {
    proxy: EgressProxy,
    guard: TargetGuard,
    connect_timeout: Duration,
}

impl Tunnel {
    /// Resolves and checks `target`, then asks the proxy for a tunnel to it.
    async fn open(self: Arc<Self>, target: Uri) -> Result<TokioIo<TcpStream>, BoxError> {
        let address = self.resolve(&target).await?;
        let handshake = async {
            let mut stream = TcpStream::connect((self.proxy.host(), self.proxy.port()))
                .await
                .map_err(|e| format!("egress proxy {}: {e}", self.proxy))?;
            stream.set_nodelay(true)?;
            let mut request = format!("CONNECT {address} HTTP/1.1\r\nHost: {address}\r\n");
            if let Some(auth) = self.proxy.authorization() {
                request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes()).await?;
            let status = read_answer_head(&mut stream).await?;
            let ok = status
                .split_whitespace()
                .nth(1)
                .is_some_and(|code| code.starts_with('2'));
            if !ok {
                return Err(format!(
                    "egress proxy {} refused the tunnel to {address}: {status}",
                    self.proxy
                )
                .into());
            }
            Ok::<_, BoxError>(TokioIo::new(stream))
        };
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no tunnel through egress proxy {} within {:?}",
                    self.proxy, self.connect_timeout
                ),
            )
            .into()),
        }
    }

    /// The first address of the target the guard admits.
    async fn resolve(&self, target: &Uri) -> Result<SocketAddr, BoxError> {
        let host = target.host().ok_or("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = target
            .port_u16()
            .unwrap_or(if target.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let refused = |err: SsrfError| io::Error::new(io::ErrorKind::PermissionDenied, err);
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.guard.check_ip(ip).map_err(refused)?;
            return Ok(SocketAddr::new(ip, port));
        }
        let found = tokio::net::lookup_host((host, port))
            .await?
            .find(|a| self.guard.check_ip(a.ip()).is_ok());
        found.ok_or_else(|| {
            refused(SsrfError::NoAddress {
                host: host.to_string(),
            })
            .into()
        })
    }
}

/// Reads the proxy's answer up to the blank line and returns its status
/// line. Reads byte by byte: what follows the head belongs to the tunnel.
async fn read_answer_head(stream: &mut TcpStream) -> Result<String, BoxError> {
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER_HEAD {
            return Err("the egress proxy's answer head is too long".into());
        }
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err("the egress proxy closed the connection before answering".into());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT proxy that records each request line and tunnels.
    async fn proxy() -> (SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let line = read_answer_head(&mut client).await.unwrap();
                    log.lock().push(line.clone());
                    let target = line.split_whitespace().nth(1).unwrap().to_string();
                    let mut upstream = TcpStream::connect(target).await.unwrap();
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn tunnels_go_to_checked_addresses_only() {
        let (addr, seen) = proxy().await;
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let proxy: EgressProxy = format!("http://{addr}").parse().unwrap();
        let uri: Uri = format!("http://localhost:{}/hook", target_addr.port())
            .parse()
            .unwrap();

        // The default policy refuses loopback: nothing reaches the proxy.
        let mut refused = Egress::new(
            TargetGuard::default(),
            Duration::from_secs(5),
            Some(proxy.clone()),
        );
        let Err(err) = tower::Service::call(&mut refused, uri.clone()).await else {
            panic!("a tunnel to a refused address");
        };
        assert!(crate::ssrf::find_ssrf_error(&*err).is_some(), "{err}");
        assert!(seen.lock().is_empty());

        // Admitted: the proxy is asked for the resolved, checked address.
        let guard = TargetGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let mut admitted = Egress::new(guard, Duration::from_secs(5), Some(proxy));
        let mut stream = tower::Service::call(&mut admitted, uri)
            .await
            .unwrap()
            .into_inner();
        let (mut accepted, _) = target.accept().await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(
            *seen.lock(),
            vec![format!("CONNECT {target_addr} HTTP/1.1")]
        );
    }
}
