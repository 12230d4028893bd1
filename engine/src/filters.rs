//! Event-type filters of subscriptions: exact names, `prefix.*` families,
//! and `*` (every type but Herald's operational events).

/// Event types starting with this are Herald's own operational events.
pub const OPERATIONAL_PREFIX: &str = "herald.";

/// Whether the filter `filter` (exact, `prefix.*`, or `*`) matches `event_type`.
/// `*` matches every event type except Herald's operational events
/// (`herald.…`), which a subscription must name (`herald.*` or exactly).
pub fn filter_matches(filter: &str, event_type: &str) -> bool {
    if filter == "*" {
        return !event_type.starts_with(OPERATIONAL_PREFIX);
    }
    match filter.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => event_type.starts_with(prefix),
        _ => filter == event_type,
    }
}

/// Checks one filter's syntax: dotted names of `[A-Za-z0-9_-]`, optionally
/// ending in `.*`, or `*` alone.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter == "*" {
        return Ok(());
    }
    let name = filter.strip_suffix(".*").unwrap_or(filter);
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{filter:?} is not an event type filter; use dotted names like work_order.completed, a family like work_order.*, or *"
        ))
    }
}
