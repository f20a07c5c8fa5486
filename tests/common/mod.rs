//! Shared helpers for the integration tests: a real mock partner on 127.0.0.1:0 with its own
//! temporary TLS directory, configs written to disk and loaded through the real parser, and a
//! plain HTTP client for the intake.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use irisd::config::Config;
use irisd::mock::{ClientSpec, MockConfig, MockPartner};
use irisd::transport::{decode_body, ClientOptions, HttpClient, Response};
use tempfile::TempDir;

pub const CLIENT_ID: &str = "iris-test";
pub const CLIENT_SECRET: &str = "s3cr3t-Value:with@odd chars%!";

pub struct Env {
    pub dir: TempDir,
    pub mock: MockPartner,
}

/// Starts a mock partner accepting CLIENT_ID/CLIENT_SECRET; `tweak` adjusts its config.
pub async fn mock(tweak: impl FnOnce(&mut MockConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_dir: dir.path().join("tls"),
        clients: vec![ClientSpec {
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            basic: None,
            scopes: vec![],
            active: true,
        }],
        ..MockConfig::default()
    };
    tweak(&mut cfg);
    let mock = MockPartner::start(cfg).await.unwrap();
    Env { dir, mock }
}

impl Env {
    /// A daemon config for one destination "partner-a" at the mock; `publish_extra` is added
    /// to `[destination.publish]`, `auth_extra` to `[destination.auth]`.
    pub fn config(&self, publish_extra: &str, auth_extra: &str) -> Config {
        self.config_with(publish_extra, auth_extra, "", "")
    }

    /// Like [`Env::config`], plus lines for `[spool]` and `[destination.retry]`.
    pub fn config_with(
        &self,
        publish_extra: &str,
        auth_extra: &str,
        spool_extra: &str,
        retry_extra: &str,
    ) -> Config {
        self.config_file()
            .publish(publish_extra)
            .auth(auth_extra)
            .spool(spool_extra)
            .retry(retry_extra)
            .load()
    }

    /// The test daemon's configuration file, built section by section.
    pub fn config_file(&self) -> ConfigFile<'_> {
        ConfigFile {
            env: self,
            top: String::new(),
            listen: "127.0.0.1:0".into(),
            intake: String::new(),
            spool: String::new(),
            admin: None,
            destination: String::new(),
            auth: String::new(),
            publish: String::new(),
            retry: String::new(),
            tls: None,
            sections: String::new(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.mock.ca_file.clone()
    }
}

/// `irisd.toml` in the test's directory: one destination "partner-a" at the mock (client
/// secret in the file `secret`, the mock's CA trusted), plus the lines each method adds to its
/// section.
pub struct ConfigFile<'a> {
    env: &'a Env,
    top: String,
    listen: String,
    intake: String,
    spool: String,
    admin: Option<String>,
    destination: String,
    auth: String,
    publish: String,
    retry: String,
    tls: Option<String>,
    sections: String,
}

impl ConfigFile<'_> {
    /// Top-level keys (before any section).
    pub fn top(mut self, lines: &str) -> Self {
        self.top = format!("{lines}\n");
        self
    }
    /// The intake's `listen` address (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.into();
        self
    }
    /// `[intake]` lines after its `listen`.
    pub fn intake(mut self, lines: &str) -> Self {
        self.intake = lines.into();
        self
    }
    /// `[spool]` lines after its `path = "spool.sqlite"`.
    pub fn spool(mut self, lines: &str) -> Self {
        self.spool = lines.into();
        self
    }
    /// An `[admin]` section with these lines.
    pub fn admin(mut self, lines: &str) -> Self {
        self.admin = Some(lines.into());
        self
    }
    /// Keys of the `[[destination]]` itself (e.g. `profile`).
    pub fn destination(mut self, lines: &str) -> Self {
        self.destination = lines.into();
        self
    }
    pub fn auth(mut self, lines: &str) -> Self {
        self.auth = lines.into();
        self
    }
    pub fn publish(mut self, lines: &str) -> Self {
        self.publish = lines.into();
        self
    }
    pub fn retry(mut self, lines: &str) -> Self {
        self.retry = lines.into();
        self
    }
    /// `[destination.tls]` lines instead of trusting the mock's CA.
    pub fn tls(mut self, lines: &str) -> Self {
        self.tls = Some(lines.into());
        self
    }
    /// Whole sections appended at the end (e.g. `[destination.batch]` and its keys).
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push_str(text);
        self.sections.push('\n');
        self
    }

    pub fn text(&self) -> String {
        let env = self.env;
        let tls = self
            .tls
            .clone()
            .unwrap_or_else(|| format!("ca_file = \"{}\"", env.mock.ca_file.display()));
        let admin = self
            .admin
            .as_ref()
            .map(|a| format!("[admin]\n{a}\n"))
            .unwrap_or_default();
        format!(
            r#"{top}[intake]
listen = "{listen}"
{intake}

[spool]
path = "spool.sqlite"
{spool}

{admin}
[[destination]]
name = "partner-a"
destination_id = "423"
user_dpid = "12345"
aam_client_id = "74323"
{destination}

[destination.auth]
token_url = "{token_url}"
client_id = "{CLIENT_ID}"
client_secret_file = "secret"
{auth}

[destination.publish]
url = "{publish_url}"
{publish}

[destination.retry]
{retry}

[destination.tls]
{tls}

{sections}"#,
            top = self.top,
            listen = self.listen,
            intake = self.intake,
            spool = self.spool,
            destination = self.destination,
            auth = self.auth,
            publish = self.publish,
            retry = self.retry,
            sections = self.sections,
            token_url = env.mock.token_url(),
            publish_url = env.mock.publish_url(),
        )
    }

    /// Writes `irisd.toml` and the secret file (owner-only); returns the config's path.
    pub fn write(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let secret = self.env.dir.path().join("secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = self.env.dir.path().join("irisd.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }

    /// Writes it and loads it through the real parser.
    pub fn load(&self) -> Config {
        Config::load(&self.write()).unwrap()
    }

    /// Writes it and loads it, or says why not.
    pub fn try_load(&self) -> Result<Config, String> {
        Config::load(&self.write()).map_err(|e| e.to_string())
    }
}

