//! The operator's TOML configuration: schema, defaults, validation and secret resolution.
//!
//! Parsing happens in two steps. First the file is deserialized into the `Raw*` structs, which
//! mirror the TOML exactly (`deny_unknown_fields` everywhere, so a typo is an error, not a
//! silently ignored key); `serde_path_to_error` tells us the dotted key of any error and the
//! TOML span gives the line. Then [`Config::from_raw`] validates what serde cannot (URLs, that
//! exactly one credential source is set, that secrets can be read) and produces the resolved
//! [`Config`] the daemon runs on. Every error names the file, the line and the key
//! (`irisd.toml:14: destination[0].auth.token_url: ...`). Secrets are read here, once, into
//! [`SecretString`]s and never printed: [`Config`]'s `Debug` shows `[REDACTED]`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Uri};
use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::oauth::Credentials;

/// The `User-Agent` IRIS sends; irisd sends the same unless a destination overrides it.
pub const IRIS_USER_AGENT: &str = "Adobe Audience Manager Iris";

/// A configuration problem, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema (unknown key, wrong type, missing key).
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// The TOML parsed but a value is not acceptable.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw schema: what the operator writes. Every field is documented in deploy/irisd.example.toml.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    intake: IntakeConfig,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default, rename = "destination")]
    destinations: Vec<RawDestination>,
    #[serde(default)]
    source: RawSources,
    /// Secret files readable by group or others are refused (default: a warning).
    #[serde(default)]
    strict_permissions: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    #[serde(default)]
    kafka: Vec<RawKafka>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    bootstrap_servers: Spanned<String>,
    topics: Spanned<Vec<String>>,
    group_id: Spanned<String>,
    destination: Option<Spanned<String>>,
    #[serde(default = "default_commit_interval_ms")]
    commit_interval_ms: u64,
    #[serde(default)]
    librdkafka: BTreeMap<String, Spanned<String>>,
}

fn default_commit_interval_ms() -> u64 {
    1000
}

/// `[[source.kafka]]`: consume events from Kafka as one consumer group.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// Every record goes to this destination; none = the record's `destination` field.
    pub destination: Option<String>,
    pub commit_interval: Duration,
    /// Passed to librdkafka as is (`security.protocol`, `sasl.*`, `ssl.*`, timeouts); values
    /// may be passwords, so they are secrets.
    pub librdkafka: BTreeMap<String, SecretString>,
}

impl PartialEq for KafkaSourceConfig {
    fn eq(&self, o: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.bootstrap_servers == o.bootstrap_servers
            && self.topics == o.topics
            && self.group_id == o.group_id
            && self.destination == o.destination
            && self.commit_interval == o.commit_interval
            && self.librdkafka.len() == o.librdkafka.len()
            && self
                .librdkafka
                .iter()
                .zip(&o.librdkafka)
                .all(|((a, x), (b, y))| a == b && x.expose_secret() == y.expose_secret())
    }
}

/// librdkafka settings irisd owns: overriding them would break at-least-once.
const KAFKA_RESERVED: [&str; 4] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    path: Option<Spanned<PathBuf>>,
    max_bytes: Option<Spanned<u64>>,
    max_bytes_per_destination: Option<Spanned<u64>>,
    fsync: Option<bool>,
}

/// `[spool]`: where accepted events wait for delivery.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The SQLite spool file.
    pub path: PathBuf,
    /// Bound on all spooled event bytes.
    pub max_bytes: u64,
    /// Bound on one destination's spooled event bytes.
    pub max_bytes_per_destination: u64,
    /// fsync before answering 202 (default). Off: a commit survives a crash of irisd, not of
    /// the machine (SQLite `synchronous = NORMAL`).
    pub fsync: bool,
}

/// `[admin]`: Prometheus metrics, health, readiness and status.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; none = no admin listener.
    pub listen: Option<SocketAddr>,
    /// Bearer token clients must send (`Authorization: Bearer <token>`), from a file or an
    /// environment variable. Required on a non-loopback address unless
    /// `allow_unauthenticated = true`.
    #[serde(default)]
    pub auth_token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub auth_token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Serve HTTPS with this certificate chain and key (PEM) instead of plain HTTP.
    #[serde(default)]
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// With TLS: require client certificates issued by this CA (mutual TLS), which then
    /// counts as the listener's authentication.
    #[serde(default)]
    pub client_ca_file: Option<Spanned<PathBuf>>,
    /// The loaded token (filled in by validation).
    #[serde(skip)]
    pub auth_token: Option<SecretString>,
    /// Resolved TLS files: (certificate, key, client CA) (filled in by validation).
    #[serde(skip)]
    pub tls: Option<ListenerTls>,
}

/// A listener's TLS files, checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Default spool file, in the working directory.
pub const DEFAULT_SPOOL_PATH: &str = "irisd-spool.sqlite";

