//! Identifiers: time-ordered UUIDv7 rendered with a type prefix.
//!
//! The hex form of a UUIDv7 sorts by creation time, so ids double as cursors
//! and as the natural ordering of lists.

use uuid::Uuid;

/// A new time-ordered id with the given prefix, e.g. `evt_0193…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

/// Whether `id` looks like an id with `prefix` (prefix, underscore, 32 hex digits).
pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Prefix of event ids.
pub const EVENT: &str = "evt";
/// Prefix of subscription ids.
pub const SUBSCRIPTION: &str = "sub";
/// Prefix of delivery ids (one delivery = one event to one subscription, possibly many attempts).
pub const DELIVERY: &str = "dlv";
/// Prefix of delivery attempt log ids.
pub const ATTEMPT: &str = "att";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_ordered() {
        let a = new_id(EVENT);
        let b = new_id(EVENT);
        assert!(is_valid(EVENT, &a));
        assert!(!is_valid(SUBSCRIPTION, &a));
        assert!(a < b, "{a} should sort before {b}");
        assert!(!is_valid(EVENT, "evt_xyz"));
    }
}
