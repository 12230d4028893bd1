//! Admission of emits: the request bodies the emit routes hold at once are
//! bounded in bytes, so a burst from many clients is answered `503` with
//! `Retry-After` instead of growing the process's memory.
//!
//! An emit takes its `Content-Length` (the largest body,
//! [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES), when it gives none) from the
//! budget before its body is read, and gives it back once it is answered. A
//! refused emit has read nothing and changed nothing. Parsed events take a
//! few times their JSON's size, so the default budget, 32 MiB, holds an
//! emit's memory to about 150 MiB, while 300 batches of 100 × 1 KiB events fit
//! in it at once.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header::CONTENT_LENGTH, request::Parts},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{error::ApiError, AppState, MAX_BODY_BYTES};

/// Default of `--max-emit-bytes-in-flight`.
pub const DEFAULT_EMIT_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// The bytes of emit bodies the process may hold at once.
#[derive(Debug)]
pub struct EmitBudget {
    bytes: usize,
    free: Arc<Semaphore>,
}

impl EmitBudget {
    /// A budget of `bytes` (at least one byte).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes,
            free: Arc::new(Semaphore::new(bytes)),
        }
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
    _share: Option<OwnedSemaphorePermit>,
}

impl<S> FromRequestParts<S> for Admitted
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let Some(budget) = state.emit_budget.as_deref() else {
            return Ok(Self { _share: None });
        };
        let content_length = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match budget
            .free
            .clone()
            .try_acquire_many_owned(budget.share(content_length))
        {
            Ok(share) => Ok(Self {
                _share: Some(share),
            }),
            Err(_) => Err(ApiError::overloaded(budget.bytes)),
        }
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
}
