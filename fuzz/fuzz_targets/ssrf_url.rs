//! The URL / SSRF check over hostile URLs: never panics, and whatever it
//! accepts with an IP-literal host is a public address.
#![no_main]

use herald_engine::ssrf::TargetGuard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let guard = TargetGuard::default();
    if let Ok(url) = guard.check_url(raw) {
        assert!(
            matches!(url.scheme(), "http" | "https"),
            "accepted scheme {}",
            url.scheme()
        );
        assert!(url.username().is_empty() && url.password().is_none());
        match url.host() {
            Some(url::Host::Ipv4(ip)) => {
                assert!(guard.check_ip(ip.into()).is_ok(), "accepted {ip}")
            }
            Some(url::Host::Ipv6(ip)) => {
                assert!(guard.check_ip(ip.into()).is_ok(), "accepted {ip}")
            }
            Some(url::Host::Domain(d)) => assert!(!d.eq_ignore_ascii_case("localhost")),
            None => panic!("accepted a URL without a host: {raw:?}"),
        }
    }
});
