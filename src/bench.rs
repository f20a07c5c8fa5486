//! `irisd bench`: end-to-end publish throughput, measured honestly, in one command. The mock
//! partner (TLS) runs in this process; the daemon (or `irisd batch run`) runs as a child
//! process, so its CPU time and peak RSS are its own. A seeded synthetic load of a fixed number
//! of distinct users goes through the intake API (or a batch file); the run ends when the mock
//! has accepted every user, and the mock's digest of what it received must equal the digest
//! of what was sent. In the same run the **ceiling** is measured: the same mock, TLS and
//! concurrency, sent payloads built and compressed in advance, so it measures only what the
//! network and the mock can take. One JSON line reports both.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::delivery::request::{PreparedRequest, RequestBuilder};
use crate::mock::{ClientSpec, MockConfig, MockPartner};
use crate::oauth::{Credentials, Token};
use crate::payload::{iris_date, render_user, user_digest, IntakeEvent, PayloadHeader};
use crate::transport::{ClientOptions, HttpClient};

/// Real-time (intake API → spool → lanes) or batch (`irisd batch run` on a .csv.gz file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Realtime,
    Batch,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Distinct users to deliver.
    pub users: u64,
    pub users_per_request: usize,
    /// gzip level 1–9; 0 = no gzip.
    pub gzip_level: u32,
    /// Requests in flight to the partner (the destination's `max_in_flight`).
    pub concurrency: usize,
    /// Concurrent producers posting to the intake (real-time).
    pub producers: usize,
    /// Events per intake request (real-time).
    pub events_per_post: usize,
    /// fsync the spool before each 202 (real-time) / each checkpoint (batch).
    pub durable: bool,
    pub mode: Mode,
    pub seed: u64,
    /// Also measure the ceiling.
    pub ceiling: bool,
    /// Publish over HTTP/2 (daemon and ceiling).
    pub http2: bool,
    /// The irisd binary to run as the daemon.
    pub irisd: PathBuf,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            users: 1_000_000,
            users_per_request: 10,
            gzip_level: 6,
            concurrency: 32,
            producers: 4,
            events_per_post: 500,
            durable: true,
            mode: Mode::Realtime,
            seed: 1,
            ceiling: true,
            http2: false,
            irisd: PathBuf::from("irisd"),
        }
    }
}

/// The JSON line `irisd bench` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub mode: Mode,
    pub users: u64,
    pub users_per_request: usize,
    pub gzip_level: u32,
    pub concurrency: usize,
    pub durable: bool,
    pub http2: bool,
    pub seed: u64,
    pub seconds: f64,
    pub users_per_sec: f64,
    pub requests_per_sec: f64,
    /// Payload MB/s before gzip.
    pub mb_per_sec_raw: f64,
    /// Body MB/s on the wire.
    pub mb_per_sec_sent: f64,
    /// Intake → partner acknowledgement, per user (real-time only).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub daemon_cpu_s_per_million_users: f64,
    pub daemon_peak_rss_mb: f64,
    /// The mock received every user exactly as sent (digest of the set matches).
    pub verified: bool,
    pub duplicates: u64,
    pub ceiling_users_per_sec: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    /// CPU seconds per million users the ceiling run used (mock + pre-built sender, this
    /// process): the ceiling saturates the same cores the daemon must share with the mock.
    pub ceiling_cpu_s_per_million_users: Option<f64>,
    /// CPU seconds per million users to parse the NDJSON, render and compress the users once
    /// (the ceiling does this before it starts the clock; the daemon must do it while it
    /// runs). Generating the lines is not counted: the load generator does that beforehand.
    pub prebuild_cpu_s_per_million_users: Option<f64>,
    /// Share of all cores the ceiling run kept busy (1.0: it was bound by CPU, not network).
    pub ceiling_cores_busy: Option<f64>,
    /// The highest ratio to the ceiling this machine allows when the ceiling is bound by CPU
    /// shared with the daemon: ceiling CPU / (cores busy × (ceiling CPU + pre-build CPU)).
    /// The daemon's run must do at least the ceiling's work and the pre-build's on the same
    /// cores (and more: intake HTTP, spool, load generator). `None` when the ceiling left
    /// cores idle (< 0.9 busy), where CPU does not bound it.
    pub ratio_bound: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
