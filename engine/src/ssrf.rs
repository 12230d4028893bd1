//! Outbound target guard: SSRF protection for deliveries.
//!
//! Tenants choose the URLs Herald posts to, so without a guard Herald could be made to
//! reach services visible only from inside its network: cloud metadata at
//! `169.254.169.254`, admin ports on loopback, private subnets.
//!
//! Guarantees:
//! - [`TargetGuard::check_ip`] refuses every address that is not globally routable
//!   (private, loopback, link-local, shared, documentation, multicast, reserved...).
//!   IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)
//!   are judged by that IPv4, so `::ffff:127.0.0.1` does not slip through.
//! - Operators may allow ranges (`HERALD_ALLOW_TARGETS`, e.g. `127.0.0.0/8` in tests);
//!   the allow-list wins over the refusal list.
//! - [`TargetGuard::check_url`] accepts only `http`/`https` URLs without credentials and
//!   checks IP-literal hosts in any spelling the `url` crate normalises
//!   (`http://2130706433/`, `http://0x7f.1/` are `127.0.0.1`).
//! - [`GuardedResolver`] is the DNS resolver of the HTTP connector: it drops every
//!   resolved address the guard refuses, so the address checked is the one connected
//!   to. A name that resolves to a public address when registered and to a private one
//!   when delivered to (DNS rebinding) is still refused.
//!
//! hyper's `HttpConnector` connects to IP-literal hosts without asking the resolver,
//! so [`TargetGuard::check_url`] must run before every request, not only at
//! registration; domain names are covered by [`GuardedResolver`].

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use url::{Host, Url};

/// Ranges that are not globally routable. IPv6 forms embedding an IPv4 address are
/// not listed: they are judged by the embedded address (see [`embedded_ipv4`]).
const NON_PUBLIC_NETS: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // shared address space (carrier-grade NAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, cloud metadata
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation (TEST-NET-1)
    "192.88.99.0/24",  // 6to4 relay anycast
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation (TEST-NET-2)
    "203.0.113.0/24",  // documentation (TEST-NET-3)
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, including broadcast 255.255.255.255
    // IPv6
    "::/128",        // unspecified
    "::1/128",       // loopback
    "fc00::/7",      // unique local
    "fe80::/10",     // link-local
    "fec0::/10",     // site-local (deprecated)
    "ff00::/8",      // multicast
    "2001:db8::/32", // documentation
    "100::/64",      // discard-only
];

static NON_PUBLIC: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    NON_PUBLIC_NETS
        .iter()
        .map(|net| net.parse().expect("NON_PUBLIC_NETS holds valid CIDRs"))
        .collect()
});

/// Why a delivery target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The URL does not parse or has no host.
    #[error("invalid target URL: {0}")]
    InvalidUrl(String),
    /// The scheme is neither `http` nor `https`.
    #[error("unsupported URL scheme \"{0}\": only http and https are allowed")]
    Scheme(String),
    /// The URL carries a username or password.
    #[error("target URL must not contain a username or password")]
    Credentials,
    /// The destination address is not public and not allowed.
    #[error("destination {ip} is not a public address; allow it with HERALD_ALLOW_TARGETS")]
    Blocked {
        /// The refused address.
        ip: IpAddr,
    },
    /// The host resolved to no address, or only to refused ones.
    #[error(
        "{host} has no public address (every resolved address was refused or none was found); \
         allow it with HERALD_ALLOW_TARGETS"
    )]
    NoAddress {
        /// The host name that was resolved.
        host: String,
    },
}

impl SsrfError {
    /// Whether the target was refused because of where it points (a non-public
    /// destination), as opposed to a malformed URL.
    pub fn is_blocked(&self) -> bool {
        matches!(self, Self::Blocked { .. } | Self::NoAddress { .. })
    }
}

/// Decides which destinations deliveries may reach: public addresses, plus the
/// allow-listed ranges.
#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    allow: Vec<IpNet>,
}

