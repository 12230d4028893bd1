//! Hooks for crash and fault tests, set only through `HERALD_TEST_HOOK_*`
//! environment variables and read only here: they are not part of
//! [`EngineConfig`](crate::config::EngineConfig) or the command line, and
//! unset (production) they change nothing.
//!
//! - [`RELAY_COMMIT_DELAY`]: how long the CDC relay holds each transaction
//!   open, its records flushed to the broker, before committing (so a
//!   `kill -9` lands inside one).
//! - [`KAFKA_BATCH_FAIL_AFTER`]: a Kafka batch append of more than N events
//!   fails after writing N of them (uncommitted), as a broker failure midway
//!   would; one indexed in its transaction (`EventLog::append_all_indexed`)
//!   writes all of them and its index, then fails before its commit.
//! - [`CHANGELOG_STUCK_COMMITS`]: the first N commits of the schedule
//!   changelog that carry consumer offsets never return, as librdkafka's
//!   `send_offsets_to_transaction` can when its coordinator request is not
//!   retried (librdkafka issues #5456, #5511).
//! - [`RELAY_STUCK_COMMITS`]: the same for the first N transactions of the
//!   CDC relay.
//!
//! Values are read once per process; [`check`] reports a malformed one.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    time::Duration,
};

/// Env var: the relay's commit delay, e.g. `800ms` (humantime).
pub const RELAY_COMMIT_DELAY: &str = "HERALD_TEST_HOOK_RELAY_COMMIT_DELAY";
/// Env var: the number of events a Kafka batch append writes before failing.
pub const KAFKA_BATCH_FAIL_AFTER: &str = "HERALD_TEST_HOOK_KAFKA_BATCH_FAIL_AFTER";
/// Env var: how many changelog commits with offsets get stuck.
pub const CHANGELOG_STUCK_COMMITS: &str = "HERALD_TEST_HOOK_CHANGELOG_STUCK_COMMITS";
/// Env var: how many CDC relay commits get stuck.
pub const RELAY_STUCK_COMMITS: &str = "HERALD_TEST_HOOK_RELAY_STUCK_COMMITS";

struct Hooks {
    relay_commit_delay: Duration,
    kafka_batch_fail_after: Option<usize>,
    /// Stuck commits still to come.
    changelog_stuck_commits: AtomicUsize,
    /// Stuck relay commits still to come.
    relay_stuck_commits: AtomicUsize,
}

fn read() -> &'static Result<Hooks, String> {
    static HOOKS: OnceLock<Result<Hooks, String>> = OnceLock::new();
    HOOKS.get_or_init(|| parse(|name| std::env::var(name).ok()))
}

fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Hooks, String> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    let relay_commit_delay = match var(RELAY_COMMIT_DELAY) {
        None => Duration::ZERO,
        Some(v) => humantime::parse_duration(&v)
            .map_err(|e| format!("{RELAY_COMMIT_DELAY}={v:?}: {e} (write e.g. 800ms)"))?,
    };
    let kafka_batch_fail_after = match var(KAFKA_BATCH_FAIL_AFTER) {
        None => None,
        Some(v) => Some(v.parse().map_err(|e| {
            format!("{KAFKA_BATCH_FAIL_AFTER}={v:?}: {e} (write a number of events)")
        })?),
    };
    let commits = |name: &str| match var(name) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|e| format!("{name}={v:?}: {e} (write a number of commits)")),
    };
    Ok(Hooks {
        relay_commit_delay,
        kafka_batch_fail_after,
        changelog_stuck_commits: AtomicUsize::new(commits(CHANGELOG_STUCK_COMMITS)?),
        relay_stuck_commits: AtomicUsize::new(commits(RELAY_STUCK_COMMITS)?),
    })
}

/// Fails with a message naming the variable when a hook is malformed.
pub fn check() -> Result<(), String> {
    read().as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The relay's commit delay (zero unless the hook is set).
pub fn relay_commit_delay() -> Duration {
    read()
        .as_ref()
        .map_or(Duration::ZERO, |h| h.relay_commit_delay)
}

/// After how many events a Kafka batch append fails (`None`: never).
pub fn kafka_batch_fail_after() -> Option<usize> {
    read().as_ref().ok().and_then(|h| h.kafka_batch_fail_after)
}

/// Whether this changelog commit gets stuck (each of the first N does).
pub fn changelog_commit_stuck() -> bool {
    read()
        .as_ref()
        .is_ok_and(|h| take_one(&h.changelog_stuck_commits))
}

/// Whether this CDC relay commit gets stuck (each of the first N does).
pub fn relay_commit_stuck() -> bool {
    read()
        .as_ref()
        .is_ok_and(|h| take_one(&h.relay_stuck_commits))
}

/// Takes one from a count of hooked calls still to come; false at zero.
fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Hooks, String> {
        parse(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn unset_or_empty_hooks_change_nothing() {
        for hooks in [
            from(&[]),
            from(&[
                (RELAY_COMMIT_DELAY, ""),
                (KAFKA_BATCH_FAIL_AFTER, ""),
                (CHANGELOG_STUCK_COMMITS, ""),
                (RELAY_STUCK_COMMITS, ""),
            ]),
        ] {
            let h = hooks.unwrap();
            assert_eq!(
                (
                    h.relay_commit_delay,
                    h.kafka_batch_fail_after,
                    h.changelog_stuck_commits.into_inner(),
                    h.relay_stuck_commits.into_inner()
                ),
                (Duration::ZERO, None, 0, 0)
            );
        }
    }

    #[test]
    fn set_hooks_are_read_and_malformed_ones_name_their_variable() {
        let h = from(&[
            (RELAY_COMMIT_DELAY, "800ms"),
            (KAFKA_BATCH_FAIL_AFTER, "3"),
            (CHANGELOG_STUCK_COMMITS, "1"),
            (RELAY_STUCK_COMMITS, "2"),
        ])
        .unwrap();
        assert_eq!(h.relay_commit_delay, Duration::from_millis(800));
        assert_eq!(h.kafka_batch_fail_after, Some(3));
        assert_eq!(h.changelog_stuck_commits.into_inner(), 1);
        assert_eq!(h.relay_stuck_commits.into_inner(), 2);
        let err = from(&[(RELAY_COMMIT_DELAY, "soon")]).err().unwrap();
        assert!(err.starts_with(RELAY_COMMIT_DELAY), "{err}");
        let err = from(&[(KAFKA_BATCH_FAIL_AFTER, "-1")]).err().unwrap();
        assert!(err.starts_with(KAFKA_BATCH_FAIL_AFTER), "{err}");
        let err = from(&[(CHANGELOG_STUCK_COMMITS, "all")]).err().unwrap();
        assert!(err.starts_with(CHANGELOG_STUCK_COMMITS), "{err}");
        let err = from(&[(RELAY_STUCK_COMMITS, "x")]).err().unwrap();
        assert!(err.starts_with(RELAY_STUCK_COMMITS), "{err}");
    }
}