#[error("bench: {0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

const DESTINATION: &str = "bench-partner";

/// A seeded synthetic workload: user `i` is the same for a given seed, whatever reads it.
struct Workload {
    seed: u64,
}

/// One user's segments: (id, status, RFC 3339 time).
type Segments = Vec<(u32, u8, jiff::Timestamp)>;

impl Workload {
    fn user(&self, i: u64) -> (String, String, Segments) {
        let mut rng = fastrand::Rng::with_seed(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i);
        // Distinct by construction: the index is part of the id.
        let aam = format!("{}{:012}", rng.u64(10_000_000..100_000_000), i);
        let dp = format!("{:016x}", rng.u64(..));
        let n = rng.usize(1..=3);
        let base = 1_700_000_000i64;
        let segs = (0..n)
            .map(|_| {
                (
                    rng.u32(10_000..20_000),
                    u8::from(rng.u8(0..10) != 0),
                    jiff::Timestamp::from_second(base + rng.i64(0..30_000_000)).expect("in range"),
                )
            })
            .collect();
        (aam, dp, segs)
    }

    fn digest(&self, i: u64) -> u64 {
        let (aam, dp, segs) = self.user(i);
        let rendered: Vec<(String, String, String)> = segs
            .iter()
            .map(|(id, st, t)| (id.to_string(), st.to_string(), iris_date(*t)))
            .collect();
        user_digest(
            &aam,
            &dp,
            rendered
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())),
        )
    }

    fn ndjson_line(&self, i: u64, out: &mut Vec<u8>) {
        let (aam, dp, segs) = self.user(i);
        let _ = write!(
            out,
            r#"{{"destination":"{DESTINATION}","aam_uuid":"{aam}","data_partner_uuid":"{dp}","segments":["#
        );
        for (k, (id, st, t)) in segs.iter().enumerate() {
            let _ = write!(
                out,
                r#"{}{{"segment_id":"{id}","status":"{st}","time":"{t}"}}"#,
                if k > 0 { "," } else { "" }
            );
        }
        out.extend_from_slice(b"]}\n");
    }

    fn csv_rows(&self, i: u64, out: &mut Vec<u8>) {
        let (aam, dp, segs) = self.user(i);
        for (id, st, t) in segs {
            let _ = writeln!(out, "{aam},{dp},{id},{st},{t}");
        }
    }
}

/// CPU seconds (user + system) and peak RSS (bytes) of a running process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())?;
    Some((ticks as f64 / USER_HZ, hwm_kb * 1024))
}

/// /proc reports CPU times in USER_HZ units, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

/// CPU seconds of the waited-for children of this process (`cutime + cstime`).
fn children_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(13) + t(14)) as f64 / USER_HZ
}

