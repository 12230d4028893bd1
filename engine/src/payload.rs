//! An event's payload, kept as its compact JSON text.
//!
//! A payload goes into the log, the event index and every delivery's
//! request body, and the API echoes it back; it is read as a tree only to
//! check it against a schema or to evaluate a filter. Kept as text (a
//! [`RawValue`]), each of those is a copy of bytes rather than an encoding
//! of a tree, and no tree of allocations is built, cloned and dropped per
//! event (docs/performance.md, *One encoding of the payload*).
//!
//! The text is compact: whitespace between tokens is removed when an
//! emitter's payload is read ([`Payload::compact`], a scan, no parse), so
//! its size (the limit counts it) and the bytes delivered do not depend on
//! how the emitter formatted it. Numbers and the order of keys are kept as
//! written. Text Herald wrote itself (the log, the store) is read as it is.

use std::fmt;

use serde::{de::Error as _, Deserialize, Deserializer, Serialize};
use serde_json::{value::RawValue, Value};

/// Deepest nesting of arrays and objects an emitted payload may have (a
/// tree parsed from the text must stay within `serde_json`'s 128 levels).
pub const MAX_DEPTH: usize = 100;

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
    /// Fails only on nesting deeper than `serde_json` parses (128 levels),
    /// which an emit refuses ([`MAX_DEPTH`]).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
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
    /// Text Herald wrote (the log, the store), taken as it is: compact
    /// already. An emitter's text is read with [`Payload::compact`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

impl Payload {
    /// Reads an emitter's payload (a `deserialize_with` for request
    /// bodies), removing the whitespace between its tokens; refuses one
    /// nested deeper than [`MAX_DEPTH`].
    pub fn compact<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let Scan { compacted, depth } = scan(raw.get());
        if depth > MAX_DEPTH {
            return Err(D::Error::custom(format!(
                "payload nested {depth} levels deep; the limit is {MAX_DEPTH}"
            )));
        }
        match compacted {
            None => Ok(Self(raw)),
            Some(text) => RawValue::from_string(text)
                .map(Self)
                .map_err(D::Error::custom),
        }
    }
}

/// What [`scan`] found in a JSON text.
struct Scan {
    /// The text without the whitespace outside its strings, `None` when
    /// it has none.
    compacted: Option<String>,
    /// The deepest nesting of arrays and objects.
    depth: usize,
}

/// Scans valid JSON `text` once. Strings are skipped to their closing
/// quote by `memchr` (most of a payload's bytes are in its strings).
fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let (mut level, mut depth) = (0usize, 0usize);
    // Bytes from `kept` on are still to be copied to `out`.
    let (mut i, mut kept) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                level += 1;
                depth = depth.max(level);
                i += 1;
            }
            b'}' | b']' => {
                level = level.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                i += 1;
                while let Some(k) = memchr::memchr2(b'"', b'\\', &b[i..]) {
                    i += k;
                    if b[i] == b'"' {
                        break;
                    }
                    i += 2; // an escape and the byte it escapes
                }
                i += 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                let out = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
                out.extend_from_slice(&b[kept..i]);
                i += 1;
                kept = i;
            }
            _ => i += 1,
        }
    }
    let compacted = out.map(|mut out| {
        out.extend_from_slice(&b[kept.min(b.len())..]);
        // Only ASCII whitespace between tokens was left out: still UTF-8.
        String::from_utf8(out).expect("JSON text less ASCII whitespace is UTF-8")
    });
    Scan { compacted, depth }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An emitter's payload, read as a request body reads it.
    fn read(text: &str) -> Payload {
        Payload::compact(&mut serde_json::Deserializer::from_str(text)).unwrap()
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
            #[serde(deserialize_with = "Payload::compact")]
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
        assert_eq!(
            h.payload.to_value().unwrap(),
            json!({"a": [1, {"b": null}]})
        );
        assert_eq!(Payload::from(json!({"a": [1, {"b": null}]})), h.payload);
        // Read from a tree, as `serde_json::from_value` does.
        let from_tree: Holder =
            serde_json::from_value(json!({"payload": {"k": "v"}, "after": 1})).unwrap();
        assert_eq!(from_tree.payload.get(), r#"{"k":"v"}"#);
    }

    #[test]
    fn pretty_text_compacts_to_the_encoders_compact_text() {
        let values = [
            json!({"a": "quote \" inside", "b": "back\\slash\\", "c": "\\\"", "d": "tab\tnew\nline  spaces"}),
            json!({"nested": {"list": [1, [2, [3, {"x": " { \" } "}]]], "empty": {}, "none": []}}),
            json!({"unicode": "é ü 中 🚀", "escaped": "\u{1} \u{1f}", "n": -1.5e-7, "t": true, "f": null}),
            json!({"": "", " ": " ", "\"": "\\"}),
        ];
        for value in values {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compact = serde_json::to_string(&value).unwrap();
            assert_eq!(
                scan(&pretty).compacted.as_deref(),
                Some(compact.as_str()),
                "{pretty}"
            );
            assert_eq!(scan(&compact).compacted, None, "{compact}");
        }
    }

    #[test]
    fn an_emitted_payload_nested_past_the_limit_is_refused() {
        let nested = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        let at_limit = read(&nested(MAX_DEPTH));
        assert!(
            at_limit.to_value().is_ok(),
            "what an emit takes parses as a tree"
        );
        let error = Payload::compact(&mut serde_json::Deserializer::from_str(&nested(
            MAX_DEPTH + 1,
        )))
        .expect_err("one level more is refused");
        assert!(
            error
                .to_string()
                .contains("nested 101 levels deep; the limit is 100"),
            "{error}"
        );
        // Brackets inside strings are not nesting.
        assert_eq!(scan(r#"{"s":"[[[{{{"}"#).depth, 1);
        // serde_json's own limit, which the emit limit keeps payloads within.
        let deep: Payload = serde_json::from_str(&nested(200)).unwrap();
        assert!(deep.to_value().is_err());
    }

    #[test]
    fn text_herald_wrote_is_read_as_it_is() {
        let stored: Payload = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(stored.get(), r#"{"a":1}"#);
        assert_eq!(serde_json::to_string(&stored).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn only_an_object_is_an_object() {
        assert!(!read("[1]").is_object());
        assert!(!read(r#""{""#).is_object());
        assert!(Payload::default().is_object());
        assert_eq!(scan("[1, 2]").compacted.as_deref(), Some("[1,2]"));
        assert_eq!(scan(r#"["a b","c\\"]"#).compacted, None);
        assert_eq!(
            scan(r#"["\\" , "é"]"#).compacted.as_deref(),
            Some(r#"["\\","é"]"#)
        );
    }
}