/// One NDJSON event line.
pub fn event(dest: &str, uuid: u64, segments: &[(&str, &str)]) -> String {
    let segs: Vec<String> = segments
        .iter()
        .map(|(id, st)| {
            format!(r#"{{"segment_id":"{id}","status":"{st}","time":"2016-07-27T16:17:22Z"}}"#)
        })
        .collect();
    format!(
        r#"{{"destination":"{dest}","aam_uuid":"{uuid}","data_partner_uuid":"dp-{uuid}","segments":[{}]}}"#,
        segs.join(",")
    )
}

/// POSTs `body` to the intake; returns status, Retry-After and body text.
pub async fn post_events(
    addr: SocketAddr,
    body: impl Into<Bytes>,
) -> (u16, Option<String>, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/v1/events"))
        .body(Full::new(body.into()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&text).into_owned())
}

/// POSTs `body` to the intake; the status, or `None` when the connection failed (the daemon
/// is gone).
pub async fn try_post_events(addr: SocketAddr, body: impl Into<Bytes>) -> Option<u16> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/v1/events"))
        .body(Full::new(body.into()))
        .unwrap();
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    // Read the answer so the connection completes as a producer's would.
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// A producer: posts batches of `size` fresh users of "partner-a" (ids from `first` on) until
/// `stop` or until the intake is gone; returns exactly the ids answered 202. A 503 (spool full,
/// stopping) is retried shortly; any other answer fails the test.
pub async fn produce(
    addr: SocketAddr,
    first: u64,
    size: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut next = first;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let ids: Vec<u64> = (next..next + size).collect();
        next += size;
        let body: String = ids
            .iter()
            .map(|&i| event("partner-a", i, &[("1", "1")]) + "\n")
            .collect();
        match try_post_events(addr, body).await {
            Some(202) => acked.extend(ids),
            Some(503) => tokio::time::sleep(Duration::from_millis(10)).await,
            Some(other) => panic!("the intake answered {other}"),
            None => break,
        }
    }
    acked
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The daemon process; killed if a failing test drops it.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends `signal` now.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), signal).unwrap();
    }

    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }
}

/// Starts `irisd run` and returns it with its intake address (read from its log).
pub fn spawn_daemon(config: &Path, grace_secs: u64) -> (Proc, SocketAddr) {
    spawn_daemon_with(config, grace_secs, |_| {})
}

/// [`spawn_daemon`], with `tweak` applied to the command first (environment, ...).
pub fn spawn_daemon_with(
    config: &Path,
    grace_secs: u64,
    tweak: impl FnOnce(&mut Command),
) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_irisd"));
    cmd.args(["run", "--grace-secs", &grace_secs.to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    tweak(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            panic!("irisd did not start:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.split("intake=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        seen.push(line);
    };
    // Keep draining the pipe so the daemon never blocks on a full stderr.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (Proc(child), addr)
}

pub fn https_client(env: &Env) -> HttpClient {
    HttpClient::new(&ClientOptions {
        ca_file: Some(&env.ca()),
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(5),
        http2: false,
    })
    .unwrap()
}

/// `Basic` + RFC 6749 §2.3.1 encoding of an id and secret.
pub fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// Sends a request to the mock over TLS; returns the response and its decoded JSON body.
pub async fn send(
    env: &Env,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (Response, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = https_client(env)
        .send(req, Duration::from_secs(5), 1 << 20)
        .await
        .unwrap();
    let decoded = decode_body(&resp.headers, &resp.body, 1 << 20).unwrap();
    let json = serde_json::from_slice(&decoded).unwrap_or(serde_json::Value::Null);
    (resp, json)
}