/// Kills the child on drop (a failed run leaves no daemon behind).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGTERM (an orderly stop), via kill(1): the library forbids `unsafe`.
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Runs one benchmark.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    if opts.users == 0 || opts.users_per_request == 0 || opts.concurrency == 0 {
        return Err(err(
            "--users, --users-per-request and --concurrency must be positive",
        ));
    }
    let dir = tempdir()?;
    let result = run_in(&dir, &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> Result<PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "irisd-bench-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

async fn run_in(dir: &Path, opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let work = Workload { seed: opts.seed };
    let secret = format!("bench-{:032x}", fastrand::u128(..));
    let mock = MockPartner::start(MockConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        tls_dir: dir.join("tls"),
        max_users: opts.users_per_request.max(10),
        clients: vec![ClientSpec::with_secret("iris-bench", &secret)],
        ..MockConfig::default()
    })
    .await
    .map_err(err)?;
    std::fs::write(dir.join("client_secret"), &secret).map_err(err)?;

    // Expected fingerprint of the whole set, computed before the clock starts.
    let expected = (0..opts.users).fold(0u64, |acc, i| acc.wrapping_add(work.digest(i)));

    let (gzip, level) = if opts.gzip_level == 0 {
        ("false", 6)
    } else {
        ("true", opts.gzip_level.min(9))
    };
    let input = dir.join("users.csv.gz");
    let config = format!(
        r#"[intake]
listen = "127.0.0.1:0"
max_body_bytes = {max_body}

[spool]
path = "spool.sqlite"
fsync = {durable}

[admin]
listen = "127.0.0.1:0"

[[destination]]
name = "{DESTINATION}"
destination_id = "423"
user_dpid = "12345"
aam_client_id = "74323"

[destination.auth]
token_url = "{token_url}"
client_id = "iris-bench"
client_secret_file = "client_secret"

[destination.publish]
url = "{publish_url}"
gzip = {gzip}
gzip_level = {level}
max_users = {upr}
max_bytes = {max_bytes}
linger_ms = 20
max_in_flight = {conc}
http2 = {http2}

[destination.tls]
ca_file = "{ca}"

[destination.batch]
input = "{input}"
max_users = {upr}
max_bytes = {max_bytes}
max_in_flight = {conc}
"#,
        max_body = 64 << 20,
        durable = opts.durable,
        token_url = mock.token_url(),
        publish_url = mock.publish_url(),
        upr = opts.users_per_request,
        max_bytes = (opts.users_per_request * 1024).max(1 << 20),
        conc = opts.concurrency,
        http2 = opts.http2,
        ca = mock.ca_file.display(),
        input = input.display(),
    );
    let config_path = dir.join("irisd.toml");
    std::fs::write(&config_path, config).map_err(err)?;

    let run = match opts.mode {
        Mode::Realtime => realtime(opts, &work, &config_path).await?,
        Mode::Batch => batch(opts, &work, &config_path, &input).await?,
    };
    let stats = mock.state.stats();
    let verified = stats.unique_users == opts.users
        && stats.users_digest == expected
        && !stats.tracking_truncated;
    if !verified {
        return Err(err(format!(
            "the mock did not receive exactly what was sent: {} distinct users of {}, digest {}",
            stats.unique_users,
            opts.users,
            if stats.users_digest == expected {
                "matches"
            } else {
                "differs"
            }
        )));
    }
    let duplicates = stats.duplicate_users;
    check_version(opts, &stats, "the daemon's run")?;

    let ceiling = if opts.ceiling {
        mock.state.reset();
        let c = ceiling(opts, &work, &mock, &secret).await?;
        let s = mock.state.stats();
        if s.unique_users != opts.users || s.users_digest != expected {
            return Err(err(
                "ceiling run: the mock did not receive exactly what was sent",
            ));
        }
        check_version(opts, &s, "the ceiling run")?;
        Some(c)
    } else {
        None
    };
    mock.shutdown().await;

    let secs = run.seconds.max(1e-9);
    let users_per_sec = opts.users as f64 / secs;
    let per_million = |cpu_s: f64| round(cpu_s / opts.users as f64 * 1e6, 2);
    Ok(BenchReport {
        mode: opts.mode,
        users: opts.users,
        users_per_request: opts.users_per_request,
        gzip_level: opts.gzip_level,
        concurrency: opts.concurrency,
        durable: opts.durable,
        http2: opts.http2,
        seed: opts.seed,
        seconds: round(secs, 3),
        users_per_sec: round(users_per_sec, 0),
        requests_per_sec: round(run.requests as f64 / secs, 0),
        mb_per_sec_raw: round(run.bytes_raw as f64 / secs / 1e6, 1),
        mb_per_sec_sent: round(run.bytes_sent as f64 / secs / 1e6, 1),
        latency_p50_ms: run.lag.map(|l| l.0),
        latency_p99_ms: run.lag.map(|l| l.1),
        daemon_cpu_s_per_million_users: round(run.cpu_s / opts.users as f64 * 1e6, 2),
        daemon_peak_rss_mb: round(run.peak_rss as f64 / 1e6, 1),
        verified,
        duplicates,
        ceiling_users_per_sec: ceiling.as_ref().map(|c| round(c.users_per_sec, 0)),
        ratio_to_ceiling: ceiling
            .as_ref()
            .map(|c| round(users_per_sec / c.users_per_sec, 2)),
        ceiling_cpu_s_per_million_users: ceiling.as_ref().map(|c| per_million(c.cpu_s)),
        prebuild_cpu_s_per_million_users: ceiling.as_ref().map(|c| per_million(c.prebuild_cpu_s)),
        ceiling_cores_busy: ceiling.as_ref().map(|c| round(c.cores_busy(), 2)),
        ratio_bound: ceiling
            .as_ref()
            .and_then(Ceiling::ratio_bound)
            .map(|b| round(b, 2)),
    })
}

