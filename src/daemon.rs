//! Wiring: from a validated [`Config`] to the spool, running lanes and an intake listener; and
//! the orderly way down (intake closed, lanes drain within the grace period, then stop).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{Admin, Watched};
use crate::batch::runner::BatchContext;
use crate::config::Profile;
use crate::config::{Config, Destination};
use crate::delivery::build::{build_sender, BuildError};
use crate::delivery::lane::{self, LaneOptions};
use crate::delivery::resolve::Circuit;
use crate::delivery::sender::Sender;
use crate::intake::Intake;
use crate::metrics::{DestinationMetrics, Snapshot};
use crate::oauth::TokenCache;
use crate::server::{serve, ServerHandle};
use crate::shutdown::RunState;
use crate::spool::{Limits, Spool, SpoolError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (intake.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    BindAdmin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{message}")]
    Kafka { message: String },
    #[error("{listener} TLS: {message}")]
    ListenerTls {
        listener: &'static str,
        message: String,
    },
}

fn acceptor(
    tls: &Option<crate::config::ListenerTls>,
    listener: &'static str,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    tls.as_ref()
        .map(|t| crate::server::tls_acceptor(&t.cert, &t.key, t.client_ca.as_deref()))
        .transpose()
        .map_err(|message| StartError::ListenerTls { listener, message })
}

/// One destination's live parts, for status and tests.
pub struct DestinationRuntime {
    pub name: String,
    pub user_dpid: String,
    pub metrics: Arc<DestinationMetrics>,
    pub tokens: Arc<TokenCache>,
    /// Batch traffic's counters, when the destination has a batch schedule.
    pub batch_metrics: Option<Arc<DestinationMetrics>>,
    /// What it was started from (to tell, on reload, whether it changed).
    fingerprint: String,
    handle: lane::LaneHandle,
    /// Shared with the Kafka stream lane, if any (one token cache, one pool).
    sender: Arc<crate::delivery::sender::Sender>,
    lane_options: LaneOptions,
    lane: JoinHandle<()>,
    batch: Option<JoinHandle<()>>,
    state: watch::Sender<RunState>,
}

/// The Kafka sources and their stream lanes.
pub struct KafkaRuntime {
    pub shared: Arc<crate::kafka::KafkaShared>,
    state: watch::Sender<RunState>,
    sources: Vec<JoinHandle<Result<(), String>>>,
    lanes: Vec<JoinHandle<()>>,
}

fn start_kafka(
    config: &Config,
    destinations: &[DestinationRuntime],
    spool: &Arc<Spool>,
) -> Result<Option<KafkaRuntime>, StartError> {
    if config.kafka.is_empty() {
        return Ok(None);
    }
    let shared = Arc::new(crate::kafka::KafkaShared::default());
    // Consumers first: a setting librdkafka refuses fails the start before anything runs.
    let mut consumers = Vec::new();
    for (i, k) in config.kafka.iter().enumerate() {
        consumers.push(
            crate::kafka::connect(i, k, shared.clone())
                .map_err(|message| StartError::Kafka { message })?,
        );
    }
    let dead = Arc::new(std::sync::Mutex::new(
        crate::spool::DeadLetterStore::open_or_create(spool.path())?,
    ));
    let (state, state_rx) = watch::channel(RunState::Running);
    let mut inputs = std::collections::HashMap::new();
    let mut lanes = Vec::new();
    for d in destinations {
        let (tx, max_record_bytes, task) = lane::spawn_stream(
            d.sender.clone(),
            d.lane_options.clone(),
            d.metrics.clone(),
            state_rx.clone(),
            crate::kafka::KafkaAcks {
                shared: shared.clone(),
                dead: dead.clone(),
                destination: d.name.as_str().into(),
            },
        );
        inputs.insert(
            d.name.clone(),
            crate::kafka::LaneInput {
                tx,
                max_record_bytes,
            },
        );
        lanes.push(task);
    }
    let mut sources = Vec::new();
    for ((i, k), consumer) in config.kafka.iter().enumerate().zip(consumers) {
        sources.push(tokio::spawn(crate::kafka::run(
            i,
            k.clone(),
            consumer,
            inputs.clone(),
            shared.clone(),
            dead.clone(),
            state_rx.clone(),
        )));
    }
    Ok(Some(KafkaRuntime {
        shared,
        state,
        sources,
        lanes,
    }))
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Why a reload was refused (the running configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0} changed; that needs a restart (the running configuration stays in force)")]
    NeedsRestart(&'static str),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A running daemon.
pub struct Daemon {
    pub intake_addr: SocketAddr,
    /// The admin listener's address, when `[admin] listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub admin: Arc<Admin>,
    admin_server: Option<ServerHandle>,
    pub destinations: Vec<DestinationRuntime>,
    pub spool: Arc<Spool>,
    intake: Arc<Intake>,
    server: ServerHandle,
    /// The settings a reload cannot change.
    fixed: (SocketAddr, std::path::PathBuf, Option<SocketAddr>),
    kafka_config: Vec<crate::config::KafkaSourceConfig>,
    kafka: Option<KafkaRuntime>,
    reports_dir: std::path::PathBuf,
}

/// Identifies a destination's configuration, secrets included (hashed, in memory only), so a
/// reload sees rotated credentials as a change.
fn fingerprint(d: &Destination) -> String {
    use secrecy::ExposeSecret;
    let mut secrets = Vec::new();
    match &d.auth.credentials {
        crate::oauth::Credentials::ClientSecret { secret, .. } => {
            secrets.push(secret.expose_secret().as_bytes().to_vec())
        }
        crate::oauth::Credentials::Basic(v) => secrets.push(v.expose_secret().as_bytes().to_vec()),
    }
    if let Some(sg) = &d.signing {
        secrets.push(sg.key.expose_secret().as_bytes().to_vec());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &secrets.concat());
    format!("{d:?}{:?}", digest.as_ref())
}

impl Daemon {
    /// Starts every destination's lane and the intake listener.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        let spool = Spool::open(
            &config.spool.path,
            Limits {
                fsync: config.spool.fsync,
                max_bytes: config.spool.max_bytes,
                max_bytes_per_destination: config.spool.max_bytes_per_destination,
            },
        )?;
        warn_orphans(&spool, config);
        let reports_dir = config
            .spool
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("batch-reports");
        let mut destinations = Vec::new();
        for d in &config.destinations {
            destinations.push(launch(
                d,
                Built::new(d)?,
                &spool,
                &config.spool.path,
                &reports_dir,
            )?);
        }
        let listener = crate::server::bind(config.intake.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.intake.listen,
                source,
            })?;
        let kafka = start_kafka(config, &destinations, &spool)?;
        let admin = Admin::new(watched(&destinations), spool.clone());
        if let Some(token) = &config.admin.auth_token {
            admin.require_token(token.clone());
        }
        if let Some(k) = &kafka {
            admin.set_kafka(k.shared.clone());
        }
        let admin_server = match config.admin.listen {
            Some(addr) => {
                let listener = crate::server::bind(addr)
                    .await
                    .map_err(|source| StartError::BindAdmin { addr, source })?;
                let a = admin.clone();
                Some(serve(
                    listener,
                    acceptor(&config.admin.tls, "admin")?,
                    move |req, peer| {
                        let a = a.clone();
                        async move { Ok(a.handle(req, peer).await) }
                    },
                ))
            }
            None => None,
        };
        let intake = Arc::new(
            Intake::new(
                lane_map(&destinations),
                spool.clone(),
                config.intake.max_body_bytes,
            )
            .with_auth(config.intake.auth_token.clone()),
        );
        let for_server = intake.clone();
        let limits = crate::server::ServeLimits {
            max_connections: config.intake.max_connections.max(1),
            header_read_timeout: Duration::from_millis(
                config.intake.header_read_timeout_ms.max(100),
            ),
            ..Default::default()
        };
        let intake_tls = acceptor(&config.intake.tls, "intake")?;
        let server = crate::server::serve_with(listener, intake_tls, limits, move |req, peer| {
            let intake = for_server.clone();
            async move { Ok(intake.handle(req, peer).await) }
        });
        tracing::info!(
            intake = %server.addr,
            admin = %admin_server.as_ref().map_or("off".to_string(), |s| s.addr.to_string()),
            spool = %config.spool.path.display(),
            destinations = config.destinations.len(),
            "irisd is running"
        );
        Ok(Daemon {
            intake_addr: server.addr,
            admin_addr: admin_server.as_ref().map(|s| s.addr),
            admin,
            admin_server,
            destinations,
            spool,
            intake,
            server,
            fixed: (
                config.intake.listen,
                config.spool.path.clone(),
                config.admin.listen,
            ),
            kafka_config: config.kafka.clone(),
            kafka,
            reports_dir,
        })
    }

    /// Applies a new configuration without a restart: added destinations start, removed ones
    /// stop (their spooled events stay in the spool), changed ones (credentials included)
    /// restart with a fresh token cache. Nothing spooled is lost. Everything a new destination
    /// needs is checked before anything running is touched; on error the running
    /// configuration stays in force.
    pub async fn reload(&mut self, config: &Config) -> Result<ReloadSummary, ReloadError> {
        if config.intake.listen != self.fixed.0 {
            return Err(ReloadError::NeedsRestart("intake.listen"));
        }
        if config.spool.path != self.fixed.1 {
            return Err(ReloadError::NeedsRestart("spool.path"));
        }
        if config.admin.listen != self.fixed.2 {
            return Err(ReloadError::NeedsRestart("admin.listen"));
        }
        if config.kafka != self.kafka_config {
            return Err(ReloadError::NeedsRestart("source.kafka"));
        }
        let mut summary = ReloadSummary::default();
        let mut to_start = Vec::new();
        for d in &config.destinations {
            match self.destinations.iter().find(|r| r.name == d.name) {
                Some(r) if r.fingerprint == fingerprint(d) => {
                    summary.unchanged.push(d.name.clone())
                }
                found => {
                    // Fails here, before anything changes, if e.g. a CA file became unusable.
                    let built = Built::new(d)?;
                    if found.is_some() {
                        summary.changed.push(d.name.clone());
                    } else {
                        summary.added.push(d.name.clone());
                    }
                    to_start.push((d, built));
                }
            }
        }
        for r in &self.destinations {
            if !config.destinations.iter().any(|d| d.name == r.name) {
                summary.removed.push(r.name.clone());
            }
        }
        // Stop what goes away or changes, and let its in-flight requests finish (so the new
        // lane does not send them a second time).
        let stopping: Vec<String> = summary
            .removed
            .iter()
            .chain(&summary.changed)
            .cloned()
            .collect();
        let mut kept = Vec::new();
        for r in std::mem::take(&mut self.destinations) {
            if stopping.contains(&r.name) {
                stop(r).await;
            } else {
                kept.push(r);
            }
        }
        self.destinations = kept;
        for (d, built) in to_start {
            let r = launch(d, built, &self.spool, &self.fixed.1, &self.reports_dir)?;
            self.destinations.push(r);
        }
        self.intake.replace_lanes(lane_map(&self.destinations));
        self.admin.set_destinations(watched(&self.destinations));
        warn_orphans(&self.spool, config);
        tracing::info!(
            added = ?summary.added,
            removed = ?summary.removed,
            changed = ?summary.changed,
            "configuration reloaded"
        );
        Ok(summary)
    }

    /// Metrics of the destination called `name`.
    pub fn snapshot(&self, name: &str) -> Option<Snapshot> {
        self.destinations
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.metrics.snapshot())
    }

    /// Stops the intake (503), keeps delivering what is spooled for up to `grace`, then stops
    /// the lanes; what was not delivered stays in the spool for the next start. Returns true
    /// if everything spooled was delivered (or dead-lettered) in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        self.admin
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // The intake keeps its listener through the grace period and answers 503 with
        // Retry-After: producers can tell "stopping, come back" from "gone".
        self.intake.close();
        for r in &self.destinations {
            let _ = r.state.send(RunState::Draining);
        }
        // Kafka: stop taking records, let the stream lanes deliver what they hold, commit.
        if let Some(k) = self.kafka {
            let _ = k.state.send(RunState::Draining);
            let mut all: Vec<JoinHandle<()>> = k.lanes;
            if tokio::time::timeout_at(deadline, join_all(&mut all))
                .await
                .is_err()
            {
                let _ = k.state.send(RunState::Stop);
                if tokio::time::timeout(Duration::from_secs(2), join_all(&mut all))
                    .await
                    .is_err()
                {
                    all.iter().for_each(JoinHandle::abort);
                }
            }
            let _ = k.state.send(RunState::Stop);
            for s in k.sources {
                match tokio::time::timeout(Duration::from_secs(15), s).await {
                    Ok(Ok(Err(e))) => tracing::error!(error = %e, "kafka source failed"),
                    Err(_) => tracing::warn!("kafka source did not stop in time"),
                    _ => {}
                }
            }
        }
        let (mut lanes, mut batches): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        let mut states = Vec::new();
        for r in self.destinations {
            lanes.push(r.lane);
            batches.extend(r.batch);
            states.push(r.state);
        }
        let drained = tokio::time::timeout_at(deadline, join_all(&mut lanes))
            .await
            .is_ok();
        // Lanes abandon backoffs at once; batch runs stop after the request in progress.
        states.iter().for_each(|s| {
            let _ = s.send(RunState::Stop);
        });
        if !drained
            && tokio::time::timeout(Duration::from_secs(2), join_all(&mut lanes))
                .await
                .is_err()
        {
            lanes.iter().for_each(JoinHandle::abort);
        }
        if tokio::time::timeout(Duration::from_secs(5), join_all(&mut batches))
            .await
            .is_err()
        {
            batches.iter().for_each(JoinHandle::abort);
        }
        self.spool.sync().await;
        let left: u64 = self
            .spool
            .destinations_with_events()
            .iter()
            .map(|(_, b)| b)
            .sum();
        self.server.shutdown(Duration::from_secs(1)).await;
        if let Some(s) = self.admin_server {
            s.shutdown(Duration::from_secs(1)).await;
        }
        tracing::info!(drained, spooled_bytes_left = left, "irisd stopped");
        drained
    }
}