/// `[intake]`: the HTTP API producers post qualifications to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Address the intake listens on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest request body accepted; bigger requests get 413 and nothing of them is accepted.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send its request headers, and the longest a connection may sit
    /// idle (slowloris / idle-connection guard), in ms.
    pub header_read_timeout_ms: u64,
    /// Bearer token clients must send (`Authorization: Bearer <token>`), from a file or an
    /// environment variable. Required on a non-loopback address unless
    /// `allow_unauthenticated = true`.
    #[serde(default)]
    pub auth_token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub auth_token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Serve HTTPS with this certificate chain and key (PEM) instead of plain HTTP.
    #[serde(default)]
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// With TLS: require client certificates issued by this CA (mutual TLS), which then
    /// counts as the listener's authentication.
    #[serde(default)]
    pub client_ca_file: Option<Spanned<PathBuf>>,
    /// The loaded token (filled in by validation).
    #[serde(skip)]
    pub auth_token: Option<SecretString>,
    /// Resolved TLS files: (certificate, key, client CA) (filled in by validation).
    #[serde(skip)]
    pub tls: Option<ListenerTls>,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9700)),
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 16_384,
            header_read_timeout_ms: 10_000,
            auth_token_file: None,
            auth_token_env: None,
            allow_unauthenticated: false,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            auth_token: None,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: Spanned<String>,
    destination_id: Spanned<String>,
    user_dpid: Spanned<String>,
    aam_client_id: Spanned<String>,
    #[serde(default)]
    allow_insecure_http: bool,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    profile: Option<Spanned<String>>,
    auth: RawAuth,
    publish: RawPublish,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    tls: RawTls,
    batch: Option<RawBatch>,
    signing: Option<RawSigning>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    #[serde(default = "default_signing_algorithm")]
    algorithm: Spanned<String>,
    #[serde(default = "default_signing_header")]
    header: Spanned<String>,
    key_env: Option<Spanned<String>>,
    key_file: Option<Spanned<PathBuf>>,
}

fn default_signing_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "sha256".to_string())
}
fn default_signing_header() -> Spanned<String> {
    Spanned::new(0..0, "X-Signature".to_string())
}

/// `[destination.signing]`: an HMAC of each publish request in a header, as IRIS can send.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub algorithm: crate::signing::Algorithm,
    pub header: http::HeaderName,
    pub key: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    input: Option<Spanned<String>>,
    daily_at: Option<Spanned<String>>,
    cron: Option<Spanned<String>>,
    #[serde(default = "default_time_zone")]
    time_zone: Spanned<String>,
    #[serde(default = "default_batch_max_users")]
    max_users: Spanned<usize>,
    #[serde(default = "default_batch_max_bytes")]
    max_bytes: Spanned<usize>,
    #[serde(default)]
    requests_per_second: u32,
    #[serde(default)]
    users_per_second: u32,
    #[serde(default = "default_batch_in_flight")]
    max_in_flight: Spanned<usize>,
    #[serde(default = "default_chunk_users")]
    chunk_users: Spanned<usize>,
    #[serde(default)]
    move_done: bool,
}

fn default_time_zone() -> Spanned<String> {
    Spanned::new(0..0, "UTC".to_string())
}
fn default_batch_max_users() -> Spanned<usize> {
    Spanned::new(0..0, 1000)
}
fn default_batch_max_bytes() -> Spanned<usize> {
    Spanned::new(0..0, 4 * 1024 * 1024)
}
fn default_batch_in_flight() -> Spanned<usize> {
    Spanned::new(0..0, 4)
}
fn default_chunk_users() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}

/// `[destination.batch]`: daily (or cron-scheduled) delivery of onboarded data files.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Glob of input files (`/data/partner-a/*.csv.gz`); `None`: files only on the command line.
    pub input: Option<String>,
    /// When to run; `None`: on demand only (`irisd batch run`).
    pub schedule: Option<crate::schedule::Schedule>,
    /// Users per request (batch traffic).
    pub max_users: usize,
    /// Uncompressed bytes per request.
    pub max_bytes: usize,
    /// Rate limits for batch traffic; `None` = unlimited.
    pub requests_per_second: Option<std::num::NonZeroU32>,
    pub users_per_second: Option<std::num::NonZeroU32>,
    /// Batch requests in flight at once.
    pub max_in_flight: usize,
    /// Users per checkpoint: a crash resends at most this many.
    pub chunk_users: usize,
    /// Move finished files into a `done/` folder next to them.
    pub move_done: bool,
}

