//! Sending with a subscription's endpoint credentials
//! ([`crate::endpoint_auth`]): the client with its TLS settings, and the
//! `Authorization` header.
//!
//! - **TLS**: a subscription with TLS settings gets its own pooled client,
//!   built once and kept until its settings change (a client certificate is
//!   an identity: its connections are never shared).
//! - **Bearer, basic**: a header from the stored credentials.
//! - **OAuth2 client credentials**: a token fetched from the token endpoint
//!   (through the same guard and egress as deliveries), cached until
//!   [`EXPIRY_MARGIN`] before it expires, one fetch at a time per
//!   subscription. An endpoint that answers 401 gets one more try within the
//!   attempt with a fresh token. A token endpoint that fails makes the
//!   attempt fail with [`ErrorClass::Auth`] and says why.
//!
//! Whenever a client or a token slot is added, those of subscriptions no
//! longer in the index (deleted) are dropped: what is cached never outgrows
//! the live subscriptions by more than one.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use parking_lot::Mutex;

use super::client::{Answer, DeliveryClient, SendError};
use crate::{
    endpoint_auth::EndpointAuth, model::ErrorClass, model::WebhookSubscription,
    subscriptions::SubscriptionIndex,
};

/// A token is fetched again this long before the token endpoint said it expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// How long a token whose answer gave no `expires_in` is used.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Most of a token endpoint's error answer quoted in the delivery log.
const QUOTED_ANSWER: usize = 200;

/// What a token is asked for with.
struct TokenRequest<'a> {
    token_url: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    scope: Option<&'a str>,
}

/// A token and when to stop using it.
#[derive(Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

