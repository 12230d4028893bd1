//! The egress proxy's address (`--egress-proxy`): an HTTP CONNECT proxy
//! that every HTTP delivery goes through ([`crate::delivery::egress`] opens
//! the tunnels). Its credentials become a `Proxy-Authorization` value that
//! neither `Debug` nor `Display` shows.

use base64::Engine as _;

/// An HTTP CONNECT proxy: `http://[user:password@]host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    host: String,
    port: u16,
    /// `Basic …` for `Proxy-Authorization`, from the URL's credentials.
    authorization: Option<String>,
}

impl EgressProxy {
    /// The proxy's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Proxy-Authorization` value, when the URL carried credentials.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Display for EgressProxy {
    /// `host:port`, without the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for EgressProxy {
    type Err = String;

    /// Parses `http://[user:password@]host[:port]` (port 3128 by default).
    fn from_str(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("the egress proxy URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "the egress proxy URL must start with http:// (an HTTP CONNECT proxy), not {}://",
                url.scheme()
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "the egress proxy URL is http://[user:password@]host:port, nothing after".into(),
            );
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(v4)) => v4.to_string(),
            Some(url::Host::Ipv6(v6)) => v6.to_string(),
            None => return Err("the egress proxy URL has no host".into()),
        };
        let authorization = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let pair = format!(
                "{}:{}",
                decode(url.username()),
                decode(url.password().unwrap_or(""))
            );
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            host,
            port: url.port().unwrap_or(3128),
            authorization,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_and_hide_their_credentials() {
        let p: EgressProxy = "http://user:p%40ss@proxy.internal:8080".parse().unwrap();
        assert_eq!(p.to_string(), "proxy.internal:8080");
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(
            p.authorization.as_deref(),
            Some(&*format!("Basic {expected}"))
        );
        assert!(!format!("{p:?}").contains(&expected));
        let plain: EgressProxy = "http://10.0.0.5".parse().unwrap();
        assert_eq!(plain.to_string(), "10.0.0.5:3128");
        assert!(plain.authorization.is_none());
        for (raw, says) in [
            ("https://proxy:3128", "http://"),
            ("socks5://proxy:1080", "http://"),
            ("http://proxy:3128/path", "nothing after"),
            ("proxy:3128", "http://"),
            ("not a url", "egress proxy URL"),
        ] {
            let err = raw.parse::<EgressProxy>().expect_err(raw);
            assert!(err.contains(says), "{raw}: {err}");
        }
    }
}