impl Default for BatchConfig {
    /// On demand only, the documented defaults.
    fn default() -> Self {
        Self {
            input: None,
            schedule: None,
            max_users: 1000,
            max_bytes: 4 * 1024 * 1024,
            requests_per_second: None,
            users_per_second: None,
            max_in_flight: 4,
            chunk_users: 10_000,
            move_done: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    max_attempts: Option<Spanned<u32>>,
    max_age_secs: Option<u64>,
    circuit_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    token_url: Spanned<String>,
    client_id: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<PathBuf>>,
    basic_credentials_env: Option<Spanned<String>>,
    basic_credentials_file: Option<Spanned<PathBuf>>,
    scope: Option<Spanned<String>>,
    refresh_skew_secs: Option<u64>,
    #[serde(default = "default_token_timeout_ms")]
    timeout_ms: u64,
}

fn default_token_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    url: Spanned<String>,
    #[serde(default = "default_method")]
    method: Spanned<String>,
    #[serde(default = "yes")]
    gzip: bool,
    #[serde(default = "default_gzip_level")]
    gzip_level: Spanned<usize>,
    max_users: Option<Spanned<usize>>,
    #[serde(default = "default_max_bytes")]
    max_bytes: Spanned<usize>,
    #[serde(default = "default_linger_ms")]
    linger_ms: u64,
    timeout_ms: Option<Spanned<u64>>,
    success_status: Option<Spanned<Vec<u16>>>,
    #[serde(default = "default_pool_idle_timeout_ms")]
    pool_idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: Spanned<usize>,
    #[serde(default)]
    http2: bool,
}

fn default_method() -> Spanned<String> {
    Spanned::new(0..0, "POST".to_string())
}
fn default_gzip_level() -> Spanned<usize> {
    Spanned::new(0..0, 6)
}
fn yes() -> bool {
    true
}
fn default_max_bytes() -> Spanned<usize> {
    Spanned::new(0..0, 1024 * 1024)
}
fn default_linger_ms() -> u64 {
    200
}
fn default_pool_idle_timeout_ms() -> u64 {
    90_000
}
fn default_connect_timeout_ms() -> u64 {
    3000
}
fn default_max_in_flight() -> Spanned<usize> {
    Spanned::new(0..0, 4)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<Spanned<PathBuf>>,
    client_cert_file: Option<Spanned<PathBuf>>,
    client_key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

// ---------------------------------------------------------------------------------------------
// Resolved configuration: what the daemon runs on.
// ---------------------------------------------------------------------------------------------

/// A validated configuration with its secrets loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (for messages).
    pub path: PathBuf,
    pub intake: IntakeConfig,
    pub spool: SpoolConfig,
    pub admin: AdminConfig,
    pub destinations: Vec<Destination>,
    pub kafka: Vec<KafkaSourceConfig>,
}

/// One partner configuration.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Operator's name for the destination; producers address events to it.
    pub name: String,
    /// `AAM_Destination_Id` in the payload.
    pub destination_id: String,
    /// `User_DPID` in the payload (device-ID type).
    pub user_dpid: String,
    /// `Client_ID` in the payload (the Audience Manager customer).
    pub aam_client_id: String,
    /// Plain `http://` endpoints were explicitly allowed (local tests only).
    pub allow_insecure_http: bool,
    /// `User-Agent` on token and publish requests.
    pub user_agent: String,
    /// `iris` reproduces IRIS's documented behaviour; `reliable` (default) retries durably.
    pub profile: Profile,
    pub auth: AuthConfig,
    pub publish: PublishConfig,
    pub retry: RetryPolicy,
    pub tls: TlsConfig,
    pub batch: Option<BatchConfig>,
    pub signing: Option<SigningConfig>,
}

/// Delivery behaviour preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Durable retries with backoff until delivered or too old (the default).
    Reliable,
    /// What Adobe documents for IRIS: only 200 is success, 3000 ms to answer, one retry, at
    /// most 10 users per message, no client-side rate limit. Where IRIS drops, irisd dead-letters.
    Iris,
}

/// `[destination.retry]`: what happens after a failed publish.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First backoff; doubles per attempt (full jitter).
    pub initial: Duration,
    /// Longest backoff (a partner's `Retry-After` may ask for more and is honoured).
    pub max_delay: Duration,
    /// Attempts before dead-lettering; `None` = no limit (bounded by `max_age`).
    pub max_attempts: Option<u32>,
    /// Events older than this are dead-lettered instead of retried.
    pub max_age: Duration,
    /// Consecutive failures after which the lane pauses and sends one probe at a time.
    pub circuit_threshold: u32,
}

/// `[destination.auth]`: the partner's token endpoint and our credentials for it.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub token_url: Uri,
    pub credentials: Credentials,
    /// Sent as `scope=` in the token request only when set.
    pub scope: Option<String>,
    /// Refresh this long before `expires_in` runs out; `None` = min(60 s, 10 % of lifetime).
    pub refresh_skew: Option<Duration>,
    /// Whole token request timeout.
    pub timeout: Duration,
}

/// HTTP method of publish requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMethod {
    Get,
    Post,
    Put,
}

impl PublishMethod {
    pub fn as_method(self) -> Method {
        match self {
            PublishMethod::Get => Method::GET,
            PublishMethod::Post => Method::POST,
            PublishMethod::Put => Method::PUT,
        }
    }
}

/// `[destination.publish]`: where and how segment payloads are sent.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub url: Uri,
    pub method: PublishMethod,
    pub gzip: bool,
    /// gzip level, 1 (fastest) to 9 (smallest).
    pub gzip_level: u32,
    pub max_users: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_in_flight: usize,
    /// Statuses that count as delivered; empty = any 2xx.
    pub success_status: Vec<u16>,
    pub pool_idle_timeout: Duration,
    /// Offer HTTP/2 to the partner (ALPN); HTTP/1.1 if it does not take it.
    pub http2: bool,
}

