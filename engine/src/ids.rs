//! Identifiers: time-ordered UUIDv7 rendered with a type prefix.
//!
//! The hex form of a UUIDv7 sorts by creation time, so ids double as cursors
//! and as the natural ordering of lists.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A new time-ordered id with the given prefix, e.g. `evt_0193…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

/// The id with `prefix` that `salt` derives from `source` (an id of another
/// kind): the same for the same pair, every time. It keeps the first 24 hex
/// digits of `source`'s UUID (its time, version and most of its random part),
/// so derived ids sort as their sources do, and replaces the last 8 with a
/// hash of the pair. A `source` that is not a prefixed UUID is hashed whole.
pub fn derived(prefix: &str, source: &str, salt: &str) -> String {
    let hash = Sha256::new()
        .chain_update(source.as_bytes())
        .chain_update([0])
        .chain_update(salt.as_bytes())
        .finalize();
    let hash = format!("{hash:x}");
    let hex = source.split_once('_').map_or("", |(_, hex)| hex);
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{prefix}_{}{}", &hex[..24].to_ascii_lowercase(), &hash[..8])
    } else {
        format!("{prefix}_{}", &hash[..32])
    }
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

    #[test]
    fn derived_ids_are_stable_distinct_and_sort_as_their_sources() {
        let (a, b) = (new_id(EVENT), new_id(EVENT));
        let da = derived(DELIVERY, &a, "rcv_1");
        assert!(is_valid(DELIVERY, &da), "{da}");
        assert_eq!(da, derived(DELIVERY, &a, "rcv_1"));
        assert_ne!(da, derived(DELIVERY, &a, "rcv_2"));
        assert!(da < derived(DELIVERY, &b, "rcv_1"), "{a} < {b}");
        let odd = derived(DELIVERY, "cdc-row-7", "rcv_1");
        assert!(is_valid(DELIVERY, &odd), "{odd}");
    }
}
