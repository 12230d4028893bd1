//! Signature verification over hostile `webhook-signature` headers: never
//! panics, never accepts a header that doesn't carry the right MAC, and
//! always accepts the header Herald itself produces.
#![no_main]

use herald_engine::signing::{signature_header, verify, SigningSecret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret =
        SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("test secret");
    let (header, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let header = String::from_utf8_lossy(header);
    let genuine = secret.sign("msg_fuzz", 1_700_000_000, body);
    let accepted = verify(&secret, "msg_fuzz", 1_700_000_000, body, &header);
    // Accepting means the header really contains the genuine signature.
    if accepted {
        assert!(
            header.split(' ').any(|part| part == genuine),
            "accepted a forged header {header:?}"
        );
    }
    // What we produce always verifies, also next to arbitrary garbage.
    let ours = signature_header([&secret], "msg_fuzz", 1_700_000_000, body);
    assert!(verify(
        &secret,
        "msg_fuzz",
        1_700_000_000,
        body,
        &format!("{header} {ours}")
    ));
});
