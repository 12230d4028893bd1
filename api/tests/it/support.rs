//! Test harness: an in-process Herald on a free port, and receivers that
//! record what they get.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use herald_api::{app, AppState};
use herald_engine::{Engine, EngineConfig};
use serde_json::{json, Value};
use standardwebhooks::{Webhook, WebhookError};
use std::sync::Mutex;
use tempfile::TempDir;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// A Herald server running inside the test process.
pub struct Herald {
    pub base: String,
    pub engine: Arc<Engine>,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    dir: TempDir,
}

/// The cipher of the key a Herald generated in its data dir (to open its
/// store directly).
pub fn data_dir_cipher(dir: &std::path::Path) -> herald_engine::encryption::SecretCipher {
    use herald_engine::encryption::{load_or_create_key_file, KeyRing, SecretCipher};
    let (key, _) = load_or_create_key_file(&dir.join("secret.key")).unwrap();
    SecretCipher::new(KeyRing::single(key), "the data dir's key")
}

/// A test config: loopback allowed, quick retries.
pub fn test_config(dir: &std::path::Path) -> EngineConfig {
    let mut config = EngineConfig {
        data_dir: dir.to_path_buf(),
        allow_targets: vec!["127.0.0.0/8".parse().unwrap()],
        retry_schedule: "1s,1s,1s".parse().unwrap(),
        ..EngineConfig::default()
    };
    config.delivery.retry_jitter = 0.0;
    config
}

