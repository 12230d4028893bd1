//! An independent receiver: a server that is not this program (nginx, say)
//! answers the deliveries, and its access log is what counts them. The log
//! must have one line per request in the form
//! `$msec $status $uri $http_webhook_id` (nginx: `log_format herald
//! '$msec $status $uri $http_webhook_id';`, see `scripts/nginx-receiver`).
//! Subscription `i` is created at `<base>/s/<i>`, so a line's URI says
//! which subscription it is. Signatures are not checked by such a
//! receiver; emit-to-delivery latency runs from each event's send time
//! (kept by the emitter) to the log time of its first delivery to each
//! subscription, both to the millisecond.

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::{
    emitter::Emitted,
    farm::{histogram, FarmState},
};

/// One access-log line.
#[derive(Debug, PartialEq)]
struct Line<'a> {
    at_ms: u64,
    status: u16,
    subscription: Option<usize>,
    id: &'a str,
}

fn parse(line: &str) -> Option<Line<'_>> {
    let mut f = line.split_ascii_whitespace();
    let msec: f64 = f.next()?.parse().ok()?;
    let status = f.next()?.parse().ok()?;
    let uri = f.next()?;
    let id = f.next().unwrap_or("-");
    Some(Line {
        at_ms: (msec * 1000.0) as u64,
        status,
        subscription: uri.strip_prefix("/s/").and_then(|s| s.parse().ok()),
        id,
    })
}

/// Tails the access log from its current end, counting each successful
/// delivery into `state` as the built-in receivers would.
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogFollower {
    /// Starts at the log's current end (earlier runs' lines are not counted).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let offset = std::fs::metadata(path)
            .with_context(|| {
                format!(
                    "reading the receiver's access log {} (is the receiver running?)",
                    path.display()
                )
            })?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        })
    }

    /// Reads what was appended since the last call and counts it.
    pub fn poll(&mut self, state: &FarmState) -> anyhow::Result<()> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = String::new();
        self.offset += file.read_to_string(&mut buf)? as u64;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(());
        };
        let complete: String = self.partial.drain(..=end).collect();
        for line in complete.lines().filter_map(parse) {
            let Some(sub) = line.subscription else {
                continue;
            };
            if !(200..300).contains(&line.status) || sub >= state.tallies.len() {
                continue;
            }
            let first = {
                let mut tally = state.tallies[sub].lock();
                let n = tally.entry(line.id.into()).or_insert(0);
                *n += 1;
                *n == 1
            };
            state.deliveries.fetch_add(1, Ordering::Relaxed);
            if first {
                state.first_deliveries.fetch_add(1, Ordering::Relaxed);
                state
                    .first_arrivals
                    .lock()
                    .push((line.id.into(), line.at_ms));
            }
            state
                .last_delivery_ms
                .fetch_max(line.at_ms, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Polls every 50 ms until the task is aborted.
    pub fn spawn(mut self, state: Arc<FarmState>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.poll(&state) {
                    eprintln!("reading {}: {e}", self.path.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

/// Emit-to-delivery latency in microseconds of every first delivery the
/// log showed of an acknowledged event (whole milliseconds: the log's
/// resolution; a delivery logged in the millisecond of its send counts 1 µs).
pub fn latency(emitted: &Emitted, state: &FarmState) -> Histogram<u64> {
    let sent = emitted.sent_ms.lock();
    let mut h = histogram();
    for (id, at_ms) in state.first_arrivals.lock().iter() {
        if let Some(sent_ms) = sent.get(id) {
            let _ = h.record((at_ms.saturating_sub(*sent_ms) * 1000).max(1));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_log_format() {
        assert_eq!(
            parse("1733300000.123 200 /s/7 evt_abc"),
            Some(Line {
                at_ms: 1_733_300_000_123,
                status: 200,
                subscription: Some(7),
                id: "evt_abc"
            })
        );
        let raw = parse("1733300000.5 200 /raw -").unwrap();
        assert_eq!(raw.subscription, None);
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn counts_deliveries_and_duplicates_from_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "1.0 200 /s/0 evt_old\n").unwrap();
        let farm = crate::farm::FarmState::for_external(2);
        let mut follower = LogFollower::open(&path).unwrap();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "2.0 200 /s/0 evt_a\n2.5 200 /s/1 evt_a\n3.0 503 /s/0 evt_b\n3.5 200 /s/0 evt_a\n4.0 200 /s/1 evt_").unwrap();
        follower.poll(&farm).unwrap();
        assert_eq!(farm.deliveries.load(Ordering::Relaxed), 3);
        assert_eq!(farm.first_deliveries.load(Ordering::Relaxed), 2);
        writeln!(f, "c").unwrap();
        follower.poll(&farm).unwrap();
        assert_eq!(
            farm.first_deliveries.load(Ordering::Relaxed),
            3,
            "a line split across reads counts once"
        );
        assert_eq!(farm.last_delivery_ms.load(Ordering::Relaxed), 4_000);
        assert_eq!(farm.tallies[0].lock().get("evt_a"), Some(&2));

        // Latency: from the send time of the acknowledged events to each
        // first delivery; evt_c was never acknowledged, and evt_a's second
        // delivery to subscription 0 is not a first.
        let emitted = crate::emitter::Emitted::new(1);
        emitted.sent_ms.lock().insert("evt_a".into(), 1_500);
        emitted.sent_ms.lock().insert("evt_b".into(), 1_000);
        let h = latency(&emitted, &farm);
        assert_eq!(h.len(), 2, "evt_a at /s/0 and at /s/1");
        assert!(h.equivalent(h.min(), 500_000), "{}", h.min());
        assert!(h.equivalent(h.max(), 1_000_000), "{}", h.max());
    }
}
