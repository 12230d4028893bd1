//! What the WebSocket event stream needs from the engine: a tenant's events
//! read straight from its log partition, filtered, each with a cursor.
//!
//! A cursor names the log position *after* an event (`partition`, `offset`),
//! encoded as an opaque string. The log keeps positions across restarts, so a
//! cursor resumes exactly after its event, with nothing missed and nothing
//! repeated, also after the server restarted.

use base64::Engine as _;

use super::Engine;
use crate::{
    error::EngineError,
    log::{EventLog, LogPosition},
    subscriptions::{filter_matches, validate_filter},
};

/// Version tag inside every cursor.
const CURSOR_TAG: &str = "s1";

/// An opaque stream cursor: the log position to read next.
pub fn encode_cursor(next: LogPosition) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{CURSOR_TAG}:{}:{}", next.partition, next.offset))
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<LogPosition> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != CURSOR_TAG {
        return None;
    }
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some(LogPosition { partition, offset })
}

/// One frame of the stream: the envelope JSON (with `cursor`) and its cursor.
#[derive(Debug, Clone)]
pub struct StreamFrame {
    /// The event envelope plus `"cursor"`, as JSON text.
    pub text: String,
    /// The cursor that resumes after this event.
    pub cursor: String,
}

/// A batch read from the stream.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    /// The matching events, in log order.
    pub frames: Vec<StreamFrame>,
    /// Where the next read starts.
    pub next: LogPosition,
}

impl Engine {
    /// The event log (for readers such as the stream).
    pub fn log(&self) -> &std::sync::Arc<dyn EventLog> {
        &self.log
    }

    /// Checks stream filters (exact types, `prefix.*`, `*`).
    pub fn validate_stream_filters(&self, filters: &[String]) -> Result<(), EngineError> {
        if filters.len() > 100 {
            return Err(EngineError::invalid("event_types", "at most 100 filters"));
        }
        filters.iter().try_for_each(|f| {
            validate_filter(f).map_err(|m| EngineError::invalid("event_types", m))
        })
    }

    /// Where a tenant's stream starts: after `cursor`, or at the live end.
    pub async fn stream_start(
        &self,
        tenant_id: &str,
        cursor: Option<&str>,
    ) -> Result<LogPosition, EngineError> {
        let partition = self.log.partition_for(tenant_id);
        let end = self.log.end_offset(partition).await?;
        match cursor {
            None => Ok(LogPosition {
                partition,
                offset: end,
            }),
            Some(c) => match decode_cursor(c) {
                Some(p) if p.partition == partition && p.offset <= end => Ok(p),
                _ => Err(EngineError::invalid(
                    "cursor",
                    "not a cursor of this tenant's stream; pass the cursor of a frame you received",
                )),
            },
        }
    }

    /// Reads up to `max` log records from `from` and keeps the tenant's
    /// events that match `filters` (all when empty).
    pub async fn stream_read(
        &self,
        tenant_id: &str,
        filters: &[String],
        from: LogPosition,
        max: usize,
    ) -> Result<StreamBatch, EngineError> {
        let records = self.log.read(from.partition, from.offset, max).await?;
        let mut next = from;
        let mut frames = Vec::new();
        for r in records {
            next = LogPosition {
                partition: r.position.partition,
                offset: r.position.offset + 1,
            };
            let e = &r.event;
            if e.tenant_id != tenant_id
                || !(filters.is_empty() || filters.iter().any(|f| filter_matches(f, &e.event_type)))
            {
                continue;
            }
            let cursor = encode_cursor(next);
            let mut value = serde_json::to_value(e.envelope())
                .map_err(|err| EngineError::Internal(Box::new(err)))?;
            value["cursor"] = serde_json::Value::String(cursor.clone());
            frames.push(StreamFrame {
                text: value.to_string(),
                cursor,
            });
        }
        Ok(StreamBatch { frames, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let p = LogPosition {
            partition: 3,
            offset: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(p)), Some(p));
        assert_eq!(decode_cursor("nope"), None);
        assert_eq!(decode_cursor(""), None);
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s2:1:2");
        assert_eq!(decode_cursor(&other), None);
    }
}