impl Herald {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut EngineConfig)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tune, |s| s).await
    }

    /// Starts on `dir` (possibly holding a previous run's data), with the
    /// engine config and the app state adjusted.
    pub async fn start_in(
        dir: TempDir,
        tune: impl FnOnce(&mut EngineConfig),
        tune_state: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        let mut config = test_config(dir.path());
        tune(&mut config);
        let engine = Engine::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = tune_state(AppState::new(engine.clone(), ADMIN));
        // The binary's server (with its request head limits), not axum::serve.
        let server = tokio::spawn(async move {
            herald_api::server::serve(listener, app(state), std::future::pending())
                .await
                .unwrap()
        });
        Self {
            base: format!("http://{addr}"),
            engine,
            http: reqwest::Client::new(),
            server,
            dir,
        }
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops the server and the engine; returns the data directory.
    pub async fn stop(self) -> TempDir {
        self.server.abort();
        let _ = self.server.await;
        self.engine.shutdown().await;
        self.dir
    }

    /// Any request; `body` is sent as JSON when given.
    pub async fn call(
        &self,
        method: &str,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        split(r.send().await.unwrap()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a tenant; returns its API key.
    pub async fn tenant(&self, id: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/v1/admin/tenants"))
            .bearer_auth(ADMIN)
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        split(r).await
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        split(r).await
    }

    pub async fn subscribe(&self, key: &str, url: &str, types: &[&str]) -> Value {
        let (status, body) = self
            .post(
                key,
                "/api/v1/portal/webhooks/subscribe",
                json!({ "url": url, "event_types": types }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn emit(&self, key: &str, event_type: &str, payload: Value) -> Value {
        let (status, body) = self
            .post(
                key,
                "/api/v1/integrations/events",
                json!({ "event_type": event_type, "payload": payload }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    /// Every delivery log record matching `query`, all pages.
    pub async fn logs(&self, key: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(
                    key,
                    &format!("/api/v1/integrations/webhooks?limit=500&{query}&cursor={cursor}"),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return out,
            }
        }
    }
}

pub async fn split(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived, in Unix seconds.
    pub at: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Whether one of `hooks` signed this request, as a receiver would have
    /// judged on its arrival: the verifier refuses a timestamp more than
    /// five minutes from *now*, so a request checked late in a long test
    /// is judged against its arrival time instead (same HMAC, from the
    /// verifier's own `sign`). Returns every verifier's refusal otherwise.
    pub fn signed_by(&self, hooks: &[Webhook]) -> Result<(), Vec<WebhookError>> {
        let mut refusals = Vec::new();
        for hook in hooks {
            match hook.verify(&self.body, &self.headers) {
                Ok(()) => return Ok(()),
                Err(WebhookError::TimestampTooOldError) => {
                    let ts: i64 = self.header("webhook-timestamp").parse().unwrap_or(0);
                    let expected = hook.sign(self.header("webhook-id"), ts, &self.body);
                    let fresh = (self.at - ts).abs() <= 5 * 60;
                    let matches = |want: &String| {
                        self.header("webhook-signature")
                            .split(' ')
                            .any(|s| s == want)
                    };
                    match expected {
                        Ok(want) if fresh && matches(&want) => return Ok(()),
                        _ => refusals.push(WebhookError::TimestampTooOldError),
                    }
                }
                Err(e) => refusals.push(e),
            }
        }
        Err(refusals)
    }
}

/// An HTTP endpoint on loopback that records requests and answers `status`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<AtomicU16>,
    pub hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

async fn record(
    State(s): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap();
    if status.is_success() {
        let at = time::OffsetDateTime::now_utc().unix_timestamp();
        s.received
            .lock()
            .unwrap()
            .push(Received { headers, body, at });
    }
    (status, "ok")
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), status).await
    }

    pub async fn start_on(addr: SocketAddr, status: u16) -> Self {
        let state = ReceiverState {
            received: Arc::new(Mutex::new(Vec::new())),
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/hook", post(record))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            url: format!("http://{addr}/hook"),
            received: state.received,
            status: state.status,
            hits: state.hits,
        }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("gave up waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real `herald serve` process (the binary this test run built) whose
/// stdout and stderr both go, whole, to one log file. Every test that runs
/// the binary starts it through [`HeraldProcess::spawn`].
pub struct HeraldProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

impl HeraldProcess {
    /// Starts `herald serve` listening on a free loopback port, with the
    /// admin token [`ADMIN`], loopback targets allowed, `--data-dir
    /// data_dir`, then `args`, and the environment `env` (the encryption key
    /// of the test's own environment is never passed on). Its output is
    /// appended to `log`. `Err` with the log's text when it exits before
    /// listening.
    pub async fn spawn(
        data_dir: &std::path::Path,
        log: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        use std::process::Stdio;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

        std::fs::create_dir_all(data_dir).unwrap();
        let append = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap()
        };
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
            .args(["--allow-target", "127.0.0.0/8"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("HERALD_SECRET_ENCRYPTION_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(append()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut out = tokio::fs::File::from_std(append());
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = out.write_all(format!("{line}\n").as_bytes()).await;
                let _ = out.flush().await;
                if let Some(url) = line.strip_prefix("herald listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(90), rx).await {
            Ok(Ok(base)) => Ok(Self { child, base }),
            Ok(Err(_)) => {
                let status = child.wait().await.unwrap();
                // Let the stderr writes land.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(format!(
                    "herald exited ({status}) before listening:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ))
            }
            Err(_) => panic!("herald did not start within 90 s (log: {})", log.display()),
        }
    }

    /// [`Self::spawn`] with quick retries (`--retry-schedule 1s,1s,1s`).
    pub async fn start(
        data_dir: &std::path::Path,
        log: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut all = vec!["--retry-schedule", "1s,1s,1s"];
        all.extend_from_slice(args);
        Self::spawn(data_dir, log, &all, env).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("herald is running")
    }

    /// SIGKILL, and waits for the process to go.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM; returns the exit status (the process must drain and exit
    /// within 60 s).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("herald exits within 60 s of SIGTERM")
            .unwrap()
    }

    /// SIGTERM, then asserts a clean exit.
    pub async fn stop(self) {
        let status = self.terminate().await;
        assert!(status.success(), "herald exited with {status}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a tenant; returns its API key.
    pub async fn tenant(&self, id: &str) -> String {
        let r = reqwest::Client::new()
            .post(self.url("/api/v1/admin/tenants"))
            .bearer_auth(ADMIN)
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A POST with a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        split(r).await
    }
}

/// The files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}
