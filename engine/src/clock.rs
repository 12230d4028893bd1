//! Wall-clock time as the engine stores it: unix milliseconds.

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
