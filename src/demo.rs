//! `irisd demo`: the whole path, live, in one process. A mock partner (TLS, generated CA) and
//! the daemon start on loopback ports, synthetic qualifications go through the real intake API
//! for a while, and a summary shows what was accepted, delivered and how fast. The demo fails
//! if anything accepted was not delivered.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::mock::{ClientSpec, MockConfig, MockPartner};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long to feed events.
    pub duration: Duration,
    /// Concurrent producers posting to the intake.
    pub producers: usize,
    /// Events per intake request.
    pub events_per_post: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            producers: 4,
            events_per_post: 200,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    pub seconds: f64,
    pub accepted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub requests: u64,
    pub token_fetches: u64,
    pub partner_users: u64,
    pub partner_requests: u64,
    pub users_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl DemoSummary {
    /// Everything accepted reached the partner, and the partner saw exactly that.
    pub fn complete(&self) -> bool {
        self.accepted > 0
            && self.delivered == self.accepted
            && self.failed == 0
            && self.partner_users == self.delivered
    }
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "irisd demo summary\n  events accepted     {}\n  events delivered    {}\n  events failed       {}\n  publish requests    {}\n  token fetches       {}\n  partner saw         {} users in {} requests\n  throughput          {:.0} events/s\n  publish latency     p50 {:.2} ms, p99 {:.2} ms\n  result              {}",
            self.accepted,
            self.delivered,
            self.failed,
            self.requests,
            self.token_fetches,
            self.partner_users,
            self.partner_requests,
            self.users_per_sec,
            self.latency_p50_ms,
            self.latency_p99_ms,
            if self.complete() {
                "OK: every accepted event was delivered"
            } else {
                "FAILED: accepted events were not all delivered"
            }
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

/// Runs the demo; progress goes to stderr.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    let dir = std::env::temp_dir().join(format!(
        "irisd-demo-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| DemoError(format!("{}: {e}", dir.display())))?;
    let result = run_in(&dir, opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &std::path::Path, opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    let secret = format!("demo-{:032x}", fastrand::u128(..));
    let mock = MockPartner::start(MockConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        tls_dir: dir.join("tls"),
        // Short-lived tokens so the demo shows refresh-ahead at work.
        token_ttl_secs: Some(4),
        clients: vec![ClientSpec::with_secret("iris-demo", &secret)],
        ..MockConfig::default()
    })
    .await
    .map_err(DemoError)?;
    let secret_file = dir.join("client_secret");
    write_private(&secret_file, &secret)
        .map_err(|e| DemoError(format!("{}: {e}", secret_file.display())))?;
    let config_path = dir.join("irisd.toml");
    let toml = format!(
        r#"[intake]
listen = "127.0.0.1:0"

[spool]
path = "spool.sqlite"

[[destination]]
name = "demo-partner"
destination_id = "423"
user_dpid = "12345"
aam_client_id = "74323"

[destination.auth]
token_url = "{token_url}"
client_id = "iris-demo"
client_secret_file = "client_secret"

[destination.publish]
url = "{publish_url}"
method = "POST"
max_users = 10
linger_ms = 50
max_in_flight = 16

[destination.tls]
ca_file = "{ca}"
"#,
        token_url = mock.token_url(),
        publish_url = mock.publish_url(),
        ca = mock.ca_file.display(),
    );
    std::fs::write(&config_path, toml).map_err(|e| DemoError(e.to_string()))?;
    let config = Config::load(&config_path).map_err(|e| DemoError(e.to_string()))?;
    let daemon = Daemon::start(&config)
        .await
        .map_err(|e| DemoError(e.to_string()))?;
    let metrics = daemon.destinations[0].metrics.clone();
    eprintln!(
        "irisd demo: mock partner on https://{} (CA {}), intake on http://{}, feeding events for {} s",
        mock.addr,
        mock.ca_file.display(),
        daemon.intake_addr,
        opts.duration.as_secs()
    );

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("http://{}/v1/events", daemon.intake_addr)
        .parse()
        .expect("valid");
    let mut producers = Vec::new();
    for p in 0..opts.producers {
        let (client, url, stop, posted) =
            (client.clone(), url.clone(), stop.clone(), posted.clone());
        let n = opts.events_per_post;
        producers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(p as u64 + 1);
            while !stop.load(Relaxed) {
                let body = synthetic_ndjson(&mut rng, n);
                let req = http::Request::post(url.clone())
                    .header("content-type", "application/x-ndjson")
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid request");
                match client.request(req).await {
                    Ok(resp) if resp.status() == http::StatusCode::ACCEPTED => {
                        posted.fetch_add(n as u64, Relaxed);
                    }
                    Ok(resp) if resp.status() == http::StatusCode::SERVICE_UNAVAILABLE => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(resp) => return Err(format!("intake answered {}", resp.status())),
                    Err(e) => return Err(format!("intake: {e}")),
                }
            }
            Ok(())
        }));
    }

    let tty = std::io::stderr().is_terminal();
    let tick = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    let mut last = (Instant::now(), 0u64);
    let progress = |m: &crate::metrics::Snapshot, last: &mut (Instant, u64), phase: &str| {
        let now = Instant::now();
        let rate = (m.delivered_users - last.1) as f64
            / now.duration_since(last.0).as_secs_f64().max(1e-3);
        *last = (now, m.delivered_users);
        let line = format!(
            "[{:5.1}s] {phase:9} accepted {:>9}  delivered {:>9}  in flight {:>7}  {:>8.0} events/s",
            started.elapsed().as_secs_f64(),
            m.accepted_users,
            m.delivered_users,
            m.accepted_users.saturating_sub(m.delivered_users + m.failed_users),
            rate
        );
        if tty {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    };
    while started.elapsed() < opts.duration {
        tokio::time::sleep(tick).await;
        progress(&metrics.snapshot(), &mut last, "feeding");
    }
    stop.store(true, Relaxed);
    for p in producers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DemoError(e)),
            Err(e) => return Err(DemoError(e.to_string())),
        }
    }
    // Let the queues drain.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(tick).await;
        let m = metrics.snapshot();
        let done = m.delivered_users + m.failed_users >= m.accepted_users;
        progress(&m, &mut last, if done { "drained" } else { "draining" });
        if done || Instant::now() > drain_deadline {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = started.elapsed();
    let _ = daemon.shutdown(Duration::from_secs(10)).await;
    let m = metrics.snapshot();
    let partner = mock.state.stats();
    mock.shutdown().await;
    Ok(DemoSummary {
        seconds: elapsed.as_secs_f64(),
        accepted: m.accepted_users,
        delivered: m.delivered_users,
        failed: m.failed_users,
        requests: m.requests_ok + m.requests_failed,
        token_fetches: m.token_fetches_ok(),
        partner_users: partner.users_accepted,
        partner_requests: partner.publish_accepted,
        users_per_sec: m.delivered_users as f64 / elapsed.as_secs_f64(),
        latency_p50_ms: m.latency_p50_ms,
        latency_p99_ms: m.latency_p99_ms,
    })
}

/// `n` synthetic qualifications, one JSON object per line.
fn synthetic_ndjson(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 220);
    for _ in 0..n {
        let segments = rng.usize(1..=3);
        let _ = write!(
            out,
            r#"{{"destination":"demo-partner","aam_uuid":"{}{:019}","data_partner_uuid":"{:016x}","segments":["#,
            rng.u64(1_000_000_000_000_000_000..10_000_000_000_000_000_000),
            rng.u64(0..10_000_000_000_000_000_000),
            rng.u64(..)
        );
        for s in 0..segments {
            let _ = write!(
                out,
                r#"{}{{"segment_id":"{}","status":"{}"}}"#,
                if s > 0 { "," } else { "" },
                rng.u32(10_000..20_000),
                if rng.u8(0..10) == 0 { 0 } else { 1 }
            );
        }
        out.extend_from_slice(b"]}\n");
    }
    out
}

fn write_private(path: &PathBuf, contents: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents.as_bytes())
}
