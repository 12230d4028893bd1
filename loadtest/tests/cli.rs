//! The `herald-loadtest` binary's command line: what it offers and how it
//! refuses a run it cannot account for. (Also makes `cargo test` build the
//! real binary, which `scripts/test`'s smoke run and fault suite then use.)

use std::process::Command;

fn loadtest(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
        .args(args)
        .output()
        .expect("herald-loadtest runs")
}

#[test]
fn run_offers_an_independent_receiver_and_the_raw_baseline() {
    let out = loadtest(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--external-receiver",
        "--receiver-log",
        "--raw-duration",
        "--drain-timeout",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
}

#[test]
fn an_external_receiver_without_its_access_log_is_refused_naming_what_is_missing() {
    let out = loadtest(&["run", "--external-receiver", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--receiver-log"), "{err}");
}
