//! The `irisd` command line: parses arguments and calls into the library. Errors reach the
//! user here, as one readable message and a non-zero exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use irisd::config::Config;
use irisd::daemon::Daemon;
use irisd::mock::{ClientSpec, MockConfig, MockPartner};

/// irisd delivers Audience Manager segment qualifications to partners over OAuth 2.0, the way
/// Adobe's IRIS does: it gets bearer tokens from each partner's token endpoint (client
/// credentials, HTTP Basic), caches them, and publishes gzip'd JSON payloads over HTTPS.
#[derive(Parser)]
#[command(name = "irisd", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `text` (readable) or `json` (one object per line, for collectors).
    /// The level comes from RUST_LOG (default info).
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: take events on the intake API and deliver them to the configured partners.
    Run {
        /// The TOML configuration (see deploy/irisd.example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Seconds to keep delivering spooled events after SIGTERM/SIGINT; the rest stays in
        /// the spool for the next start.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
    },
    /// Run the mock partner: a strict OAuth 2.0 token endpoint and segment publish endpoint
    /// over HTTPS, for testing irisd or your own partner integration.
    MockPartner {
        /// A TOML file with the mock's settings and clients; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:9443].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for the generated CA (ca.pem) and server certificate; created on first
        /// start and reused after [default: ./mock-partner-tls].
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// A client the token endpoint accepts, as ID:SECRET (repeatable). Without any, one
        /// is generated and printed.
        #[arg(long = "client", value_name = "ID:SECRET")]
        clients: Vec<String>,
        /// Token lifetime in seconds, or `none` for tokens that never expire and responses
        /// without expires_in (as in the IRIS example) [default: 3600].
        #[arg(long, value_name = "SECS|none")]
        token_ttl: Option<String>,
        /// Require the exact IRIS Content-Type string on token requests.
        #[arg(long)]
        strict: bool,
        /// Require a client certificate (mutual TLS); a client certificate and key for irisd
        /// are written to the TLS directory (client.pem, client.key).
        #[arg(long)]
        require_client_cert: bool,
        /// A fault to inject from the start, as KEY=VALUE (repeatable), e.g.
        /// `--fault error_rate=0.1 --fault error_status=503 --fault latency_ms=50`.
        /// Keys: latency_ms, latency_jitter_ms, error_rate, fail_next, error_status,
        /// retry_after_secs, reset_rate, token_down, token_latency_ms. Change them at run time
        /// with POST /_mock/faults.
        #[arg(long = "fault", value_name = "KEY=VALUE")]
        faults: Vec<String>,
    },
    /// Run a live demo on loopback: mock partner + daemon + synthetic load, then a summary.
    Demo {
        /// How long to feed events.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Measure end-to-end publish throughput on loopback: the mock partner (TLS) and a daemon
    /// child process, a seeded load of distinct users, verified at the mock; plus, in the same
    /// run, the ceiling (pre-built payloads straight to the mock). Prints one JSON line.
    Bench(BenchArgs),
    /// Validate a configuration file and print the destinations it defines (secrets as ***).
    CheckConfig {
        /// The TOML configuration to check.
        file: PathBuf,
    },
    /// Inspect, replay or purge dead letters (events given up on). Works while the daemon runs.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Check a partner's real endpoints the way IRIS will use them (pass / warn / fail per
    /// check, with evidence and latency). Exits non-zero if any check fails.
    Verify {
        /// The partner's token endpoint.
        #[arg(long)]
        token_url: http::Uri,
        /// The partner's segment publish endpoint.
        #[arg(long)]
        publish_url: http::Uri,
        /// OAuth client id (with --client-secret-env or --client-secret-file).
        #[arg(long)]
        client_id: Option<String>,
        /// Environment variable holding the client secret.
        #[arg(long)]
        client_secret_env: Option<String>,
        /// File holding the client secret.
        #[arg(long)]
        client_secret_file: Option<PathBuf>,
        /// Environment variable holding an opaque partner-issued Basic value.
        #[arg(long)]
        basic_env: Option<String>,
        /// File holding an opaque partner-issued Basic value.
        #[arg(long)]
        basic_file: Option<PathBuf>,
        /// Scope to request.
        #[arg(long)]
        scope: Option<String>,
        /// Publish method the destination will use.
        #[arg(long, default_value = "POST")]
        method: String,
        /// Extra trust root (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Time the partner has to answer a publish (IRIS: 3000 ms).
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// `table`, `json` or `junit`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show a running daemon's per-destination summary (from its admin listener).
    Status {
        /// The daemon's admin address (`[admin] listen`), e.g. 127.0.0.1:9701.
        #[arg(long)]
        admin: SocketAddr,
        /// File holding the admin listener's bearer token ([admin] auth_token_file), if set.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Batch delivery of onboarded data files.
    Batch {
        #[command(subcommand)]
        action: BatchAction,
    },
}

/// `irisd bench` options.
#[derive(clap::Args)]
struct BenchArgs {
    /// Distinct users to deliver.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Users per publish request (IRIS shape: 10; bulk: 1000).
    #[arg(long, default_value_t = 10)]
    users_per_request: usize,
    /// gzip level 1–9, or 0 for no gzip.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    gzip_level: u32,
    /// Publish requests in flight (the destination's max_in_flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Concurrent producers posting to the intake (real-time mode).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Events per intake request (real-time mode).
    #[arg(long, default_value_t = 500)]
    events_per_post: usize,
    /// fsync the spool before each 202 (true) or not (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    durable: bool,
    /// realtime (intake API) or batch (`irisd batch run` on a .csv.gz file).
    #[arg(long, value_enum, default_value_t = BenchMode::Realtime)]
    mode: BenchMode,
    /// Seed of the synthetic load.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the ceiling measurement.
    #[arg(long)]
    no_ceiling: bool,
    /// Publish over HTTP/2 (the destination's `publish.http2`; the ceiling too).
    #[arg(long)]
    http2: bool,
}

impl BenchArgs {
    fn options(self) -> anyhow::Result<irisd::bench::BenchOptions> {
        Ok(irisd::bench::BenchOptions {
            users: self.users,
            users_per_request: self.users_per_request,
            gzip_level: self.gzip_level,
            concurrency: self.concurrency,
            producers: self.producers,
            events_per_post: self.events_per_post,
            durable: self.durable,
            mode: match self.mode {
                BenchMode::Realtime => irisd::bench::Mode::Realtime,
                BenchMode::Batch => irisd::bench::Mode::Batch,
            },
            seed: self.seed,
            ceiling: !self.no_ceiling,
            http2: self.http2,
            irisd: std::env::current_exe().context("locating the irisd binary")?,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    Realtime,
    Batch,
}

#[derive(Subcommand)]
enum BatchAction {
    /// Deliver batch files now (CSV or NDJSON, optionally .gz). Resumes files a previous run
    /// left unfinished; skips files already delivered. Prints a JSON report at the end.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// The destination to deliver to.
        #[arg(long)]
        destination: String,
        /// Where to write the JSON run report [default: irisd-batch-<destination>-<time>.json].
        #[arg(long)]
        report: Option<PathBuf>,
        /// Files to deliver [default: the destination's batch.input matches].
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters, oldest first.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        destination: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `text` or `json` (one object per line).
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Show one dead letter, with the user record it holds.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        /// The event id (from `list`).
        id: u64,
    },
    /// Put dead letters back into the spool; they go out through the normal path.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        destination: Option<String>,
        /// Only this event id.
        #[arg(long)]
        id: Option<u64>,
    },
    /// Delete dead letters for good.
    Purge {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        destination: Option<String>,
        /// Only this event id.
        #[arg(long)]
        id: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log_format) {
        eprintln!("irisd: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("irisd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("irisd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "text" => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        "json" => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        other => return Err(format!("--log-format {other:?}: expected text or json")),
    }
    Ok(())
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config, grace_secs } => run(config, Duration::from_secs(grace_secs)).await,
        Command::MockPartner {
            config,
            listen,
            tls_dir,
            clients,
            token_ttl,
            strict,
            require_client_cert,
            faults,
        } => {
            mock_partner(
                config,
                listen,
                tls_dir,
                clients,
                token_ttl,
                (strict, require_client_cert),
                faults,
            )
            .await
        }
        Command::Demo { seconds } => demo(seconds).await,
        Command::Bench(args) => {
            let report = irisd::bench::run(args.options()?).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            print!("{}", config.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action } => dlq(action),
        Command::Status { admin, token_file } => status(admin, token_file).await,
        Command::Verify {
            token_url,
            publish_url,
            client_id,
            client_secret_env,
            client_secret_file,
            basic_env,
            basic_file,
            scope,
            method,
            ca_file,
            timeout_ms,
            format,
        } => {
            let read_env = |v: &str| {
                std::env::var(v).with_context(|| format!("environment variable {v} is not set"))
            };
            let read_file = |p: &PathBuf| -> anyhow::Result<String> {
                Ok(std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string())
            };
            let credentials = match (client_id, client_secret_env, client_secret_file, basic_env, basic_file) {
                (Some(id), Some(env), None, None, None) => irisd::oauth::Credentials::ClientSecret {
                    client_id: id,
                    secret: secrecy::SecretString::from(read_env(&env)?),
                },
                (Some(id), None, Some(file), None, None) => irisd::oauth::Credentials::ClientSecret {
                    client_id: id,
                    secret: secrecy::SecretString::from(read_file(&file)?),
                },
                (None, None, None, Some(env), None) => irisd::oauth::Credentials::Basic(secrecy::SecretString::from(read_env(&env)?)),
                (None, None, None, None, Some(file)) => irisd::oauth::Credentials::Basic(secrecy::SecretString::from(read_file(&file)?)),
                _ => bail!("give --client-id with --client-secret-env or --client-secret-file, or one of --basic-env, --basic-file"),
            };
            let method = match method.to_ascii_uppercase().as_str() {
                "GET" => http::Method::GET,
                "POST" => http::Method::POST,
                "PUT" => http::Method::PUT,
                other => bail!("--method {other:?}: expected GET, POST or PUT"),
            };
            let checks = irisd::verify::run(&irisd::verify::VerifyOptions {
                token_url,
                publish_url,
                credentials,
                scope,
                method,
                ca_file,
                timeout: Duration::from_millis(timeout_ms),
            })
            .await;
            match format.as_str() {
                "table" => print!("{}", irisd::verify::table(&checks)),
                "json" => println!("{}", serde_json::to_string_pretty(&checks)?),
                "junit" => print!("{}", irisd::verify::junit(&checks)),
                other => bail!("--format {other:?}: expected table, json or junit"),
            }
            Ok(if irisd::verify::passed(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Batch {
            action:
                BatchAction::Run {
                    config,
                    destination,
                    report,
                    files,
                },
        } => batch_run(config, destination, report, files).await,
    }
}

async fn status(admin: SocketAddr, token_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::get(format!("http://{admin}/status"));
    if let Some(f) = token_file {
        let token = std::fs::read_to_string(&f)
            .with_context(|| format!("reading the admin token from {}", f.display()))?;
        let mut v = http::HeaderValue::try_from(format!("Bearer {}", token.trim_end()))
            .context("the admin token file holds characters a header cannot carry")?;
        v.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, v);
    }
    let resp = client
        .request(req.body(http_body_util::Full::default())?)
        .await
        .with_context(|| {
            format!("cannot reach the admin listener at {admin} (is [admin] listen set?)")
        })?;
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        anyhow::bail!("the admin listener at {admin} wants a bearer token: pass --token-file");
    }
    let body = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)
        .context("the admin listener answered something else than status JSON")?;
    println!("ready: {}", v["ready"]);
    println!(
        "{:<20} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8}  token",
        "destination",
        "accepted",
        "delivered",
        "dead",
        "retries",
        "in flight",
        "spooled",
        "p50 ms",
        "p99 ms"
    );
    for d in v["destinations"].as_array().into_iter().flatten() {
        let token = match &d["token"] {
            serde_json::Value::Null => "none".to_string(),
            t => match t["expires_in_s"].as_u64() {
                Some(e) => format!("age {}s, expires in {e}s", t["age_s"]),
                None => format!("age {}s, no expiry", t["age_s"]),
            },
        };
        println!(
            "{:<20} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>8.1} {:>8.1}  {token}",
            d["destination"].as_str().unwrap_or("?"),
            d["accepted"],
            d["delivered"],
            d["dead_lettered"],
            d["retries"],
            d["in_flight"],
            d["spooled_events"],
            d["latency_p50_ms"].as_f64().unwrap_or(0.0),
            d["latency_p99_ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn batch_run(
    config: PathBuf,
    destination: String,
    report_path: Option<PathBuf>,
    files: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    let (state_tx, state) = tokio::sync::watch::channel(irisd::shutdown::RunState::Running);
    tokio::spawn(async move {
        if shutdown_signal().await.is_ok() {
            tracing::warn!("stopping: the file in progress resumes after its last acknowledged chunk next time");
            let _ = state_tx.send(irisd::shutdown::RunState::Stop);
        }
    });
    let report = irisd::batch::run_now(&config, &destination, files, state).await?;
    let json = serde_json::to_string_pretty(&report)?;
    let path = report_path.unwrap_or_else(|| {
        PathBuf::from(format!(
            "irisd-batch-{destination}-{}.json",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        ))
    });
    std::fs::write(&path, &json)
        .with_context(|| format!("writing the report to {}", path.display()))?;
    println!("{json}");
    eprintln!(
        "batch {}: {} users in {} requests, {} rejects, {} dead-lettered, {:.1} s ({:.0} users/s); report {}",
        if report.complete() { "complete" } else { "INCOMPLETE" },
        report.users,
        report.requests,
        report.rejects,
        report.dead_lettered,
        report.duration_s,
        report.users_per_sec,
        path.display()
    );
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn dlq(action: DlqAction) -> anyhow::Result<ExitCode> {
    use irisd::spool::DeadLetterStore;
    let open = |config: &PathBuf| -> anyhow::Result<DeadLetterStore> {
        let spool = Config::load_spool(config)?;
        Ok(DeadLetterStore::open(&spool.path)?)
    };
    let when = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| ms.to_string())
    };
    match action {
        DlqAction::List {
            config,
            destination,
            limit,
            format,
        } => {
            let store = open(&config)?;
            let list = store.list(destination.as_deref(), limit)?;
            match format.as_str() {
                "json" => {
                    for d in &list {
                        println!("{}", serde_json::to_string(d)?);
                    }
                }
                "text" => {
                    println!(
                        "{:>10}  {:<16} {:>6} {:>8}  {:<24}  reason",
                        "id", "destination", "status", "attempts", "last attempt"
                    );
                    for d in &list {
                        println!(
                            "{:>10}  {:<16} {:>6} {:>8}  {:<24}  {}",
                            d.id,
                            d.destination,
                            d.status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                            d.attempts,
                            when(d.last_attempt_ms),
                            d.reason
                        );
                    }
                    println!("{} dead letter(s)", list.len());
                }
                other => bail!("--format {other:?}: expected text or json"),
            }
        }
        DlqAction::Show { config, id } => {
            let store = open(&config)?;
            let Some(d) = store.show(id)? else {
                bail!("no dead letter with id {id}");
            };
            println!(
                "id:             {}\ndestination:    {}\naccepted:       {}\nstatus:         {}\nattempts:       {}\nfirst attempt:  {}\nlast attempt:   {}\nrequest id:     {}\nreason:         {}\nuser record:    {}",
                d.id,
                d.destination,
                when(d.accepted_at_ms),
                d.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                d.attempts,
                when(d.first_attempt_ms),
                when(d.last_attempt_ms),
                d.request_id,
                d.reason,
                String::from_utf8_lossy(&d.body)
            );
        }
        DlqAction::Replay {
            config,
            destination,
            id,
        } => {
            let n = open(&config)?.replay(destination.as_deref(), id)?;
            println!("{n} dead letter(s) put back into the spool");
        }
        DlqAction::Purge {
            config,
            destination,
            id,
        } => {
            let n = open(&config)?.purge(destination.as_deref(), id)?;
            println!("{n} dead letter(s) deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(config_path: PathBuf, grace: Duration) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_path)?;
    let mut daemon = Daemon::start(&config).await?;
    sd_notify("READY=1");
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    loop {
        #[cfg(unix)]
        let reload = hangup.recv();
        #[cfg(not(unix))]
        let reload = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = reload => match Config::load(&config_path) {
                Ok(new) => match daemon.reload(&new).await {
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "configuration reload refused"),
                },
                Err(e) => tracing::error!(
                    error = %e,
                    "configuration reload refused; the running configuration stays in force"
                ),
            },
            r = shutdown_signal() => {
                r?;
                break;
            }
        }
    }
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: intake closed, sending what is queued"
    );
    sd_notify("STOPPING=1");
    if !daemon.shutdown(grace).await {
        tracing::warn!("grace period over; undelivered events stay in the spool and go out after the next start");
    }
    // Nothing accepted is lost either way: it is delivered, dead-lettered, or spooled.
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (`Type=notify`) about readiness and stopping, when started by it.
fn sd_notify(state: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name.as_bytes()),
            None => UnixAddr::from_pathname(&path),
        };
        let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = state;
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

async fn mock_partner(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    tls_dir: Option<PathBuf>,
    clients: Vec<String>,
    token_ttl: Option<String>,
    (strict, require_client_cert): (bool, bool),
    faults: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut cfg = match &config {
        Some(path) => MockConfig::load(path).map_err(anyhow::Error::msg)?,
        None => MockConfig::default(),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = tls_dir {
        cfg.tls_dir = d;
    }
    if let Some(ttl) = token_ttl {
        cfg.token_ttl_secs = match ttl.as_str() {
            "none" => None,
            n => Some(
                n.parse()
                    .with_context(|| format!("--token-ttl {n:?}: expected seconds or `none`"))?,
            ),
        };
    }
    cfg.strict_content_type |= strict;
    cfg.require_client_cert |= require_client_cert;
    if !faults.is_empty() {
        let mut current = serde_json::to_value(&cfg.faults)?;
        for f in &faults {
            let (key, value) = f
                .split_once('=')
                .with_context(|| format!("--fault {f:?}: expected KEY=VALUE"))?;
            let parsed: toml::Table = format!("v = {value}").parse().with_context(|| {
                format!("--fault {f:?}: {value:?} is not a number, boolean or quoted string")
            })?;
            current[key.trim()] = serde_json::to_value(&parsed["v"])?;
        }
        cfg.faults = serde_json::from_value(current).context("--fault")?;
    }
    for c in clients {
        let Some((id, secret)) = c.split_once(':') else {
            bail!("--client must be ID:SECRET");
        };
        cfg.clients.push(ClientSpec::with_secret(id, secret));
    }
    if cfg.clients.is_empty() {
        let secret = format!("{:032x}", fastrand::u128(..));
        // Printed on purpose: this is a throwaway credential the operator needs to configure a client.
        eprintln!(
            "no --client given; accepting client_id \"iris\" with client_secret \"{secret}\""
        );
        cfg.clients.push(ClientSpec::with_secret("iris", &secret));
    }
    let mock = MockPartner::start(cfg).await.map_err(anyhow::Error::msg)?;
    eprintln!(
        "mock partner listening on https://{}\n  token endpoint:   {}\n  publish endpoint: {}\n  trust this CA:    {}\n  stats:            {}",
        mock.addr,
        mock.token_url(),
        mock.publish_url(),
        mock.ca_file.display(),
        mock.url("/_mock/stats"),
    );
    if mock.state.config().require_client_cert {
        let dir = mock.ca_file.parent().unwrap_or(std::path::Path::new("."));
        eprintln!(
            "  client certificate required; irisd's [destination.tls]:\n    client_cert_file = \"{}\"\n    client_key_file = \"{}\"",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        );
    }
    shutdown_signal().await?;
    mock.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn demo(seconds: u64) -> anyhow::Result<ExitCode> {
    let summary = irisd::demo::run(irisd::demo::DemoOptions {
        duration: Duration::from_secs(seconds),
        ..Default::default()
    })
    .await?;
    println!(
        "\nirisd demo summary\n  events accepted     {}\n  events delivered    {}\n  events failed       {}\n  publish requests    {}\n  token fetches       {}\n  partner saw         {} users in {} requests\n  throughput          {:.0} events/s\n  publish latency     p50 {:.2} ms, p99 {:.2} ms",
        summary.accepted,
        summary.delivered,
        summary.failed,
        summary.requests,
        summary.token_fetches,
        summary.partner_users,
        summary.partner_requests,
        summary.users_per_sec,
        summary.latency_p50_ms,
        summary.latency_p99_ms,
    );
    if summary.complete() {
        println!("  result              OK: every accepted event was delivered");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  result              FAILED: accepted events were not all delivered");
        Ok(ExitCode::FAILURE)
    }
}