/// Stops one destination now (for a reload): in-flight requests finish, backoffs end.
async fn stop(r: DestinationRuntime) {
    let _ = r.state.send(RunState::Stop);
    let mut tasks: Vec<JoinHandle<()>> = std::iter::once(r.lane).chain(r.batch).collect();
    if tokio::time::timeout(Duration::from_secs(10), join_all(&mut tasks))
        .await
        .is_err()
    {
        tasks.iter().for_each(JoinHandle::abort);
    }
}

fn warn_orphans(spool: &Spool, config: &Config) {
    for (dest, bytes) in spool.destinations_with_events() {
        if !config.destinations.iter().any(|d| d.name == dest) {
            tracing::warn!(
                destination = %dest,
                bytes,
                "the spool holds events for a destination that is not configured; they are kept until it is"
            );
        }
    }
}

fn lane_map(destinations: &[DestinationRuntime]) -> HashMap<String, lane::LaneHandle> {
    destinations
        .iter()
        .map(|r| (r.name.clone(), r.handle.clone()))
        .collect()
}

fn watched(destinations: &[DestinationRuntime]) -> Vec<Watched> {
    destinations
        .iter()
        .map(|d| Watched {
            name: d.name.clone(),
            user_dpid: d.user_dpid.clone(),
            metrics: d.metrics.clone(),
            tokens: d.tokens.clone(),
            batch: d.batch_metrics.clone(),
        })
        .collect()
}

