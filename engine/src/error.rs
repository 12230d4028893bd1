//! The engine's error type, as the API and the CLI see it.
//!
//! Each variant says what the caller can do about it: fix the input
//! (`Invalid`, `NotFound`, `Conflict`), come back later (`Unavailable`), or
//! nothing (`Internal`). Internal details stay in the `source` chain for logs.

use crate::{log::LogError, store::StoreError};

/// What went wrong in an engine operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input is invalid; `field` names what to fix.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it and how to fix it.
        message: String,
    },
    /// The payload does not satisfy the registered schema of its event type
    /// and version; each issue says where and why.
    #[error("payload does not match the schema of {event_type} v{schema_version}")]
    SchemaViolation {
        /// The event type.
        event_type: String,
        /// The schema version checked.
        schema_version: u32,
        /// What is wrong, one entry per violation.
        errors: Vec<SchemaIssue>,
    },
    /// The named resource does not exist (or belongs to another tenant).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The resource already exists.
    #[error("{0}")]
    Conflict(String),
    /// A tenant quota refuses the call: with `retry_after`, a rate that
    /// frees up (429); without, a limit the call exceeds as it is (422).
    #[error("quota exceeded: {message}")]
    QuotaExceeded {
        /// The request field (or `tenant`) the limit applies to.
        field: &'static str,
        /// Which limit, its value, and what to do.
        message: String,
        /// When the rate allows the call again.
        retry_after: Option<std::time::Duration>,
    },
    /// A dependency (log or store) cannot make the change durable right now.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected state.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One JSON Schema violation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaIssue {
    /// JSON Pointer of the offending value in the payload.
    pub instance_path: String,
    /// What is wrong with it.
    pub message: String,
}

impl EngineError {
    /// Shorthand for [`EngineError::Invalid`].
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<LogError> for EngineError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Closed => Self::Unavailable("event log is shutting down".into()),
            LogError::Rejected(m) => Self::invalid("payload", m),
            other if other.is_transient() => Self::Unavailable(other.to_string()),
            other => Self::Internal(Box::new(other)),
        }
    }
}