/// `[destination.tls]`.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Extra PEM trust roots, added to the built-in public roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for partners that require mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate: local tests only, logged at ERROR every minute.
    pub insecure_skip_verify: bool,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    /// Only the `[spool]` section of a configuration file (the rest is checked for syntax and
    /// schema but secrets are not loaded): what `irisd dlq` needs.
    pub fn load_spool(path: &Path) -> Result<SpoolConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw = Self::parse_raw(path, &text)?;
        let ctx = Ctx {
            path,
            text: &text,
            strict_permissions: false,
        };
        ctx.spool(&raw.spool)
    }

    /// Parses and validates configuration text; `path` is used in messages and to resolve
    /// relative file paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = Self::parse_raw(path, text)?;
        let ctx = Ctx {
            path,
            text,
            strict_permissions: raw.strict_permissions,
        };
        Self::from_raw(&ctx, raw)
    }

    fn parse_raw(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: inner.message().to_string(),
            }
        })?;
        Ok(raw)
    }

    fn from_raw(ctx: &Ctx<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut names = HashSet::new();
        let mut destinations = Vec::with_capacity(raw.destinations.len());
        for (i, d) in raw.destinations.into_iter().enumerate() {
            let key = format!("destination[{i}]");
            let name_span = d.name.span();
            let dest = Destination::from_raw(ctx, &key, d)?;
            if !names.insert(dest.name.clone()) {
                return Err(ctx.invalid(
                    name_span,
                    &format!("{key}.name"),
                    &format!("duplicate destination name {:?}", dest.name),
                ));
            }
            destinations.push(dest);
        }
        let spool = ctx.spool(&raw.spool)?;
        let mut kafka = Vec::new();
        for (i, k) in raw.source.kafka.into_iter().enumerate() {
            let key = |f: &str| format!("source.kafka[{i}].{f}");
            for (v, f) in [
                (&k.bootstrap_servers, "bootstrap_servers"),
                (&k.group_id, "group_id"),
            ] {
                if v.get_ref().trim().is_empty() {
                    return Err(ctx.invalid(v.span(), &key(f), "must not be empty"));
                }
            }
            if k.topics.get_ref().is_empty() || k.topics.get_ref().iter().any(|t| t.is_empty()) {
                return Err(ctx.invalid(
                    k.topics.span(),
                    &key("topics"),
                    "must list at least one topic, none empty",
                ));
            }
            if let Some(d) = &k.destination {
                if !names.contains(d.get_ref()) {
                    return Err(ctx.invalid(
                        d.span(),
                        &key("destination"),
                        &format!("no destination named {:?} is configured", d.get_ref()),
                    ));
                }
            }
            let mut librdkafka = BTreeMap::new();
            for (name, v) in k.librdkafka {
                if KAFKA_RESERVED.contains(&name.as_str()) {
                    return Err(ctx.invalid(
                        v.span(),
                        &key(&format!("librdkafka.{name}")),
                        "is set by irisd (offsets are committed only after delivery); remove it",
                    ));
                }
                librdkafka.insert(name, SecretString::from(v.into_inner()));
            }
            kafka.push(KafkaSourceConfig {
                bootstrap_servers: k.bootstrap_servers.into_inner(),
                topics: k.topics.into_inner(),
                group_id: k.group_id.into_inner(),
                destination: k.destination.map(Spanned::into_inner),
                commit_interval: Duration::from_millis(k.commit_interval_ms.max(10)),
                librdkafka,
            });
        }
        Ok(Config {
            path: ctx.path.to_owned(),
            intake: IntakeConfig {
                tls: ctx.listener_tls(
                    &raw.intake.tls_cert_file,
                    &raw.intake.tls_key_file,
                    &raw.intake.client_ca_file,
                    "intake",
                )?,
                auth_token: ctx.listener_auth(
                    &raw.intake.auth_token_file,
                    &raw.intake.auth_token_env,
                    raw.intake.allow_unauthenticated || raw.intake.client_ca_file.is_some(),
                    Some(raw.intake.listen),
                    "intake",
                )?,
                ..raw.intake
            },
            spool,
            admin: AdminConfig {
                tls: ctx.listener_tls(
                    &raw.admin.tls_cert_file,
                    &raw.admin.tls_key_file,
                    &raw.admin.client_ca_file,
                    "admin",
                )?,
                auth_token: ctx.listener_auth(
                    &raw.admin.auth_token_file,
                    &raw.admin.auth_token_env,
                    raw.admin.allow_unauthenticated || raw.admin.client_ca_file.is_some(),
                    raw.admin.listen,
                    "admin",
                )?,
                ..raw.admin
            },
            destinations,
            kafka,
        })
    }
}

