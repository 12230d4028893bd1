//! An event's payload, kept as its compact JSON text.
//!
//! A payload goes into the log, the event index and every delivery's
//! request body, and the API echoes it back; it is read as a tree only to
//! check it against a schema or to evaluate a filter. Kept as text (a
//! [`RawValue`]), each of those is a copy of bytes rather than an encoding
//! of a tree, and no tree of allocations is built, cloned and dropped per
//! event (docs/performance.md, *One encoding of the payload*).
//!
//! The text is compact: whitespace between tokens is removed when a
//! payload is read, so its size (the limit counts it) and the bytes
//! delivered do not depend on how the emitter formatted it. Numbers and
//! the order of keys are kept as written.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{value::RawValue, Value};

/// An event's payload: compact JSON text (usually an object: the emit
/// paths refuse anything else).
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The payload of `value`.
    pub fn from_value(value: &Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value always encodes"))
    }

    /// The payload as a tree, to validate it or evaluate a filter on it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("a payload is valid JSON")
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The size of the JSON text in bytes.
    pub fn size(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the payload is a JSON object.
    pub fn is_object(&self) -> bool {
        self.0.get().starts_with('{')
    }
}

impl Default for Payload {
    /// The empty object.
    fn default() -> Self {
        Self(RawValue::from_string("{}".into()).expect("{} is JSON"))
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from_value(&value)
    }
}

impl PartialEq for Payload {
    /// The same text (payloads are compact, so equal trees with keys in
    /// the same order are the same text).
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        match compacted(raw.get()) {
            None => Ok(Self(raw)),
            Some(text) => RawValue::from_string(text)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Valid JSON `text` without the whitespace outside its strings, or `None`
/// when it has none.
fn compacted(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b' ' | b'\n' | b'\r' | b'\t' => {
                    out.get_or_insert_with(|| bytes[..i].to_vec());
                    continue;
                }
                _ => {}
            }
        }
        if let Some(out) = &mut out {
            out.push(b);
        }
    }
    // Only ASCII whitespace was removed, between tokens: still UTF-8.
    out.map(|out| String::from_utf8(out).expect("JSON text less ASCII whitespace is UTF-8"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(text: &str) -> Payload {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_payload_read_with_whitespace_is_compacted_and_strings_are_kept() {
        let p =
            read("{\n  \"name\" : \"a b\\\" c \",\n\t\"n\": [1, 2.50, 18446744073709551616]\r\n}");
        // Numbers stay as written (no round trip through a float).
        assert_eq!(
            p.get(),
            r#"{"name":"a b\" c ","n":[1,2.50,18446744073709551616]}"#
        );
        assert!(p.is_object());
        assert_eq!(p.size(), p.get().len());
    }

    #[test]
    fn a_compact_payload_is_kept_as_written() {
        // Keys in their order, numbers as written.
        let text = r#"{"z":1,"a":18446744073709551616,"s":"x y","e":1.50}"#;
        assert_eq!(read(text).get(), text);
    }

    #[test]
    fn a_payload_round_trips_inside_an_object_and_through_a_tree() {
        #[derive(Serialize, Deserialize)]
        struct Holder {
            payload: Payload,
            after: u8,
        }
        let h: Holder =
            serde_json::from_str(r#"{"payload": {"a": [1, {"b": null}]}, "after": 7}"#).unwrap();
        assert_eq!(h.payload.get(), r#"{"a":[1,{"b":null}]}"#);
        assert_eq!(h.after, 7);
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"payload":{"a":[1,{"b":null}]},"after":7}"#
        );
        assert_eq!(h.payload.to_value(), json!({"a": [1, {"b": null}]}));
        assert_eq!(Payload::from(json!({"a": [1, {"b": null}]})), h.payload);
        // Read from a tree, as `serde_json::from_value` does.
        let from_tree: Holder =
            serde_json::from_value(json!({"payload": {"k": "v"}, "after": 1})).unwrap();
        assert_eq!(from_tree.payload.get(), r#"{"k":"v"}"#);
    }

    #[test]
    fn only_an_object_is_an_object() {
        assert!(!read("[1]").is_object());
        assert!(!read(r#""{""#).is_object());
        assert!(Payload::default().is_object());
        assert_eq!(compacted("[1, 2]").as_deref(), Some("[1,2]"));
        assert_eq!(compacted(r#"["a b","c\\"]"#), None);
        assert_eq!(
            compacted(r#"["\\" , "é"]"#).as_deref(),
            Some(r#"["\\","é"]"#)
        );
    }
}