/// Every publish request came over the HTTP version asked for.
fn check_version(
    opts: &BenchOptions,
    s: &crate::mock::MockStats,
    run: &str,
) -> Result<(), BenchError> {
    let expected = if opts.http2 { s.publish_requests } else { 0 };
    if s.publish_requests_http2 != expected {
        return Err(err(format!(
            "{run}: {} of {} publish requests came over HTTP/2, expected {expected}",
            s.publish_requests_http2, s.publish_requests
        )));
    }
    Ok(())
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// What one measured run saw.
struct Run {
    seconds: f64,
    requests: u64,
    bytes_raw: u64,
    bytes_sent: u64,
    lag: Option<(f64, f64)>,
    cpu_s: f64,
    peak_rss: u64,
}

/// Starts `irisd run` and reads the intake and admin addresses from its log.
fn spawn_daemon(
    irisd: &Path,
    config: &Path,
) -> Result<(ChildGuard, std::net::SocketAddr, std::net::SocketAddr), BenchError> {
    use std::io::BufRead;
    let mut child = Command::new(irisd)
        .args(["run", "--grace-secs", "5", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("starting {}: {e}", irisd.display())))?;
    let stderr = child.stderr.take().expect("piped");
    let guard = ChildGuard(Some(child));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let field = |line: &str, key: &str| -> Option<std::net::SocketAddr> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .map_err(|_| err("the daemon did not start within 30 s"))?;
        if let (Some(intake), Some(admin)) = (field(&line, "intake="), field(&line, "admin=")) {
            // Keep draining the pipe; echo warnings and errors.
            std::thread::spawn(move || {
                while let Ok(l) = rx.recv() {
                    if l.contains("WARN") || l.contains("ERROR") {
                        eprintln!("irisd: {l}");
                    }
                }
            });
            return Ok((guard, intake, admin));
        }
        if line.contains("ERROR") || line.starts_with("Error") {
            return Err(err(format!("the daemon failed to start: {line}")));
        }
    }
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Result<serde_json::Value, BenchError> {
    use http_body_util::BodyExt;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(format!("http://{addr}{path}").parse().expect("valid"))
        .await
        .map_err(err)?;
    let body = resp.into_body().collect().await.map_err(err)?.to_bytes();
    serde_json::from_slice(&body).map_err(err)
}

async fn realtime(opts: &BenchOptions, work: &Workload, config: &Path) -> Result<Run, BenchError> {
    // Every intake body is built before the clock starts.
    let per_post = opts.events_per_post.max(1) as u64;
    let mut bodies = Vec::new();
    let mut i = 0;
    while i < opts.users {
        let end = (i + per_post).min(opts.users);
        let mut b = Vec::with_capacity((end - i) as usize * 240);
        for u in i..end {
            work.ndjson_line(u, &mut b);
        }
        bodies.push((end - i, Bytes::from(b)));
        i = end;
    }
    let bodies = Arc::new(bodies);

    let (mut daemon, intake, admin) = spawn_daemon(&opts.irisd, config)?;
    let pid = daemon.0.as_ref().expect("running").id();
    let (cpu0, _) = proc_usage(pid).ok_or_else(|| err("cannot read the daemon's /proc"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("http://{intake}/v1/events").parse().expect("valid");
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..opts.producers.max(1) {
        let (client, url, next, bodies, accepted) = (
            client.clone(),
            url.clone(),
            next.clone(),
            bodies.clone(),
            accepted.clone(),
        );
        producers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Relaxed);
                let Some((n, body)) = bodies.get(k) else {
                    return Ok::<(), String>(());
                };
                loop {
                    let req = http::Request::post(url.clone())
                        .header("content-type", "application/x-ndjson")
                        .body(Full::new(body.clone()))
                        .expect("valid request");
                    match client.request(req).await {
                        Ok(r) if r.status() == http::StatusCode::ACCEPTED => {
                            accepted.fetch_add(*n, Relaxed);
                            break;
                        }
                        // Spool full: backpressure, try again shortly.
                        Ok(r) if r.status() == http::StatusCode::SERVICE_UNAVAILABLE => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok(r) => return Err(format!("the intake answered {}", r.status())),
                        Err(e) => return Err(format!("intake: {e}")),
                    }
                }
            }
        });
    }
    while let Some(r) = producers.join_next().await {
        r.map_err(err)?.map_err(err)?;
    }
    // Done when the daemon counts every user delivered (the mock is checked afterwards).
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        let s = get_json(admin, "/status").await?;
        let d = &s["destinations"][0];
        if d["delivered"].as_u64().unwrap_or(0) >= opts.users {
            break s;
        }
        if d["dead_lettered"].as_u64().unwrap_or(0) > 0 {
            return Err(err("events were dead-lettered during the run"));
        }
        if Instant::now() > deadline {
            return Err(err("not everything was delivered within 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let (cpu1, rss) = proc_usage(pid).ok_or_else(|| err("cannot read the daemon's /proc"))?;
    let d = &status["destinations"][0];
    let u = |k: &str| d[k].as_u64().unwrap_or(0);
    let f = |k: &str| d[k].as_f64().unwrap_or(0.0);
    let run = Run {
        seconds,
        requests: u("requests_ok"),
        bytes_raw: u("bytes_raw"),
        bytes_sent: u("bytes_sent"),
        lag: Some((f("lag_p50_ms"), f("lag_p99_ms"))),
        cpu_s: cpu1 - cpu0,
        peak_rss: rss,
    };
    if let Some(c) = daemon.0.as_mut() {
        terminate(c);
        let _ = c.wait();
    }
    daemon.0 = None;
    Ok(run)
}

async fn batch(
    opts: &BenchOptions,
    work: &Workload,
    config: &Path,
    input: &Path,
) -> Result<Run, BenchError> {
    {
        let file = std::fs::File::create(input).map_err(err)?;
        let mut gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::fast(),
        );
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(crate::batch::reader::CSV_HEADER.as_bytes());
        buf.push(b'\n');
        for i in 0..opts.users {
            work.csv_rows(i, &mut buf);
            if buf.len() > 60_000 {
                gz.write_all(&buf).map_err(err)?;
                buf.clear();
            }
        }
        gz.write_all(&buf).map_err(err)?;
        gz.finish().map_err(err)?.flush().map_err(err)?;
    }
    let report = input.with_extension("report.json");
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut child = Command::new(&opts.irisd)
        .args(["batch", "run", "--destination", DESTINATION, "--config"])
        .arg(config)
        .arg("--report")
        .arg(&report)
        .arg(input)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| err(format!("starting {}: {e}", opts.irisd.display())))?;
    // Peak RSS is read from /proc while it runs (VmHWM only grows; a zombie has none).
    let pid = child.id();
    let mut rss = 0;
    let status = loop {
        if let Some((_, hwm)) = proc_usage(pid) {
            rss = rss.max(hwm);
        }
        if let Some(s) = child.try_wait().map_err(err)? {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu1 = children_cpu();
    if !status.success() {
        return Err(err(format!("irisd batch run failed: {status}")));
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).map_err(err)?).map_err(err)?;
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    Ok(Run {
        seconds,
        requests: u("requests"),
        bytes_raw: u("bytes_raw"),
        bytes_sent: u("bytes_sent"),
        lag: None,
        cpu_s: cpu1 - cpu0,
        peak_rss: rss,
    })
}

/// Share of the cores a ceiling run must keep busy to count as bound by CPU.
const CPU_BOUND_BUSY: f64 = 0.9;

/// What the ceiling run measured.
struct Ceiling {
    users_per_sec: f64,
    seconds: f64,
    /// CPU of this process (mock + sender) while sending.
    cpu_s: f64,
    /// CPU to parse, render and compress every request beforehand (one thread; generating
    /// the NDJSON lines is not counted).
    prebuild_cpu_s: f64,
}

impl Ceiling {
    fn cores_busy(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.cpu_s / (self.seconds.max(1e-9) * cores)
    }

    /// The ceiling ran at `cores_busy × cores / cpu_s` users per CPU-second of wall time; a
    /// daemon run needs at least `cpu_s + prebuild_cpu_s` per user on the same cores (the
    /// same sender and mock, plus parsing, rendering and compressing), so it can reach at
    /// most this share of the ceiling, even with the cores fully busy. Only when the ceiling
    /// was bound by CPU (kept the cores at least [`CPU_BOUND_BUSY`] busy).
    fn ratio_bound(&self) -> Option<f64> {
        let busy = self.cores_busy();
        (busy >= CPU_BOUND_BUSY).then(|| self.cpu_s / (busy * (self.cpu_s + self.prebuild_cpu_s)))
    }
}

/// The same users, the same request shape, built and compressed in advance, sent by
/// `concurrency` tasks over one pooled TLS client: what the network and the mock can take.
async fn ceiling(
    opts: &BenchOptions,
    work: &Workload,
    mock: &MockPartner,
    secret: &str,
) -> Result<Ceiling, BenchError> {
    let builder = RequestBuilder::new(
        mock.publish_url().parse().map_err(err)?,
        Method::POST,
        HeaderValue::from_static(crate::config::IRIS_USER_AGENT),
        (opts.gzip_level > 0).then(|| flate2::Compression::new(opts.gzip_level.min(9))),
        PayloadHeader {
            user_dpid: "12345".into(),
            client_id: "74323".into(),
            destination_id: "423".into(),
        },
    );
    let now = jiff::Timestamp::now();
    let cpu = || proc_usage(std::process::id()).map_or(0.0, |u| u.0);
    // The pre-build below also generates the NDJSON lines, which in the daemon's run the load
    // generator did before the clock started: time generating them alone, to subtract it.
    let generate0 = cpu();
    let mut line = Vec::new();
    let mut generated = 0usize;
    for i in 0..opts.users {
        line.clear();
        work.ndjson_line(i, &mut line);
        generated = generated.wrapping_add(line.len());
    }
    std::hint::black_box(generated);
    let generate_cpu_s = cpu() - generate0;
    let prebuild0 = cpu();
    let mut requests: Vec<PreparedRequest> = Vec::new();
    let mut users = Vec::with_capacity(opts.users_per_request);
    for i in 0..opts.users {
        line.clear();
        work.ndjson_line(i, &mut line);
        let ev: IntakeEvent<'_> = serde_json::from_slice(&line).map_err(err)?;
        users.push(render_user(&ev, now).map_err(err)?);
        if users.len() == opts.users_per_request || i + 1 == opts.users {
            requests.push(builder.build(&users, now, format!("{i:032x}")));
            users.clear();
        }
    }
    let prebuild_cpu_s = (cpu() - prebuild0 - generate_cpu_s).max(0.0);
    let http = HttpClient::new(&ClientOptions {
        ca_file: Some(&mock.ca_file),
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(90),
        http2: opts.http2,
    })
    .map_err(err)?;
    let tokens = crate::oauth::client::TokenClient::new(
        http.clone(),
        mock.token_url().parse().map_err(err)?,
        Credentials::ClientSecret {
            client_id: "iris-bench".into(),
            secret: secrecy::SecretString::from(secret.to_string()),
        },
        None,
        HeaderValue::from_static(crate::config::IRIS_USER_AGENT),
        Duration::from_secs(10),
    );
    let t = tokens.fetch().await.map_err(err)?;
    let token = Arc::new(Token {
        value: t.access_token,
        generation: 1,
        obtained_at: Instant::now(),
        expires_at: None,
        refresh_at: None,
    });
    let requests = Arc::new(requests);
    let builder = Arc::new(builder);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (requests, builder, next, http, token) = (
            requests.clone(),
            builder.clone(),
            next.clone(),
            http.clone(),
            token.clone(),
        );
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Relaxed);
                let Some(req) = requests.get(k) else {
                    return Ok::<(), String>(());
                };
                let r = http
                    .send(
                        builder.http_request(req, &token),
                        Duration::from_secs(30),
                        64 * 1024,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status.is_success() {
                    return Err(format!("ceiling request answered {}", r.status));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(err)?.map_err(err)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu1 = cpu();
    Ok(Ceiling {
        users_per_sec: opts.users as f64 / seconds,
        seconds,
        cpu_s: cpu1 - cpu0,
        prebuild_cpu_s,
    })
}
