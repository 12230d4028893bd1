//! Admission of emits: the request bodies the emit routes hold at once are
//! bounded in bytes, so a burst from many clients is answered `503` with
//! `Retry-After` instead of growing the process's memory; and so are the
//! accepted events still waiting for delivery (`--max-emit-backlog`), so a
//! burst faster than delivery waits at its clients instead of leaving the
//! last accepted events minutes behind (only the tenants of the partitions
//! holding the backlog are refused: `herald_engine`'s `engine::intake`).
//!
//! An emit takes its `Content-Length` (the largest body,
//! [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES), when it gives none) from the
//! budget before its body is read, and gives it back once it is answered. A
//! refused emit has read nothing and changed nothing. Parsed events take a
//! few times their JSON's size, so the default budget, 32 MiB, holds an
//! emit's memory to about 150 MiB, while 300 batches of 100 × 1 KiB events fit
//! in it at once.
//!
//! One tenant holds at most a quarter of the budget (and at least one
//! largest body), so a tenant's burst is refused before it leaves the other
//! tenants none.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header::CONTENT_LENGTH, request::Parts},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{error::ApiError, extract::Tenant, AppState, MAX_BODY_BYTES};

/// Default of `--max-emit-bytes-in-flight`.
pub const DEFAULT_EMIT_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// The bytes of emit bodies the process may hold at once, in all and per
/// tenant.
#[derive(Debug)]
pub struct EmitBudget {
    bytes: usize,
    per_tenant: usize,
    free: Arc<Semaphore>,
    /// Bytes each tenant holds (tenants holding none are not kept).
    held: Mutex<HashMap<String, usize>>,
}

impl EmitBudget {
    /// A budget of `bytes` (at least one byte); a tenant may hold a quarter
    /// of it, at least one largest body.
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes,
            per_tenant: (bytes / 4).max(MAX_BODY_BYTES).min(bytes),
            free: Arc::new(Semaphore::new(bytes)),
            held: Mutex::default(),
        }
    }

    /// Takes the share of an emit of `content_length` bytes by `tenant`, or
    /// says which limit it would pass.
    fn admit(
        self: &Arc<Self>,
        tenant: String,
        content_length: Option<usize>,
    ) -> Result<Share, ApiError> {
        let bytes = self.share(content_length);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let holds = held.get(&tenant).copied().unwrap_or(0);
        if holds + bytes as usize > self.per_tenant {
            return Err(ApiError::overloaded_tenant(self.per_tenant));
        }
        let permit = self
            .free
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| ApiError::overloaded(self.bytes))?;
        *held.entry(tenant.clone()).or_default() += bytes as usize;
        Ok(Share {
            budget: self.clone(),
            tenant,
            bytes: bytes as usize,
            _permit: permit,
        })
    }

    /// The budget's share an emit of `content_length` bytes takes: its body,
    /// at most the largest one allowed (a longer one is refused with 413 as
    /// it is read), and at most the whole budget, so a budget smaller than
    /// one body still admits one emit at a time.
    fn share(&self, content_length: Option<usize>) -> u32 {
        let asked = content_length.unwrap_or(MAX_BODY_BYTES).min(MAX_BODY_BYTES);
        asked.clamp(1, self.bytes) as u32
    }
}

/// An emit's share of the [`EmitBudget`], held while it is served. Put it
/// before the body's extractor: extractors run in order.
#[derive(Debug)]
pub struct Admitted {
    _share: Option<Share>,
}

/// Bytes a tenant's emit holds; given back when dropped.
#[derive(Debug)]
struct Share {
    budget: Arc<EmitBudget>,
    tenant: String,
    bytes: usize,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .budget
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(holds) = held.get_mut(&self.tenant) {
            *holds -= self.bytes;
            if *holds == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

impl<S> FromRequestParts<S> for Admitted
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let Tenant(tenant) = Tenant::from_request_parts(parts, state).await?;
        app.engine
            .admit_emit(&tenant)
            .map_err(ApiError::backlog_full)?;
        let Some(budget) = app.emit_budget else {
            return Ok(Self { _share: None });
        };
        let content_length = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Self {
            _share: Some(budget.admit(tenant, content_length)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emit_takes_its_length_at_most_a_body_and_at_most_the_budget() {
        let budget = EmitBudget::new(4 * MAX_BODY_BYTES);
        assert_eq!(budget.share(Some(1000)), 1000);
        assert_eq!(budget.share(Some(0)), 1);
        assert_eq!(budget.share(None), MAX_BODY_BYTES as u32);
        assert_eq!(
            budget.share(Some(10 * MAX_BODY_BYTES)),
            MAX_BODY_BYTES as u32
        );
        let small = EmitBudget::new(3000);
        assert_eq!(small.share(None), 3000);
        assert_eq!(small.share(Some(2000)), 2000);
    }

    #[test]
    fn a_tenant_holds_a_quarter_of_the_budget_and_at_least_one_body() {
        assert_eq!(EmitBudget::new(32 << 20).per_tenant, 8 << 20);
        assert_eq!(EmitBudget::new(2 << 20).per_tenant, MAX_BODY_BYTES);
        assert_eq!(EmitBudget::new(3000).per_tenant, 3000);
    }

    #[test]
    fn a_tenant_past_its_share_is_refused_while_others_are_admitted_and_shares_come_back() {
        let budget = Arc::new(EmitBudget::new(8 * MAX_BODY_BYTES));
        let body = Some(MAX_BODY_BYTES);
        let a1 = budget.admit("a".into(), body).unwrap();
        let a2 = budget.admit("a".into(), body).unwrap();
        let refused = budget.admit("a".into(), Some(1)).unwrap_err();
        use axum::response::IntoResponse;
        assert_eq!(refused.into_response().status(), 503);
        let b = budget.admit("b".into(), body).unwrap();
        assert_eq!(
            budget.held.lock().unwrap().get("a"),
            Some(&(2 * MAX_BODY_BYTES))
        );
        drop(a1);
        let a3 = budget.admit("a".into(), body).unwrap();
        drop((a2, a3, b));
        assert!(
            budget.held.lock().unwrap().is_empty(),
            "every share came back"
        );
        assert_eq!(budget.free.available_permits(), 8 * MAX_BODY_BYTES);
    }
}
