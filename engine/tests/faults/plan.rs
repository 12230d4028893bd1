//! Which calls of which operation misbehave, and how.

use std::{collections::HashMap, ops::RangeInclusive, time::Duration};

use parking_lot::Mutex;

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Goes through.
    Pass,
    /// Fails without doing anything.
    Fail,
    /// Does its work, then reports a failure (a lost acknowledgement, or a
    /// crash right after the write).
    FailAfter,
}

struct Rule {
    calls: RangeInclusive<u64>,
    effect: Effect,
    stall: Option<Duration>,
}

/// Per operation: the rules and how many calls were made.
#[derive(Default)]
pub struct Plan {
    rules: Mutex<HashMap<&'static str, Vec<Rule>>>,
    calls: Mutex<HashMap<String, u64>>,
}

impl Plan {
    /// Calls `calls` (counted from 1) of `op` have `effect`.
    pub fn on(&self, op: &'static str, calls: RangeInclusive<u64>, effect: Effect) -> &Self {
        self.rules.lock().entry(op).or_default().push(Rule {
            calls,
            effect,
            stall: None,
        });
        self
    }

    /// Calls `calls` of `op` wait `stall` first, then go through.
    pub fn stall(&self, op: &'static str, calls: RangeInclusive<u64>, stall: Duration) -> &Self {
        self.rules.lock().entry(op).or_default().push(Rule {
            calls,
            effect: Effect::Pass,
            stall: Some(stall),
        });
        self
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: &str) -> u64 {
        self.calls.lock().get(op).copied().unwrap_or(0)
    }

    /// Counts a call of `op` and says what it does (after any stall).
    pub async fn next(&self, op: &'static str) -> Effect {
        let n = {
            let mut calls = self.calls.lock();
            let c = calls.entry(op.to_string()).or_default();
            *c += 1;
            *c
        };
        let (effect, stall) = {
            let rules = self.rules.lock();
            rules
                .get(op)
                .and_then(|r| r.iter().find(|r| r.calls.contains(&n)))
                .map_or((Effect::Pass, None), |r| (r.effect, r.stall))
        };
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        effect
    }
}
