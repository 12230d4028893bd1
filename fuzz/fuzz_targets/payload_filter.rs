//! Payload filters over hostile expressions: any string either compiles or
//! is refused, and a compiled filter evaluates on a fixed event without
//! panicking (an evaluation error is no match).
#![no_main]

use herald_engine::payload_filter::{FilterVars, PayloadFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
