//! Reading a tenant's events and delivery attempts, a page at a time.

use crate::{
    error::EngineError,
    filters::validate_filter,
    ids,
    model::{DomainEvent, WebhookDeliveryLog},
    store::{EventFilter, LogFilter},
};

use super::Engine;

/// A page of events.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// The events, newest first.
    pub data: Vec<DomainEvent>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A page of delivery attempts.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// The attempts, newest first.
    pub data: Vec<WebhookDeliveryLog>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

impl Engine {
    /// A tenant's events, newest first.
    pub async fn list_events(
        &self,
        tenant_id: &str,
        event_type: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<EventPage, EngineError> {
        if let Some(t) = &event_type {
            validate_filter(t).map_err(|m| EngineError::invalid("event_type", m))?;
        }
        let cursor = validate_cursor(cursor, ids::EVENT)?;
        let filter = EventFilter {
            event_type,
            before: cursor,
        };
        let mut data = self
            .store
            .list_events(tenant_id, &filter, limit + 1)
            .await?;
        let next_cursor = page_cursor(&mut data, limit, |e| e.id.clone());
        Ok(EventPage { data, next_cursor })
    }

    /// One event of a tenant and its delivery attempts (newest first, up to 1000).
    pub async fn event(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<(DomainEvent, Vec<WebhookDeliveryLog>), EngineError> {
        let event = self
            .store
            .get_event(tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("event"))?;
        let filter = LogFilter {
            event_id: Some(id.to_string()),
            ..Default::default()
        };
        let logs = self
            .store
            .list_delivery_logs(tenant_id, &filter, 1000)
            .await?;
        Ok((event, logs))
    }

    /// A tenant's delivery attempts, newest first.
    pub async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        mut filter: LogFilter,
        limit: usize,
    ) -> Result<LogPage, EngineError> {
        if let Some(o) = &filter.outcome {
            if crate::model::Outcome::parse(o).is_none() {
                return Err(EngineError::invalid(
                    "status",
                    "one of delivered, failed, dead",
                ));
            }
        }
        filter.before = validate_cursor(filter.before.take(), ids::ATTEMPT)?;
        let mut data = self
            .store
            .list_delivery_logs(tenant_id, &filter, limit + 1)
            .await?;
        let next_cursor = page_cursor(&mut data, limit, |l| l.id.clone());
        Ok(LogPage { data, next_cursor })
    }
}

pub(super) fn validate_cursor(
    cursor: Option<String>,
    prefix: &str,
) -> Result<Option<String>, EngineError> {
    match cursor {
        Some(c) if !ids::is_valid(prefix, &c) => Err(EngineError::invalid(
            "cursor",
            "not a cursor from this list; pass next_cursor of the previous page",
        )),
        other => Ok(other),
    }
}

pub(super) fn page_cursor<T>(
    data: &mut Vec<T>,
    limit: usize,
    id: impl Fn(&T) -> String,
) -> Option<String> {
    if data.len() > limit {
        data.truncate(limit);
        data.last().map(id)
    } else {
        None
    }
}