impl Destination {
    fn from_raw(ctx: &Ctx<'_>, key: &str, d: RawDestination) -> Result<Destination, ConfigError> {
        let name = d.name.get_ref().trim().to_string();
        if name.is_empty() || name.len() > 128 {
            return Err(ctx.invalid(
                d.name.span(),
                &format!("{key}.name"),
                "must be 1 to 128 characters",
            ));
        }
        let number = |v: &Spanned<String>, field: &str| -> Result<String, ConfigError> {
            let s = v.get_ref();
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ctx.invalid(
                    v.span(),
                    &format!("{key}.{field}"),
                    &format!("{s:?} must be a decimal number (Audience Manager sends ids as digit strings)"),
                ));
            }
            Ok(s.clone())
        };
        let destination_id = number(&d.destination_id, "destination_id")?;
        let user_dpid = number(&d.user_dpid, "user_dpid")?;
        let aam_client_id = number(&d.aam_client_id, "aam_client_id")?;

        let insecure = d.allow_insecure_http;
        let token_url = ctx.url(
            &d.auth.token_url,
            &format!("{key}.auth.token_url"),
            insecure,
        )?;
        let publish_url = ctx.url(&d.publish.url, &format!("{key}.publish.url"), insecure)?;
        let credentials = ctx.credentials(key, &d.auth)?;

        let scope = match &d.auth.scope {
            Some(s) if s.get_ref().is_empty() || !s.get_ref().bytes().all(is_scope_char) => {
                return Err(ctx.invalid(
                    s.span(),
                    &format!("{key}.auth.scope"),
                    "scope tokens are printable ASCII without '\"' or '\\', separated by spaces (RFC 6749 §3.3)",
                ));
            }
            Some(s) => Some(s.get_ref().clone()),
            None => None,
        };

        let method = match d.publish.method.get_ref().to_ascii_uppercase().as_str() {
            "GET" => PublishMethod::Get,
            "POST" => PublishMethod::Post,
            "PUT" => PublishMethod::Put,
            other => {
                return Err(ctx.invalid(
                    d.publish.method.span(),
                    &format!("{key}.publish.method"),
                    &format!("{other:?} is not one of GET, POST, PUT"),
                ))
            }
        };
        let positive = |v: &Spanned<usize>, field: &str, max: usize| {
            let n = *v.get_ref();
            if n == 0 || n > max {
                Err(ctx.invalid(
                    v.span(),
                    &format!("{key}.publish.{field}"),
                    &format!("must be between 1 and {max}, got {n}"),
                ))
            } else {
                Ok(n)
            }
        };
        let profile = match d.profile.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("reliable", _)) => Profile::Reliable,
            Some(("iris", _)) => Profile::Iris,
            Some((other, span)) => {
                return Err(ctx.invalid(
                    span,
                    &format!("{key}.profile"),
                    &format!("{other:?} is not one of \"reliable\", \"iris\""),
                ))
            }
        };
        let iris = profile == Profile::Iris;
        // Under the iris profile these are fixed; setting them to something else is a mistake.
        let fixed = |span: Range<usize>, field: &str, what: &str| {
            ctx.invalid(
                span,
                &format!("{key}.{field}"),
                &format!("profile = \"iris\" fixes this ({what}); remove the key or the profile"),
            )
        };
        let max_users = match &d.publish.max_users {
            Some(v) => {
                let n = positive(v, "max_users", 100_000)?;
                if iris && n > 10 {
                    return Err(fixed(
                        v.span(),
                        "publish.max_users",
                        "at most 10 users per message",
                    ));
                }
                n
            }
            None => 10,
        };
        let timeout_ms = match &d.publish.timeout_ms {
            Some(v) if *v.get_ref() == 0 => {
                return Err(ctx.invalid(
                    v.span(),
                    &format!("{key}.publish.timeout_ms"),
                    "must be greater than 0",
                ))
            }
            Some(v) if iris && *v.get_ref() != 3000 => {
                return Err(fixed(
                    v.span(),
                    "publish.timeout_ms",
                    "the partner answers within 3000 ms",
                ))
            }
            Some(v) => *v.get_ref(),
            None => 3000,
        };
        let success_status = match &d.publish.success_status {
            Some(v) => {
                if let Some(bad) = v.get_ref().iter().find(|s| !(100..=599).contains(*s)) {
                    return Err(ctx.invalid(
                        v.span(),
                        &format!("{key}.publish.success_status"),
                        &format!("{bad} is not an HTTP status"),
                    ));
                }
                if iris && v.get_ref() != &[200] {
                    return Err(fixed(
                        v.span(),
                        "publish.success_status",
                        "only 200 is success",
                    ));
                }
                v.get_ref().clone()
            }
            None if iris => vec![200],
            None => Vec::new(),
        };
        let max_attempts = match &d.retry.max_attempts {
            Some(v) if iris && *v.get_ref() != 2 => {
                return Err(fixed(
                    v.span(),
                    "retry.max_attempts",
                    "one retry, so 2 attempts",
                ))
            }
            Some(v) if *v.get_ref() == 0 => None,
            Some(v) => Some(*v.get_ref()),
            None if iris => Some(2),
            None => None,
        };
        let retry = RetryPolicy {
            initial: Duration::from_millis(d.retry.initial_ms.unwrap_or(500).max(1)),
            max_delay: Duration::from_millis(d.retry.max_delay_ms.unwrap_or(60_000).max(1)),
            max_attempts,
            max_age: Duration::from_secs(d.retry.max_age_secs.unwrap_or(7 * 86_400).max(1)),
            circuit_threshold: d.retry.circuit_threshold.unwrap_or(5).max(1),
        };
        let max_bytes = positive(&d.publish.max_bytes, "max_bytes", 256 * 1024 * 1024)?;
        if max_bytes < 1024 {
            return Err(ctx.invalid(
                d.publish.max_bytes.span(),
                &format!("{key}.publish.max_bytes"),
                "must be at least 1024 (one user record must fit)",
            ));
        }
        let max_in_flight = positive(&d.publish.max_in_flight, "max_in_flight", 1024)?;
        let gzip_level = positive(&d.publish.gzip_level, "gzip_level", 9)? as u32;

        let ca_file = match d.tls.ca_file {
            Some(p) => {
                let path = ctx.relative(p.get_ref());
                if !path.is_file() {
                    return Err(ctx.invalid(
                        p.span(),
                        &format!("{key}.tls.ca_file"),
                        &format!("{} does not exist or is not a file", path.display()),
                    ));
                }
                Some(path)
            }
            None => None,
        };
        let client_cert = match (d.tls.client_cert_file, d.tls.client_key_file) {
            (Some(c), Some(k)) => {
                for (p, f) in [(&c, "client_cert_file"), (&k, "client_key_file")] {
                    let path = ctx.relative(p.get_ref());
                    if !path.is_file() {
                        return Err(ctx.invalid(
                            p.span(),
                            &format!("{key}.tls.{f}"),
                            &format!("{} does not exist or is not a file", path.display()),
                        ));
                    }
                }
                // The key is a secret: same permission rule as the other secret files.
                ctx.secret_file(&k, &format!("{key}.tls.client_key_file"))?;
                Some((ctx.relative(c.get_ref()), ctx.relative(k.get_ref())))
            }
            (Some(c), None) => {
                return Err(ctx.invalid(
                    c.span(),
                    &format!("{key}.tls.client_cert_file"),
                    "needs tls.client_key_file too",
                ))
            }
            (None, Some(k)) => {
                return Err(ctx.invalid(
                    k.span(),
                    &format!("{key}.tls.client_key_file"),
                    "needs tls.client_cert_file too",
                ))
            }
            (None, None) => None,
        };

        let batch = match &d.batch {
            Some(b) => Some(ctx.batch(key, b)?),
            None => None,
        };
        let signing = match &d.signing {
            Some(sg) => Some(ctx.signing(key, sg)?),
            None => None,
        };

        Ok(Destination {
            batch,
            signing,
            name,
            destination_id,
            user_dpid,
            aam_client_id,
            allow_insecure_http: insecure,
            user_agent: d.user_agent.unwrap_or_else(|| IRIS_USER_AGENT.to_string()),
            profile,
            retry,
            auth: AuthConfig {
                token_url,
                credentials,
                scope,
                refresh_skew: d.auth.refresh_skew_secs.map(Duration::from_secs),
                timeout: Duration::from_millis(d.auth.timeout_ms.max(1)),
            },
            publish: PublishConfig {
                url: publish_url,
                method,
                gzip: d.publish.gzip,
                gzip_level,
                max_users,
                max_bytes,
                linger: Duration::from_millis(d.publish.linger_ms),
                timeout: Duration::from_millis(timeout_ms),
                connect_timeout: Duration::from_millis(d.publish.connect_timeout_ms.max(1)),
                max_in_flight,
                success_status,
                pool_idle_timeout: Duration::from_millis(d.publish.pool_idle_timeout_ms.max(1)),
                http2: d.publish.http2,
            },
            tls: TlsConfig {
                ca_file,
                client_cert,
                insecure_skip_verify: d.tls.insecure_skip_verify,
            },
        })
    }
}