/// A destination's counters, HTTPS client, token cache and sender, before anything runs.
struct Built {
    metrics: Arc<DestinationMetrics>,
    sender: Arc<Sender>,
    tokens: Arc<TokenCache>,
}

impl Built {
    fn new(d: &Destination) -> Result<Built, StartError> {
        let metrics = Arc::new(DestinationMetrics::default());
        let (sender, tokens) = build_sender(d, metrics.clone())?;
        Ok(Built {
            metrics,
            sender,
            tokens,
        })
    }
}

/// Starts one destination: its lane and, when scheduled, its batch runs.
fn launch(
    d: &Destination,
    Built {
        metrics,
        sender,
        tokens,
    }: Built,
    spool: &Arc<Spool>,
    spool_path: &std::path::Path,
    reports_dir: &std::path::Path,
) -> Result<DestinationRuntime, StartError> {
    if d.allow_insecure_http {
        tracing::warn!(
            destination = %d.name,
            "allow_insecure_http = true: tokens and credentials may travel in clear text; never use this outside local tests"
        );
    }
    let (state, state_rx) = watch::channel(RunState::Running);
    if d.tls.insecure_skip_verify {
        // Said loudly and often: a forgotten test setting in production is a credential leak.
        let (name, mut state) = (d.name.clone(), state_rx.clone());
        tokio::spawn(async move {
            loop {
                tracing::error!(
                    destination = %name,
                    "tls.insecure_skip_verify = true: the partner's certificate is NOT verified; tokens and credentials can be intercepted. Local tests only"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = crate::shutdown::wait_for(&mut state, RunState::Stop) => break,
                }
            }
        });
    }
    let lane_options = LaneOptions {
        max_users: d.publish.max_users,
        max_bytes: d.publish.max_bytes,
        linger: d.publish.linger,
        max_in_flight: d.publish.max_in_flight,
        retry: d.retry.clone(),
        retry_permanent: d.profile == Profile::Iris,
    };
    let (handle, lane_task) = lane::spawn(
        sender.clone(),
        lane_options.clone(),
        metrics.clone(),
        spool.clone(),
        state_rx.clone(),
    )?;
    let lane_sender = sender.clone();
    let mut batch_metrics = None;
    let mut batch = None;
    if let Some(b) = d
        .batch
        .as_ref()
        .filter(|b| b.schedule.is_some() && b.input.is_some())
    {
        // Same sender, so the same token cache and connection pool as real-time.
        let ctx = Arc::new(BatchContext::new(
            d.name.clone(),
            sender,
            b.clone(),
            d.retry.clone(),
            d.profile == Profile::Iris,
            Arc::new(Circuit::new(&d.retry)),
            Some(metrics.clone()),
            spool_path.to_owned(),
        ));
        batch_metrics = Some(ctx.metrics.clone());
        batch = Some(tokio::spawn(crate::batch::schedule_loop(
            ctx,
            b.schedule.clone().expect("filtered"),
            b.input.clone().expect("filtered"),
            reports_dir.to_owned(),
            state_rx,
        )));
    }
    Ok(DestinationRuntime {
        name: d.name.clone(),
        user_dpid: d.user_dpid.clone(),
        metrics,
        tokens,
        batch_metrics,
        fingerprint: fingerprint(d),
        handle,
        sender: lane_sender,
        lane_options,
        lane: lane_task,
        batch,
        state,
    })
}

async fn join_all(handles: &mut [JoinHandle<()>]) {
    for h in handles.iter_mut().filter(|h| !h.is_finished()) {
        let _ = h.await;
    }
}