/// One subscription's token, behind an async lock so one fetch runs at a time.
type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// The per-subscription clients and tokens of one process.
pub struct EndpointCredentials {
    /// The live subscriptions: cached entries of others are dropped.
    subscriptions: Arc<SubscriptionIndex>,
    /// Subscription id → (fingerprint of its TLS settings, its client).
    clients: Mutex<HashMap<String, (u64, DeliveryClient)>>,
    /// Subscription id → (fingerprint of its auth settings, its token).
    tokens: Mutex<HashMap<String, (u64, TokenSlot)>>,
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Inserts `value` for `id`, first dropping the entries of subscriptions
/// that are no longer in `live`.
fn insert_pruned<V>(map: &mut HashMap<String, V>, live: &SubscriptionIndex, id: &str, value: V) {
    map.retain(|id, _| live.get(id).is_some());
    map.insert(id.to_string(), value);
}

impl EndpointCredentials {
    /// No clients or tokens yet; `subscriptions` says which are live.
    pub fn new(subscriptions: Arc<SubscriptionIndex>) -> Self {
        Self {
            subscriptions,
            clients: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    /// POSTs to `sub`'s endpoint with its TLS settings and `Authorization`.
    pub async fn post(
        &self,
        shared: &DeliveryClient,
        sub: &WebhookSubscription,
        mut headers: HeaderMap,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Answer, SendError> {
        let client = self.client(shared, sub)?;
        let Some(auth) = &sub.auth else {
            return client.post(&sub.url, headers, body, timeout).await;
        };
        let oauth = match auth {
            EndpointAuth::Bearer { token } => {
                headers.insert(
                    header::AUTHORIZATION,
                    authorization("Bearer", token.expose()),
                );
                return client.post(&sub.url, headers, body, timeout).await;
            }
            EndpointAuth::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                headers.insert(header::AUTHORIZATION, authorization("Basic", &encoded));
                return client.post(&sub.url, headers, body, timeout).await;
            }
            EndpointAuth::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => TokenRequest {
                token_url,
                client_id,
                client_secret: client_secret.expose(),
                scope: scope.as_deref(),
            },
        };
        let slot = self.token_slot(sub, auth);
        let token = fetch_token(&client, &slot, &oauth, None, timeout).await?;
        headers.insert(header::AUTHORIZATION, authorization("Bearer", &token));
        let answer = client
            .post(&sub.url, headers.clone(), body.clone(), timeout)
            .await?;
        if answer.status != 401 {
            return Ok(answer);
        }
        // The token may have been revoked before it expired: one fresh one.
        let fresh = fetch_token(&client, &slot, &oauth, Some(&token), timeout).await?;
        headers.insert(header::AUTHORIZATION, authorization("Bearer", &fresh));
        client.post(&sub.url, headers, body, timeout).await
    }

    /// The client for `sub`: the shared one, or its own for TLS settings.
    fn client(
        &self,
        shared: &DeliveryClient,
        sub: &WebhookSubscription,
    ) -> Result<DeliveryClient, SendError> {
        let Some(tls) = &sub.tls else {
            return Ok(shared.clone());
        };
        let print = fingerprint(tls);
        let mut clients = self.clients.lock();
        if let Some((p, client)) = clients.get(&sub.id) {
            if *p == print {
                return Ok(client.clone());
            }
        }
        let client = shared.with_tls(tls).map_err(|e| SendError {
            class: ErrorClass::Tls,
            message: format!("the subscription's tls settings: {e}"),
            latency: Duration::ZERO,
        })?;
        insert_pruned(
            &mut clients,
            &self.subscriptions,
            &sub.id,
            (print, client.clone()),
        );
        Ok(client)
    }

    fn token_slot(&self, sub: &WebhookSubscription, auth: &EndpointAuth) -> TokenSlot {
        let print = fingerprint(auth);
        let mut tokens = self.tokens.lock();
        match tokens.get(&sub.id) {
            Some((p, slot)) if *p == print => slot.clone(),
            _ => {
                let slot = TokenSlot::default();
                insert_pruned(
                    &mut tokens,
                    &self.subscriptions,
                    &sub.id,
                    (print, slot.clone()),
                );
                slot
            }
        }
    }
}

/// A sensitive `Authorization` value (kept out of hyper's debug output).
fn authorization(scheme: &str, credentials: &str) -> HeaderValue {
    let mut value = HeaderValue::try_from(format!("{scheme} {credentials}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// The cached token, or a new one from the token endpoint when there is
/// none, it is due for renewal, or it is `rejected` (the endpoint said 401
/// to it; a token fetched since by another attempt is used as it is).
async fn fetch_token(
    client: &DeliveryClient,
    slot: &TokenSlot,
    request: &TokenRequest<'_>,
    rejected: Option<&str>,
    timeout: Option<Duration>,
) -> Result<String, SendError> {
    let token_url = request.token_url;
    let mut cached = slot.lock().await;
    if let Some(token) = cached.as_ref() {
        let usable = Instant::now() < token.renew_at && rejected != Some(token.value.as_str());
        if usable {
            return Ok(token.value.clone());
        }
    }
    *cached = None;
    let started = Instant::now();
    let fail = |message: String| SendError {
        class: ErrorClass::Auth,
        message,
        latency: started.elapsed(),
    };
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut form = String::from("grant_type=client_credentials");
    if let Some(scope) = request.scope {
        form.push_str("&scope=");
        form.push_str(&encode(scope));
    }
    // RFC 6749 §2.3.1: the id and secret are form-encoded, then sent as basic auth.
    let pair = format!(
        "{}:{}",
        encode(request.client_id),
        encode(request.client_secret)
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        authorization(
            "Basic",
            &base64::engine::general_purpose::STANDARD.encode(pair),
        ),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let answer = client
        .post(token_url, headers, Bytes::from(form), timeout)
        .await
        .map_err(|e| fail(format!("OAuth2 token endpoint {token_url}: {}", e.message)))?;
    if !answer.is_success() {
        let quoted: String = answer.body.chars().take(QUOTED_ANSWER).collect();
        return Err(fail(format!(
            "OAuth2 token endpoint {token_url} answered {}: {quoted}",
            answer.status
        )));
    }
    #[derive(serde::Deserialize)]
    struct Grant {
        access_token: String,
        token_type: Option<String>,
        expires_in: Option<u64>,
    }
    let grant: Grant = serde_json::from_str(&answer.body).map_err(|e| {
        fail(format!(
            "OAuth2 token endpoint {token_url}: the answer is not a token (access_token, token_type, expires_in): {e}"
        ))
    })?;
    if grant
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(fail(format!(
            "OAuth2 token endpoint {token_url}: token_type {:?} is not supported (bearer only)",
            grant.token_type.unwrap_or_default()
        )));
    }
    if HeaderValue::try_from(format!("Bearer {}", grant.access_token)).is_err()
        || grant.access_token.is_empty()
    {
        return Err(fail(format!(
            "OAuth2 token endpoint {token_url}: the access_token cannot be sent in a header"
        )));
    }
    let lifetime = grant
        .expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    let renew_at = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
    *cached = Some(Token {
        value: grant.access_token.clone(),
        renew_at,
    });
    Ok(grant.access_token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sealing::SealedText, subscriptions::tests::sub};

    #[test]
    fn tokens_of_deleted_subscriptions_are_dropped_when_another_is_cached() {
        let oauth = |sub: &mut WebhookSubscription| {
            sub.auth = Some(EndpointAuth::Oauth2 {
                token_url: "https://auth.example.com/token".into(),
                client_id: "herald".into(),
                client_secret: SealedText::new("s3cret-value"),
                scope: None,
            });
        };
        let (mut a, mut b) = (sub("sub_a", "t", &["*"]), sub("sub_b", "t", &["*"]));
        oauth(&mut a);
        oauth(&mut b);
        let index = Arc::new(SubscriptionIndex::new([a.clone()]));
        let credentials = EndpointCredentials::new(index.clone());
        let slot = credentials.token_slot(&a, a.auth.as_ref().unwrap());
        assert!(Arc::ptr_eq(
            &slot,
            &credentials.token_slot(&a, a.auth.as_ref().unwrap())
        ));
        // `a` is deleted, `b` created: caching b's slot drops a's.
        index.remove("sub_a");
        index.upsert(b.clone());
        credentials.token_slot(&b, b.auth.as_ref().unwrap());
        let cached: Vec<String> = credentials.tokens.lock().keys().cloned().collect();
        assert_eq!(cached, ["sub_b"]);
    }
}
