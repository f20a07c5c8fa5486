//! The `irisd` command line: parses arguments and calls into the library. Errors reach the
//! user here, as one readable message and a non-zero exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use irisd::commands::{self, verify::VerifyFormat, Format};
use irisd::config::{Config, PublishMethod};

/// `irisd --version`: the version, the commit and date it was built from, the target and the
/// optional features compiled in (as `vector --version` does).
macro_rules! long_version {
    ($features:literal) => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (",
            env!("IRISD_TARGET"),
            " ",
            env!("IRISD_GIT_COMMIT"),
            " ",
            env!("IRISD_BUILD_DATE"),
            ")\nfeatures: ",
            $features
        )
    };
}
#[cfg(feature = "kafka-tls")]
const LONG_VERSION: &str = long_version!("kafka-tls");
#[cfg(not(feature = "kafka-tls"))]
const LONG_VERSION: &str = long_version!("none (default build; kafka-tls is off)");

/// irisd delivers Audience Manager segment qualifications to partners over OAuth 2.0, the way
/// Adobe's IRIS does: it gets bearer tokens from each partner's token endpoint (client
/// credentials, HTTP Basic), caches them, and publishes gzip'd JSON payloads over HTTPS.
#[derive(Parser)]
#[command(name = "irisd", version, long_version = LONG_VERSION, about, long_about = None)]
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
        /// Publish method the destination will use: GET, POST or PUT.
        #[arg(long, default_value = "POST")]
        method: PublishMethod,
        /// Extra trust root (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Time the partner has to answer a publish (IRIS: 3000 ms).
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// `table`, `json` or `junit`.
        #[arg(long, default_value = "table")]
        format: VerifyFormat,
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
    /// Print a shell completion script, e.g. `irisd completions bash > /etc/bash_completion.d/irisd`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (roff): irisd.1 and one per subcommand, e.g.
    /// `irisd man --dir /usr/local/share/man/man1`; without --dir, print irisd.1.
    Man {
        /// Directory to write the pages into.
        #[arg(long)]
        dir: Option<PathBuf>,
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
        /// The TOML configuration (see deploy/irisd.example.toml).
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
        /// The TOML configuration whose `[spool] path` holds the dead letters.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this destination's dead letters [default: all].
        #[arg(long)]
        destination: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `text` or `json` (one object per line).
        #[arg(long, default_value = "text")]
        format: Format,
    },
    /// Show one dead letter, with the user record it holds.
    Show {
        /// The TOML configuration whose `[spool] path` holds the dead letters.
        #[arg(long, short)]
        config: PathBuf,
        /// The event id (from `list`).
        id: u64,
    },
    /// Put dead letters back into the spool; they go out through the normal path.
    Replay {
        /// The TOML configuration whose `[spool] path` holds the dead letters.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this destination's dead letters [default: all].
        #[arg(long)]
        destination: Option<String>,
        /// Only this event id.
        #[arg(long)]
        id: Option<u64>,
    },
    /// Delete dead letters for good.
    Purge {
        /// The TOML configuration whose `[spool] path` holds the dead letters.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this destination's dead letters [default: all].
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
    Ok(match cmd {
        Command::Run { config, grace_secs } => {
            commands::run::run(&config, Duration::from_secs(grace_secs)).await?
        }
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
            commands::mock_partner::run(commands::mock_partner::MockPartnerArgs {
                config,
                listen,
                tls_dir,
                clients,
                token_ttl,
                strict,
                require_client_cert,
                faults,
            })
            .await?
        }
        Command::Demo { seconds } => {
            let summary = irisd::demo::run(irisd::demo::DemoOptions {
                duration: Duration::from_secs(seconds),
                ..Default::default()
            })
            .await?;
            println!("\n{summary}");
            if summary.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Bench(args) => {
            let report = irisd::bench::run(args.options()?).await?;
            println!("{}", serde_json::to_string(&report)?);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => {
            print!("{}", Config::load(&file)?.summary());
            ExitCode::SUCCESS
        }
        Command::Dlq { action } => match action {
            DlqAction::List {
                config,
                destination,
                limit,
                format,
            } => commands::dlq::list(&config, destination.as_deref(), limit, format)?,
            DlqAction::Show { config, id } => commands::dlq::show(&config, id)?,
            DlqAction::Replay {
                config,
                destination,
                id,
            } => commands::dlq::replay(&config, destination.as_deref(), id)?,
            DlqAction::Purge {
                config,
                destination,
                id,
            } => commands::dlq::purge(&config, destination.as_deref(), id)?,
        },
        Command::Status { admin, token_file } => {
            commands::status::run(admin, token_file.as_deref()).await?
        }
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
            commands::verify::run(commands::verify::VerifyArgs {
                token_url,
                publish_url,
                credentials: irisd::config::secrets::CredentialSources {
                    client_id,
                    client_secret_env,
                    client_secret_file,
                    basic_env,
                    basic_file,
                },
                scope,
                method,
                ca_file,
                timeout: Duration::from_millis(timeout_ms),
                format,
            })
            .await?
        }
        Command::Batch {
            action:
                BatchAction::Run {
                    config,
                    destination,
                    report,
                    files,
                },
        } => commands::batch::run(&config, &destination, report, files).await?,
        Command::Completions { shell } => {
            // Into a buffer first: a closed pipe (`| head`) is an error to report, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "irisd", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")?;
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            man_pages(dir.as_deref())?;
            ExitCode::SUCCESS
        }
    })
}

/// The manual: irisd.1 for the whole command, irisd-SUB.1 for each subcommand.
fn man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: String, cmd: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).title(&name).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands() {
        write(format!("irisd-{}", sub.get_name()), sub.clone())?;
    }
    write("irisd".into(), cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument says what it is for, in every subcommand.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "irisd", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
