//! Payload filters over hostile expressions: any string either compiles or
//! is refused, and a compiled filter evaluates on a fixed event without
//! crashing (an evaluation error is no match).
//!
//! The `cel` crate panics on operations it does not implement yet: Herald catches those panics and
//! refuses the filter (or counts no match). libFuzzer's panic hook aborts
//! on any panic, caught or not, so this target lets panics raised inside
//! `cel` unwind to Herald's `catch_unwind`; a panic anywhere else (Herald's
//! own code included) still aborts and is reported as a crash.
#![no_main]

use herald_engine::payload_filter::{FilterVars, PayloadFilter};
use libfuzzer_sys::fuzz_target;

/// Whether a panic was raised in the `cel` crate's sources.
fn raised_in_cel(info: &std::panic::PanicHookInfo<'_>) -> bool {
    info.location()
        .is_some_and(|l| l.file().contains("/cel-0."))
}

fuzz_target!(
    init: {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !raised_in_cel(info) {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        let Ok(source) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(filter) = PayloadFilter::compile(source) {
            let vars = FilterVars::of_envelope(&serde_json::json!({
                "id": "evt_1",
                "type": "inventory.adjusted",
                "tenant_id": "acme",
                "data": {"warehouse": "EU-2", "quantity": 150, "tags": ["x"], "nested": {"a": [1, 2.5, null]}},
            }));
            let _ = filter.matches(&vars);
        }
    }
);
