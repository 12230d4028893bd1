//! The REST routes (DESIGN §5, §8), one file per resource.

pub mod admin;
pub mod api_keys;
pub mod audit;
pub mod deliveries;
pub mod endpoint_auth;
pub mod event_types;
pub mod events;
pub mod export;
pub mod jwks;
pub mod kafka_settings;
pub mod metrics;
pub mod payload_filters;
pub mod recoveries;
pub mod stream;
pub mod subscriptions;

use serde::Deserialize;

use crate::error::ApiError;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 500;

/// `?limit=&cursor=`, shared by every list.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// Page size, 1 to [`MAX_LIMIT`].
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Page {
    /// The validated page size.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            )),
        }
    }
}

/// `?limit=&cursor=` of a plain list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Treats `?x=` like an absent parameter.
pub fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}
