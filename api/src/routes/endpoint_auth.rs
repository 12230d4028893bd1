//! The `auth` and `tls` settings of a subscription's HTTP endpoint: how
//! they are written (with their secrets) and how they are shown (never with
//! them, only whether they are set).

use herald_engine::{
    endpoint_auth::{ClientTls, EndpointAuth},
    sealing::SealedText,
    signing::redacted,
};
use serde::{Deserialize, Serialize};

/// How deliveries authenticate to the endpoint, besides the signature.
/// Secrets are sealed at rest and never shown again. `Debug` redacts them.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointAuthInput {
    /// `Authorization: Bearer <token>` on every delivery.
    Bearer {
        /// The token (visible ASCII).
        #[schema(write_only)]
        token: String,
    },
    /// `Authorization: Basic …` on every delivery.
    Basic {
        /// The user name (no `:`).
        username: String,
        /// The password.
        #[schema(write_only)]
        password: String,
    },
    /// An OAuth2 access token (client credentials grant), fetched from
    /// `token_url` with the client id and secret as HTTP basic auth, cached
    /// until 30 s before it expires, fetched again once when the endpoint
    /// answers 401.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret.
        #[schema(write_only)]
        client_secret: String,
        /// The scope to ask for.
        scope: Option<String>,
    },
}

impl std::fmt::Debug for EndpointAuthInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Oauth2 {
                token_url,
                client_id,
                scope,
                ..
            } => f
                .debug_struct("Oauth2")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .field("scope", scope)
                .finish(),
        }
    }
}

impl From<EndpointAuthInput> for EndpointAuth {
    fn from(i: EndpointAuthInput) -> Self {
        match i {
            EndpointAuthInput::Bearer { token } => Self::Bearer {
                token: SealedText::new(token),
            },
            EndpointAuthInput::Basic { username, password } => Self::Basic {
                username,
                password: SealedText::new(password),
            },
            EndpointAuthInput::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => Self::Oauth2 {
                token_url,
                client_id,
                client_secret: SealedText::new(client_secret),
                scope,
            },
        }
    }
}

/// An endpoint's authentication as the API shows it: never the token,
/// password or client secret, only that one is set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointAuthView {
    /// `bearer`, `basic` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The basic auth user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The OAuth2 token endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// The OAuth2 client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The OAuth2 scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The secret (token, password or client secret) is stored; it is never returned.
    pub secret_set: bool,
}

impl From<EndpointAuth> for EndpointAuthView {
    fn from(auth: EndpointAuth) -> Self {
        let kind = auth.kind();
        let view = Self {
            kind,
            username: None,
            token_url: None,
            client_id: None,
            scope: None,
            secret_set: true,
        };
        match auth {
            EndpointAuth::Bearer { .. } => view,
            EndpointAuth::Basic { username, .. } => Self {
                username: Some(username),
                ..view
            },
            EndpointAuth::Oauth2 {
                token_url,
                client_id,
                scope,
                ..
            } => Self {
                token_url: Some(token_url),
                client_id: Some(client_id),
                scope,
                ..view
            },
        }
    }
}

/// The TLS settings of an `https` endpoint: a client certificate for mutual
/// TLS, and the authorities to trust for the endpoint's certificate. The
/// key is sealed at rest and never shown again. `Debug` redacts it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsInput {
    /// The client certificate chain (PEM), leaf first; with `key_pem`.
    pub cert_pem: Option<String>,
    /// The client certificate's private key (PEM); with `cert_pem`.
    #[schema(write_only)]
    pub key_pem: Option<String>,
    /// PEM certificates of the authorities to trust for the endpoint's
    /// certificate, instead of the public roots.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for ClientTlsInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsInput")
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "<pem>"))
            .field("key_pem", &redacted(&self.key_pem))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl From<ClientTlsInput> for ClientTls {
    fn from(i: ClientTlsInput) -> Self {
        Self {
            cert_pem: i.cert_pem,
            key_pem: i.key_pem.map(SealedText::new),
            ca_pem: i.ca_pem,
        }
    }
}

/// An endpoint's TLS settings as the API shows them: never the key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientTlsView {
    /// The client certificate chain (PEM).
    pub cert_pem: Option<String>,
    /// A private key is stored (it is never returned).
    pub key_set: bool,
    /// The authorities trusted for the endpoint's certificate.
    pub ca_pem: Option<String>,
}

impl From<ClientTls> for ClientTlsView {
    fn from(tls: ClientTls) -> Self {
        Self {
            cert_pem: tls.cert_pem,
            key_set: tls.key_pem.is_some(),
            ca_pem: tls.ca_pem,
        }
    }
}