impl TargetGuard {
    /// A guard that also admits the addresses inside `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Refuses `ip` unless it (or the IPv4 address it embeds) is allow-listed or it is
    /// globally routable.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        let embedded = match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => embedded_ipv4(v6),
        };
        let allowed = self.allows(ip) || embedded.is_some_and(|v4| self.allows(v4.into()));
        if allowed || !is_non_public(ip) {
            Ok(())
        } else {
            Err(SsrfError::Blocked { ip })
        }
    }

    /// Parses and checks a delivery URL, returning it normalised.
    ///
    /// Requires `http` or `https`, a host and no credentials. IP-literal hosts go
    /// through [`TargetGuard::check_ip`]; `localhost` and `*.localhost` are refused
    /// unless `127.0.0.1` is allowed. Other domain names pass here and are checked
    /// after resolution by [`GuardedResolver`].
    pub fn check_url(&self, raw: &str) -> Result<Url, SsrfError> {
        let url = Url::parse(raw).map_err(|e| SsrfError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SsrfError::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SsrfError::Credentials);
        }
        match url.host() {
            None => return Err(SsrfError::InvalidUrl("the URL has no host".to_owned())),
            Some(Host::Ipv4(v4)) => self.check_ip(v4.into())?,
            Some(Host::Ipv6(v6)) => self.check_ip(v6.into())?,
            Some(Host::Domain(name)) => {
                let name = name.strip_suffix('.').unwrap_or(name);
                if name == "localhost" || name.ends_with(".localhost") {
                    self.check_ip(Ipv4Addr::LOCALHOST.into())?;
                }
            }
        }
        Ok(url)
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// Whether `ip` is in a non-public range, judging IPv4-embedding IPv6 forms by their IPv4.
fn is_non_public(ip: IpAddr) -> bool {
    let embedded_non_public = match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => embedded_ipv4(v6).is_some_and(|v4| is_non_public(v4.into())),
    };
    embedded_non_public || NON_PUBLIC.iter().any(|net| net.contains(&ip))
}

/// The IPv4 address an IPv6 address stands for, if it is one of the embedding forms.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let [.., a, b, c, d] = ip.octets();
    let last32 = Ipv4Addr::new(a, b, c, d);
    match ip.segments() {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last32),
        // IPv4-compatible ::a.b.c.d (deprecated); :: and ::1 are not IPv4 addresses
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(last32),
        // NAT64 64:ff9b::a.b.c.d
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last32),
        // 6to4 2002:aabb:ccdd::/48
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        // Teredo 2001:0::/32, client address obfuscated in the last 32 bits
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(last32))),
        _ => None,
    }
}

/// Finds the [`SsrfError`] behind a delivery error by walking its `source()` chain,
/// looking inside `io::Error`s too (a refused resolution surfaces as an `io::Error`
/// wrapped by hyper).
pub fn find_ssrf_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a SsrfError> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(ssrf) = err.downcast_ref::<SsrfError>() {
            return Some(ssrf);
        }
        // An io::Error's source() skips its payload, so step into the payload itself.
        current = match err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Future returned by [`GuardedResolver`].
pub type ResolveFuture =
    Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

/// DNS resolver for hyper's `HttpConnector` that only yields addresses the guard admits.
///
/// A name with no admitted address fails with an `io::Error` of kind
/// `PermissionDenied` carrying [`SsrfError::NoAddress`]; see [`find_ssrf_error`].
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    guard: TargetGuard,
}

