//! Faults injected during a run, on a schedule relative to the start of the
//! emit: `kill9@5s` (SIGKILL the server this run started, then start it
//! again on the same data dir and port), `sigterm@5s` (SIGTERM: the server
//! must drain and exit 0, then it is started again), `outage@5s+30s` (the
//! receivers answer 503 for 30 s), `hang@5s+20s` (the receivers accept
//! requests and never answer for 20 s). The accounting is the run's: every
//! acknowledged event must still reach every subscription.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::{farm::FarmState, server::Server};

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// What happens.
    pub kind: Kind,
    /// When, from the start of the emit.
    pub at: Duration,
    /// For how long (receiver faults).
    pub lasting: Duration,
}

/// The faults the run can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SIGKILL the server, then restart it.
    Kill9,
    /// SIGTERM the server (graceful drain, exit 0 expected), then restart it.
    Sigterm,
    /// Receivers answer 503.
    Outage,
    /// Receivers never answer.
    Hang,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill9 => "kill9",
            Kind::Sigterm => "sigterm",
            Kind::Outage => "outage",
            Kind::Hang => "hang",
        })
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage =
            "a fault is KIND@AT (kill9@5s, sigterm@5s) or KIND@AT+FOR (outage@5s+30s, hang@5s+20s)";
        let (kind, when) = s.split_once('@').ok_or(usage)?;
        let kind = match kind {
            "kill9" => Kind::Kill9,
            "sigterm" => Kind::Sigterm,
            "outage" => Kind::Outage,
            "hang" => Kind::Hang,
            other => return Err(format!("unknown fault {other:?}: {usage}")),
        };
        let (at, lasting) = match when.split_once('+') {
            Some((at, lasting)) => (at, Some(lasting)),
            None => (when, None),
        };
        let dur =
            |t: &str| humantime::parse_duration(t).map_err(|e| format!("{t:?}: {e}; {usage}"));
        let at = dur(at)?;
        let lasting = match (kind, lasting) {
            (Kind::Outage | Kind::Hang, Some(l)) => dur(l)?,
            (Kind::Outage | Kind::Hang, None) => {
                return Err(format!("{kind} needs a length, e.g. {kind}@5s+30s"))
            }
            (_, Some(_)) => return Err(format!("{kind} takes no length: {kind}@5s")),
            (_, None) => Duration::ZERO,
        };
        Ok(Self { kind, at, lasting })
    }
}

/// What an injected fault did.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// The fault.
    pub kind: Kind,
    /// Seconds from the start of the emit.
    pub at_s: f64,
    /// Seconds it lasted (server down until healthy again, or the receiver fault).
    pub lasted_s: f64,
    /// What was observed (exit status, restart).
    pub detail: String,
    /// Whether it went as it must (a SIGTERM must end in exit 0).
    pub ok: bool,
}

/// Runs `faults` in order, each at its time from now.
pub async fn inject(
    mut faults: Vec<Fault>,
    server: Arc<Mutex<Server>>,
    farm: Arc<FarmState>,
) -> anyhow::Result<Vec<Injected>> {
    let start = tokio::time::Instant::now();
    faults.sort_by_key(|f| f.at);
    let mut out = Vec::new();
    for f in faults {
        tokio::time::sleep_until(start + f.at).await;
        let at_s = start.elapsed().as_secs_f64();
        let t0 = tokio::time::Instant::now();
        let (detail, ok) = match f.kind {
            Kind::Kill9 | Kind::Sigterm => {
                let mut s = server.lock().await;
                let status = if f.kind == Kind::Kill9 {
                    s.kill9().await?
                } else {
                    s.terminate(Duration::from_secs(60)).await?
                };
                s.restart()
                    .await
                    .context("restarting herald after the fault")?;
                let ok = f.kind == Kind::Kill9 || status.success();
                (format!("server exited ({status}), restarted"), ok)
            }
            Kind::Outage | Kind::Hang => {
                farm.set_fault(Some(f.kind));
                tokio::time::sleep(f.lasting).await;
                farm.set_fault(None);
                (
                    format!(
                        "receivers {}",
                        if f.kind == Kind::Outage {
                            "answered 503"
                        } else {
                            "hung"
                        }
                    ),
                    true,
                )
            }
        };
        out.push(Injected {
            kind: f.kind,
            at_s,
            lasted_s: t0.elapsed().as_secs_f64(),
            detail,
            ok,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults_and_explains_bad_ones() {
        let f: Fault = "outage@5s+30s".parse().unwrap();
        assert_eq!(
            (f.kind, f.at, f.lasting),
            (
                Kind::Outage,
                Duration::from_secs(5),
                Duration::from_secs(30)
            )
        );
        let f: Fault = "kill9@1500ms".parse().unwrap();
        assert_eq!((f.kind, f.at), (Kind::Kill9, Duration::from_millis(1500)));
        assert!("hang@5s"
            .parse::<Fault>()
            .unwrap_err()
            .contains("needs a length"));
        assert!("sigterm@5s+1s"
            .parse::<Fault>()
            .unwrap_err()
            .contains("no length"));
        assert!("reboot@5s"
            .parse::<Fault>()
            .unwrap_err()
            .contains("unknown fault"));
        assert!("kill9".parse::<Fault>().unwrap_err().contains("KIND@AT"));
    }
}
