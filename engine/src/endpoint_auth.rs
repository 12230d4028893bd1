//! How Herald authenticates itself to a subscription's HTTP endpoint,
//! beyond the webhook signature: an `Authorization` header ([`EndpointAuth`]:
//! a static bearer token, basic auth, or an OAuth2 client-credentials token)
//! and a TLS client certificate ([`ClientTls`], mutual TLS).
//!
//! This module is the pure part: the settings stored on the subscription and
//! their checks. Every secret in them is a [`SealedText`]: sealed at rest
//! like a signing secret, `Debug` redacted, never shown by the API. Sending
//! with them is `delivery::credentials`.

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::sealing::SealedText;

/// Longest token, username, password, client id or client secret.
const MAX_CREDENTIAL: usize = 4096;
/// Longest OAuth2 scope.
const MAX_SCOPE: usize = 1024;
/// Longest client certificate chain or key (PEM).
const MAX_PEM: usize = 64 * 1024;

/// The `Authorization` a delivery carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EndpointAuth {
    /// `Authorization: Bearer <token>`, the same token on every request.
    Bearer {
        /// The token.
        token: SealedText,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name (no `:`).
        username: String,
        /// The password.
        password: SealedText,
    },
    /// A token from an OAuth2 token endpoint (client credentials grant,
    /// RFC 6749 §4.4), cached until shortly before it expires and fetched
    /// again once when the endpoint answers 401.
    Oauth2 {
        /// The token endpoint (`http` or `https`; it is reached through the
        /// same SSRF guard and egress as deliveries).
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret (sent with HTTP basic auth, RFC 6749 §2.3.1).
        client_secret: SealedText,
        /// The scope asked for, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

impl EndpointAuth {
    /// The kind, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bearer { .. } => "bearer",
            Self::Basic { .. } => "basic",
            Self::Oauth2 { .. } => "oauth2",
        }
    }

    /// Checks the settings: lengths, a token that fits in a header, a user
    /// name without `:`, a token URL that parses as `http(s)` (the caller
    /// checks it against the SSRF policy).
    pub fn validate(&self) -> Result<(), String> {
        let sized = |what: &str, value: &str| {
            if value.is_empty() || value.len() > MAX_CREDENTIAL {
                Err(format!("{what} is 1 to {MAX_CREDENTIAL} bytes"))
            } else {
                Ok(())
            }
        };
        match self {
            Self::Bearer { token } => {
                sized("token", token.expose())?;
                if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("token: only visible ASCII, no spaces".into());
                }
            }
            Self::Basic { username, password } => {
                sized("username", username)?;
                sized("password", password.expose())?;
                if username.contains(':') || username.chars().any(char::is_control) {
                    return Err("username: no ':' and no control characters".into());
                }
                if password.expose().chars().any(char::is_control) {
                    return Err("password: no control characters".into());
                }
            }
            Self::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let url = url::Url::parse(token_url)
                    .map_err(|e| format!("token_url is not a URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err("token_url must be an http(s) URL with a host".into());
                }
                if token_url.len() > 2048 {
                    return Err("token_url is at most 2048 bytes".into());
                }
                sized("client_id", client_id)?;
                sized("client_secret", client_secret.expose())?;
                if let Some(scope) = scope {
                    if scope.is_empty() || scope.len() > MAX_SCOPE {
                        return Err(format!("scope is 1 to {MAX_SCOPE} bytes"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The TLS settings of an `https` endpoint: a client certificate (mutual
/// TLS), and the authorities trusted for the endpoint's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientTls {
    /// The client certificate chain (PEM), leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<SealedText>,
    /// PEM certificates of the authorities to trust for the endpoint's
    /// certificate, instead of the public (webpki) roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl ClientTls {
    /// Checks the settings: a certificate and a key come together, and
    /// everything given parses.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_pem, &self.key_pem) {
            (Some(cert), Some(key)) => {
                self.certificates(cert)?;
                self.private_key(key.expose())?;
            }
            (None, None) if self.ca_pem.is_some() => {}
            (None, None) => return Err("give cert_pem and key_pem, or ca_pem".into()),
            _ => return Err("cert_pem and key_pem come together".into()),
        }
        if let Some(pem) = &self.ca_pem {
            crate::kafka_target::check_ca_pem(pem)?;
        }
        Ok(())
    }

    /// The client certificate chain, when one is set.
    pub fn chain(&self) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
        self.cert_pem
            .as_deref()
            .map(|pem| self.certificates(pem))
            .transpose()
    }

    /// The client certificate's private key, when one is set.
    pub fn key(&self) -> Result<Option<PrivateKeyDer<'static>>, String> {
        self.key_pem
            .as_ref()
            .map(|pem| self.private_key(pem.expose()))
            .transpose()
    }

    /// The authorities to trust instead of the public roots, when set.
    pub fn roots(&self) -> Result<Option<rustls::RootCertStore>, String> {
        let Some(pem) = &self.ca_pem else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("ca_pem is not valid PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate of ca_pem cannot be read: {e}"))?;
        }
        Ok(Some(roots))
    }

    fn certificates(&self, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
        if pem.len() > MAX_PEM {
            return Err(format!("cert_pem is longer than {MAX_PEM} bytes"));
        }
        let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cert_pem is not valid PEM: {e}"))?;
        if chain.is_empty() {
            return Err("cert_pem holds no certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        Ok(chain)
    }

    fn private_key(&self, pem: &str) -> Result<PrivateKeyDer<'static>, String> {
        if pem.len() > MAX_PEM {
            return Err(format!("key_pem is longer than {MAX_PEM} bytes"));
        }
        // The parser's error could quote the key: say only what to fix.
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            "key_pem holds no private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".to_string()
        })?;
        rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("key_pem: unsupported private key: {e}"))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> EndpointAuth {
        EndpointAuth::Bearer {
            token: SealedText::new(token),
        }
    }

    #[test]
    fn auth_settings_say_what_is_wrong() {
        assert!(bearer("abc.DEF-123").validate().is_ok());
        for (auth, says) in [
            (bearer(""), "token is 1 to"),
            (bearer("a b"), "visible ASCII"),
            (bearer("a\r\nX-Evil: 1"), "visible ASCII"),
            (
                EndpointAuth::Basic {
                    username: "a:b".into(),
                    password: SealedText::new("p"),
                },
                "no ':'",
            ),
            (
                EndpointAuth::Basic {
                    username: "a".into(),
                    password: SealedText::new(""),
                },
                "password is 1 to",
            ),
            (
                EndpointAuth::Oauth2 {
                    token_url: "ftp://idp.example.com/token".into(),
                    client_id: "c".into(),
                    client_secret: SealedText::new("s"),
                    scope: None,
                },
                "http(s)",
            ),
            (
                EndpointAuth::Oauth2 {
                    token_url: "not a url".into(),
                    client_id: "c".into(),
                    client_secret: SealedText::new("s"),
                    scope: None,
                },
                "not a URL",
            ),
            (
                EndpointAuth::Oauth2 {
                    token_url: "https://idp.example.com/token".into(),
                    client_id: "c".into(),
                    client_secret: SealedText::new("s"),
                    scope: Some(String::new()),
                },
                "scope is 1 to",
            ),
        ] {
            let err = auth.validate().expect_err(says);
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let auth = EndpointAuth::Oauth2 {
            token_url: "https://idp.example.com/token".into(),
            client_id: "herald".into(),
            client_secret: SealedText::new("s3cr3t-value"),
            scope: None,
        };
        let shown = format!("{auth:?} {:?}", bearer("t0ken-value"));
        assert!(!shown.contains("s3cr3t-value") && !shown.contains("t0ken-value"));
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn client_tls_needs_a_certificate_with_its_key_or_a_ca() {
        let none = ClientTls {
            cert_pem: None,
            key_pem: None,
            ca_pem: None,
        };
        assert!(none.validate().unwrap_err().contains("ca_pem"));
        let half = ClientTls {
            cert_pem: Some("x".into()),
            ..none.clone()
        };
        assert!(half.validate().unwrap_err().contains("come together"));
        let garbage = ClientTls {
            cert_pem: Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
            key_pem: Some(SealedText::new("not a key")),
            ca_pem: None,
        };
        let err = garbage.validate().unwrap_err();
        assert!(err.contains("key_pem") || err.contains("cert_pem"), "{err}");
        assert!(!err.contains("not a key"), "{err}");
    }
}