/// RFC 6749 §3.3 `scope-token` characters plus the separating space.
fn is_scope_char(b: u8) -> bool {
    b == b' ' || (b == 0x21) || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

/// What validation needs to produce good messages.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Refuse secret files that group or others can read (otherwise: a warning).
    strict_permissions: bool,
}

impl Ctx<'_> {
    fn signing(&self, key: &str, sg: &RawSigning) -> Result<SigningConfig, ConfigError> {
        let k = |f: &str| format!("{key}.signing.{f}");
        let algorithm = sg
            .algorithm
            .get_ref()
            .parse()
            .map_err(|e: String| self.invalid(sg.algorithm.span(), &k("algorithm"), &e))?;
        let header = http::HeaderName::from_bytes(sg.header.get_ref().as_bytes())
            .map_err(|_| self.invalid(sg.header.span(), &k("header"), "not a valid header name"))?;
        let secret = match (&sg.key_env, &sg.key_file) {
            (Some(env), None) => self.secret_env(env, &k("key_env"))?,
            (None, Some(file)) => self.secret_file(file, &k("key_file"))?,
            _ => {
                return Err(self.invalid(
                    sg.algorithm.span(),
                    &format!("{key}.signing"),
                    "set exactly one of key_env, key_file",
                ))
            }
        };
        Ok(SigningConfig {
            algorithm,
            header,
            key: secret,
        })
    }

    fn batch(&self, key: &str, b: &RawBatch) -> Result<BatchConfig, ConfigError> {
        let k = |f: &str| format!("{key}.batch.{f}");
        let schedule = match (&b.daily_at, &b.cron) {
            (None, None) => None,
            (daily, cron) => {
                let span = daily
                    .as_ref()
                    .or(cron.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0);
                Some(
                    crate::schedule::Schedule::parse(
                        daily.as_ref().map(|s| s.get_ref().as_str()),
                        cron.as_ref().map(|s| s.get_ref().as_str()),
                        b.time_zone.get_ref(),
                    )
                    .map_err(|e| {
                        let which = if e.contains("time zone") {
                            "time_zone"
                        } else if daily.is_some() {
                            "daily_at"
                        } else {
                            "cron"
                        };
                        self.invalid(
                            if which == "time_zone" {
                                b.time_zone.span()
                            } else {
                                span.clone()
                            },
                            &k(which),
                            &e,
                        )
                    })?,
                )
            }
        };
        let input = match &b.input {
            Some(g) => {
                let path = self.relative(Path::new(g.get_ref()));
                let pattern = path.to_string_lossy().into_owned();
                glob::Pattern::new(&pattern).map_err(|e| {
                    self.invalid(
                        g.span(),
                        &k("input"),
                        &format!("{pattern:?} is not a valid glob: {e}"),
                    )
                })?;
                Some(pattern)
            }
            None => None,
        };
        if schedule.is_some() && input.is_none() {
            return Err(self.invalid(
                b.daily_at
                    .as_ref()
                    .or(b.cron.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0),
                &k("input"),
                "a scheduled batch needs input (a glob of the files to deliver)",
            ));
        }
        let positive = |v: &Spanned<usize>, f: &str, max: usize| {
            let n = *v.get_ref();
            if n == 0 || n > max {
                Err(self.invalid(
                    v.span(),
                    &k(f),
                    &format!("must be between 1 and {max}, got {n}"),
                ))
            } else {
                Ok(n)
            }
        };
        Ok(BatchConfig {
            input,
            schedule,
            max_users: positive(&b.max_users, "max_users", 100_000)?,
            max_bytes: positive(&b.max_bytes, "max_bytes", 256 * 1024 * 1024)?.max(1024),
            requests_per_second: std::num::NonZeroU32::new(b.requests_per_second),
            users_per_second: std::num::NonZeroU32::new(b.users_per_second),
            max_in_flight: positive(&b.max_in_flight, "max_in_flight", 1024)?,
            chunk_users: positive(&b.chunk_users, "chunk_users", 10_000_000)?,
            move_done: b.move_done,
        })
    }

    fn spool(&self, raw: &RawSpool) -> Result<SpoolConfig, ConfigError> {
        for (v, key) in [
            (&raw.max_bytes, "spool.max_bytes"),
            (
                &raw.max_bytes_per_destination,
                "spool.max_bytes_per_destination",
            ),
        ] {
            if let Some(v) = v {
                if *v.get_ref() < 64 * 1024 {
                    return Err(self.invalid(v.span(), key, "must be at least 65536"));
                }
            }
        }
        Ok(SpoolConfig {
            path: raw
                .path
                .as_ref()
                .map(|p| self.relative(p.get_ref()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_PATH)),
            max_bytes: raw.max_bytes.as_ref().map_or(1 << 30, |v| *v.get_ref()),
            max_bytes_per_destination: raw
                .max_bytes_per_destination
                .as_ref()
                .map_or(256 << 20, |v| *v.get_ref()),
            fsync: raw.fsync.unwrap_or(true),
        })
    }

    fn invalid(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_col(self.text, span.start).0,
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Resolves a path in the config relative to the config file's directory.
    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn url(&self, v: &Spanned<String>, key: &str, allow_http: bool) -> Result<Uri, ConfigError> {
        let uri: Uri = v.get_ref().parse().map_err(|e| {
            self.invalid(
                v.span(),
                key,
                &format!("{:?} is not a valid URL: {e}", v.get_ref()),
            )
        })?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if allow_http => {}
            Some("http") => {
                return Err(self.invalid(
                    v.span(),
                    key,
                    "plain http:// is refused: tokens are passwords and must travel over https \
                     (set allow_insecure_http = true on the destination for local tests only)",
                ))
            }
            _ => return Err(self.invalid(v.span(), key, "the URL must start with https://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(self.invalid(v.span(), key, "the URL has no host"));
        }
        Ok(uri)
    }

    fn credentials(&self, key: &str, a: &RawAuth) -> Result<Credentials, ConfigError> {
        let sources = [
            a.client_secret_env.as_ref().map(|s| s.span()),
            a.client_secret_file.as_ref().map(|s| s.span()),
            a.basic_credentials_env.as_ref().map(|s| s.span()),
            a.basic_credentials_file.as_ref().map(|s| s.span()),
        ];
        let set: Vec<_> = sources.iter().flatten().collect();
        let auth_key = format!("{key}.auth");
        if set.is_empty() {
            return Err(self.invalid(
                a.token_url.span(),
                &auth_key,
                "no credentials: set one of client_secret_env, client_secret_file, \
                 basic_credentials_env, basic_credentials_file",
            ));
        }
        if set.len() > 1 {
            return Err(self.invalid(
                set[1].clone(),
                &auth_key,
                "set only one of client_secret_env, client_secret_file, basic_credentials_env, \
                 basic_credentials_file",
            ));
        }
        let secret = if let Some(env) = &a.client_secret_env {
            self.secret_env(env, &format!("{auth_key}.client_secret_env"))?
        } else if let Some(file) = &a.client_secret_file {
            self.secret_file(file, &format!("{auth_key}.client_secret_file"))?
        } else if let Some(env) = &a.basic_credentials_env {
            self.reject_client_id(a, &auth_key)?;
            return Ok(Credentials::Basic(
                self.secret_env(env, &format!("{auth_key}.basic_credentials_env"))?,
            ));
        } else if let Some(file) = &a.basic_credentials_file {
            self.reject_client_id(a, &auth_key)?;
            return Ok(Credentials::Basic(self.secret_file(
                file,
                &format!("{auth_key}.basic_credentials_file"),
            )?));
        } else {
            unreachable!("one source is set")
        };
        let Some(client_id) = &a.client_id else {
            return Err(self.invalid(
                a.token_url.span(),
                &format!("{auth_key}.client_id"),
                "client_id is required with client_secret_env / client_secret_file",
            ));
        };
        if client_id.get_ref().is_empty() {
            return Err(self.invalid(
                client_id.span(),
                &format!("{auth_key}.client_id"),
                "must not be empty",
            ));
        }
        Ok(Credentials::ClientSecret {
            client_id: client_id.get_ref().clone(),
            secret,
        })
    }

    fn reject_client_id(&self, a: &RawAuth, auth_key: &str) -> Result<(), ConfigError> {
        match &a.client_id {
            Some(id) => Err(self.invalid(
                id.span(),
                &format!("{auth_key}.client_id"),
                "client_id is not used with basic_credentials_*: the partner-issued value is sent as is",
            )),
            None => Ok(()),
        }
    }

    fn secret_env(&self, v: &Spanned<String>, key: &str) -> Result<SecretString, ConfigError> {
        match std::env::var(v.get_ref()) {
            Ok(s) if !s.is_empty() => Ok(SecretString::from(s)),
            Ok(_) => Err(self.invalid(
                v.span(),
                key,
                &format!("environment variable {} is empty", v.get_ref()),
            )),
            Err(_) => Err(self.invalid(
                v.span(),
                key,
                &format!("environment variable {} is not set", v.get_ref()),
            )),
        }
    }

    /// Checks a listener's TLS files: certificate and key together; a client CA only with TLS.
    fn listener_tls(
        &self,
        cert: &Option<Spanned<PathBuf>>,
        key: &Option<Spanned<PathBuf>>,
        client_ca: &Option<Spanned<PathBuf>>,
        section: &str,
    ) -> Result<Option<ListenerTls>, ConfigError> {
        let file = |v: &Spanned<PathBuf>, f: &str| {
            let path = self.relative(v.get_ref());
            if path.is_file() {
                Ok(path)
            } else {
                Err(self.invalid(
                    v.span(),
                    &format!("{section}.{f}"),
                    &format!("{} does not exist or is not a file", path.display()),
                ))
            }
        };
        match (cert, key) {
            (Some(c), Some(k)) => {
                self.secret_file(k, &format!("{section}.tls_key_file"))?;
                Ok(Some(ListenerTls {
                    cert: file(c, "tls_cert_file")?,
                    key: file(k, "tls_key_file")?,
                    client_ca: client_ca
                        .as_ref()
                        .map(|ca| file(ca, "client_ca_file"))
                        .transpose()?,
                }))
            }
            (None, None) => match client_ca {
                Some(ca) => Err(self.invalid(
                    ca.span(),
                    &format!("{section}.client_ca_file"),
                    "client certificates need TLS: set tls_cert_file and tls_key_file too",
                )),
                None => Ok(None),
            },
            (Some(c), None) | (None, Some(c)) => Err(self.invalid(
                c.span(),
                &format!("{section}.tls_cert_file"),
                "tls_cert_file and tls_key_file go together",
            )),
        }
    }

    /// Loads a listener's token and refuses an open non-loopback listener.
    fn listener_auth(
        &self,
        file: &Option<Spanned<PathBuf>>,
        env: &Option<Spanned<String>>,
        allow_unauthenticated: bool,
        listen: Option<SocketAddr>,
        section: &str,
    ) -> Result<Option<SecretString>, ConfigError> {
        let token = match (file, env) {
            (Some(f), None) => Some(self.secret_file(f, &format!("{section}.auth_token_file"))?),
            (None, Some(e)) => Some(self.secret_env(e, &format!("{section}.auth_token_env"))?),
            (Some(_), Some(e)) => {
                return Err(self.invalid(
                    e.span(),
                    &format!("{section}.auth_token_env"),
                    "set auth_token_file or auth_token_env, not both",
                ))
            }
            (None, None) => None,
        };
        if let Some(addr) = listen {
            if token.is_none() && !addr.ip().is_loopback() && !allow_unauthenticated {
                return Err(ConfigError::Invalid {
                    path: self.path.to_owned(),
                    line: self
                        .text
                        .lines()
                        .position(|l| l.trim_start().starts_with(&format!("[{section}]")))
                        .map_or(0, |i| i + 1),
                    key: format!("{section}.listen"),
                    message: format!(
                        "{addr} is reachable from other machines but no {section}.auth_token_file or {section}.auth_token_env is set; set one (clients send Authorization: Bearer <token>), or set {section}.allow_unauthenticated = true to let anyone who can reach it in"
                    ),
                });
            }
            if token.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(listener = section, %addr, "listening on a non-loopback address without authentication (allow_unauthenticated = true)");
            }
        }
        Ok(token)
    }

    fn secret_file(&self, v: &Spanned<PathBuf>, key: &str) -> Result<SecretString, ConfigError> {
        let path = self.relative(v.get_ref());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    if self.strict_permissions {
                        return Err(self.invalid(
                            v.span(),
                            key,
                            &format!(
                                "{} can be read by group or others (mode {mode:o}); chmod 600 it (strict_permissions = true)",
                                path.display()
                            ),
                        ));
                    }
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{mode:o}"),
                        "a secret file can be read by group or others; chmod 600 it (strict_permissions = true refuses this)"
                    );
                }
            }
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            self.invalid(
                v.span(),
                key,
                &format!("cannot read {}: {e}", path.display()),
            )
        })?;
        // A trailing newline is an artefact of `echo secret > file`, never part of a secret.
        let trimmed = text.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            return Err(self.invalid(v.span(), key, &format!("{} is empty", path.display())));
        }
        Ok(SecretString::from(trimmed.to_string()))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