impl GuardedResolver {
    /// A resolver that filters addresses through `guard`.
    pub fn new(guard: TargetGuard) -> Self {
        Self { guard }
    }
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str();
            let admitted: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
                .await?
                .filter(|addr| guard.check_ip(addr.ip()).is_ok())
                .collect();
            if admitted.is_empty() {
                let err = SsrfError::NoAddress {
                    host: host.to_owned(),
                };
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, err));
            }
            Ok(admitted.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::str::FromStr;

    use tower::Service as _;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    fn loopback_allowed() -> TargetGuard {
        TargetGuard::new(vec!["127.0.0.0/8".parse().expect("valid CIDR")])
    }

    #[test]
    fn every_listed_range_is_refused() {
        let guard = TargetGuard::default();
        for net in NON_PUBLIC.iter() {
            for addr in [net.network(), net.broadcast()] {
                assert_eq!(
                    guard.check_ip(addr),
                    Err(SsrfError::Blocked { ip: addr }),
                    "{addr} in {net}"
                );
            }
        }
        for addr in [
            "0.0.0.0",
            "10.1.2.3",
            "100.100.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.19.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(TargetGuard::default().check_ip(ip(addr)).is_err(), "{addr}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let guard = TargetGuard::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(guard.check_ip(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_are_judged_by_their_ipv4() {
        let guard = TargetGuard::default();
        for addr in [
            // 127.0.0.1
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "2002:7f00:1::",
            "2002:7f00:1:ffff::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client !0x80fffffe
            // 10.0.0.1
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        ] {
            assert_eq!(
                guard.check_ip(ip(addr)),
                Err(SsrfError::Blocked { ip: ip(addr) }),
                "{addr}"
            );
        }
        assert_eq!(
            embedded_ipv4("2001:0:4136:e378:8000:63bf:80ff:fffe".parse().expect("v6")),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            embedded_ipv4("2002:a00:1::".parse().expect("v6")),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn allow_list_admits_only_its_ranges() {
        let guard = loopback_allowed();
        assert_eq!(guard.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(guard.check_ip(ip("127.1.2.3")), Ok(()));
        assert_eq!(guard.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(guard.check_ip(ip("10.0.0.1")).is_err());
        assert!(guard.check_ip(ip("::ffff:10.0.0.1")).is_err());
        assert!(guard.check_ip(ip("::1")).is_err());
        assert_eq!(guard.check_ip(ip("8.8.8.8")), Ok(()));
    }

    #[test]
    fn alternative_ipv4_spellings_are_refused() {
        let guard = TargetGuard::default();
        for raw in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:127.0.0.1]:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://0/",
        ] {
            let err = guard.check_url(raw).expect_err(raw);
            assert!(err.is_blocked(), "{raw}: {err}");
        }
        let normalised = loopback_allowed()
            .check_url("http://0x7f.1/")
            .expect("allowed");
        assert_eq!(normalised.host_str(), Some("127.0.0.1"));
    }

    #[test]
    fn url_shape_is_checked() {
        let guard = TargetGuard::default();
        assert_eq!(
            guard.check_url("ftp://x"),
            Err(SsrfError::Scheme("ftp".to_owned()))
        );
        assert!(matches!(
            guard.check_url("file:///etc/passwd"),
            Err(SsrfError::Scheme(_))
        ));
        assert_eq!(
            guard.check_url("http://u:p@example.com"),
            Err(SsrfError::Credentials)
        );
        assert_eq!(
            guard.check_url("https://u@example.com"),
            Err(SsrfError::Credentials)
        );
        assert!(matches!(
            guard.check_url("not a url"),
            Err(SsrfError::InvalidUrl(_))
        ));
        assert!(matches!(
            guard.check_url("http://"),
            Err(SsrfError::InvalidUrl(_))
        ));
        assert!(!SsrfError::Credentials.is_blocked());
        let url = guard
            .check_url("https://example.com/hook")
            .expect("public name accepted");
        assert_eq!(url.as_str(), "https://example.com/hook");
    }

    #[test]
    fn localhost_names_need_loopback_allowed() {
        for raw in [
            "http://localhost/",
            "http://LOCALHOST:8080/",
            "http://localhost./",
            "http://api.localhost/",
        ] {
            assert_eq!(
                TargetGuard::default().check_url(raw),
                Err(SsrfError::Blocked {
                    ip: Ipv4Addr::LOCALHOST.into()
                }),
                "{raw}"
            );
            assert!(loopback_allowed().check_url(raw).is_ok(), "{raw}");
        }
        assert!(TargetGuard::default()
            .check_url("http://notlocalhost/")
            .is_ok());
    }

    #[test]
    fn blocked_message_names_the_setting() {
        let message = SsrfError::Blocked { ip: ip("10.0.0.1") }.to_string();
        assert_eq!(
            message,
            "destination 10.0.0.1 is not a public address; allow it with HERALD_ALLOW_TARGETS"
        );
    }

    #[tokio::test]
    async fn resolver_refuses_loopback_names() {
        let name = Name::from_str("localhost").expect("valid name");
        let err = GuardedResolver::new(TargetGuard::default())
            .call(name)
            .await
            .expect_err("localhost resolves to loopback only");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            find_ssrf_error(&err),
            Some(&SsrfError::NoAddress {
                host: "localhost".to_owned()
            })
        );
    }

    #[tokio::test]
    async fn resolver_returns_allowed_addresses() {
        let name = Name::from_str("localhost").expect("valid name");
        let addrs: Vec<SocketAddr> = GuardedResolver::new(loopback_allowed())
            .call(name)
            .await
            .expect("127.0.0.0/8 is allowed")
            .collect();
        assert!(addrs.contains(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
        assert!(addrs.iter().all(|a| a.ip() == Ipv4Addr::LOCALHOST));
    }

    #[tokio::test]
    async fn refusal_is_found_through_hyper_errors() {
        use hyper_util::client::legacy::{connect::HttpConnector, Client};
        use hyper_util::rt::TokioExecutor;

        let connector = HttpConnector::new_with_resolver(GuardedResolver::default());
        let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let uri = http::Uri::from_static("http://localhost:9/hook");
        let err = client
            .get(uri)
            .await
            .expect_err("refused before connecting");
        let found = find_ssrf_error(&err).expect("SsrfError in the chain");
        assert!(found.is_blocked());
        assert!(find_ssrf_error(&io::Error::other("unrelated")).is_none());
    }
}
