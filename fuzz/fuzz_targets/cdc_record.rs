//! The CDC record parser over hostile records: any value bytes with any
//! headers never panic; it either parses, skips, or says why not.
#![no_main]

use herald_engine::relay::parse::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: header segments then the value, separated by 0xFF; each header
    // segment is `name=value` (no `=`: a null header value).
    let mut parts: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let value = parts.pop();
    let headers: Vec<(String, Option<Vec<u8>>)> = parts
        .iter()
        .take(8)
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (
                String::from_utf8_lossy(&p[..i]).into_owned(),
                Some(p[i + 1..].to_vec()),
            ),
            None => (String::from_utf8_lossy(p).into_owned(), None),
        })
        .collect();
    let borrowed: Vec<(&str, Option<&[u8]>)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    let _ = parse(value, &borrowed);
});