impl fmt::Display for PublishMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_method().as_str())
    }
}

impl Config {
    /// A human-readable summary for `irisd check-config`: every destination, secrets as `***`.
    pub fn summary(&self) -> String {
        use fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: OK, intake on {}",
            self.path.display(),
            self.intake.listen
        );
        for d in &self.destinations {
            let cred = match &d.auth.credentials {
                Credentials::ClientSecret { client_id, .. } => {
                    format!("client_id={client_id} client_secret=***")
                }
                Credentials::Basic(_) => "basic_credentials=***".to_string(),
            };
            let _ = writeln!(
                out,
                "destination {:?} (profile {:?}): AAM_Destination_Id={} User_DPID={} Client_ID={}\n  token  POST {} ({cred}{})\n  publish {} {} gzip={} max_users={} max_bytes={} linger={}ms timeout={}ms max_in_flight={}{}",
                d.name,
                d.profile,
                d.destination_id,
                d.user_dpid,
                d.aam_client_id,
                d.auth.token_url,
                d.auth.scope.as_ref().map(|s| format!(" scope={s:?}")).unwrap_or_default(),
                d.publish.method,
                d.publish.url,
                d.publish.gzip,
                d.publish.max_users,
                d.publish.max_bytes,
                d.publish.linger.as_millis(),
                d.publish.timeout.as_millis(),
                d.publish.max_in_flight,
                if d.allow_insecure_http { "\n  WARNING: allow_insecure_http = true" } else { "" },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn scope_chars_follow_rfc6749() {
        assert!("segments read:all".bytes().all(is_scope_char));
        assert!(!"a\"b".bytes().all(is_scope_char));
        assert!(!"a\\b".bytes().all(is_scope_char));
    }
}
