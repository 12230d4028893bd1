//! The Herald under test: a `herald serve` child process this run starts
//! (temp data dir, loopback allowed) or a running server given by URL; and
//! a sampler of its CPU time and RSS from `/proc/<pid>/{stat,status}`.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::process::{Child, Command};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// A Herald the run talks to.
pub struct Server {
    /// Base URL.
    pub base: String,
    /// Admin token.
    pub admin_token: String,
    /// Process id, when known (for CPU and RSS).
    pub pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    /// How to start it again (a server this run started).
    command: Option<std::sync::Arc<dyn Fn() -> Command + Send + Sync>>,
}

/// How to start an embedded Herald.
pub struct Spawn {
    /// The `herald` binary.
    pub bin: Option<PathBuf>,
    /// `--retry-schedule` of the server.
    pub retry_schedule: String,
    /// Extra `herald serve` arguments.
    pub extra: Vec<String>,
}

impl Server {
    /// A running Herald.
    pub fn running(base: String, admin_token: String, pid: Option<u32>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            admin_token,
            pid,
            child: None,
            _dir: None,
            command: None,
        }
    }

    /// Starts `herald serve` on a free loopback port with a temp data dir.
    pub async fn spawn(spec: Spawn) -> anyhow::Result<Self> {
        let bin = match spec.bin {
            Some(b) => b,
            None => std::env::current_exe()?
                .with_file_name("herald")
                .canonicalize()
                .context("no `herald` next to herald-loadtest; build it (cargo build --release -p herald-api) or pass --herald-bin")?,
        };
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let admin_token = format!("loadtest-{}", uuid_like());
        let (data_dir, token) = (dir.path().to_path_buf(), admin_token.clone());
        let command = std::sync::Arc::new(move || {
            let mut c = Command::new(&bin);
            c.arg("serve")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--admin-token", &token])
                .args(["--allow-target", "127.0.0.0/8"])
                // One tenant at full speed: the per-tenant request limit
                // would turn flat-out single emits into 429s.
                .args(["--tenant-rate-limit", "0"])
                .args(["--retry-schedule", &spec.retry_schedule])
                .args(&spec.extra)
                .env("HERALD_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            c
        });
        let mut server = Self {
            base: format!("http://127.0.0.1:{port}"),
            admin_token,
            pid: None,
            child: None,
            _dir: Some(dir),
            command: Some(command),
        };
        server.restart().await?;
        Ok(server)
    }

    /// Starts the server this run started (again: same data dir and port),
    /// and waits until it answers `/healthz`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let command = self
            .command
            .clone()
            .context("not a server this run started")?;
        let child = command().spawn().context("starting herald")?;
        self.pid = child.id();
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("herald exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("herald did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs a server this run started; returns its exit status.
    pub async fn kill9(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("no server process to kill")?;
        child.start_kill()?;
        Ok(child.wait().await?)
    }

    /// SIGTERMs a server this run started and waits up to `limit` for it to
    /// drain and exit; returns its exit status.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("no server process to stop")?;
        let pid = child.id().context("the server already exited")?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed: {sent}");
        }
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                child.start_kill()?;
                bail!("herald did not exit within {limit:?} of SIGTERM");
            }
        }
    }

    /// Stops a server this run started.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("{n:032x}")
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t: f64,
    /// CPU use over the last interval, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Resident set size, MiB.
    pub rss_mib: f64,
}

/// Reads utime+stime (seconds) and VmRSS (MiB) of `pid`.
pub fn read_proc(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: ") S ppid …".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / USER_HZ, rss_kib / 1024.0))
}

/// Samples a process every `every` until dropped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    first: Option<(Instant, f64)>,
    task: tokio::task::JoinHandle<()>,
    pid: u32,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let first = read_proc(pid).map(|(cpu, _)| (Instant::now(), cpu));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = read_proc(pid).map(|(c, _)| (Instant::now(), c));
            loop {
                tokio::time::sleep(every).await;
                let Some((cpu, rss)) = read_proc(pid) else {
                    return;
                };
                let now = Instant::now();
                let cores = last.map_or(0.0, |(t, c)| (cpu - c) / (now - t).as_secs_f64());
                last = Some((now, cpu));
                out.lock().push(Sample {
                    t: started.elapsed().as_secs_f64(),
                    cpu_cores: cores,
                    rss_mib: rss,
                });
            }
        });
        Self {
            samples,
            first,
            task,
            pid,
        }
    }

    /// Stops; returns the samples and the average CPU (cores) since start.
    pub fn finish(self) -> (Vec<Sample>, Option<f64>) {
        self.task.abort();
        let avg = match (self.first, read_proc(self.pid)) {
            (Some((t0, c0)), Some((c1, _))) => Some((c1 - c0) / t0.elapsed().as_secs_f64()),
            _ => None,
        };
        let samples = self.samples.lock().clone();
        (samples, avg)
    }

    /// The samples so far.
    pub fn peek(&self) -> Option<Sample> {
        self.samples.lock().last().copied()
    }
}
