//! The validated configuration the daemon runs on: every value checked, defaults applied,
//! relative paths resolved against the config file's directory, and secrets loaded into
//! [`SecretString`]s (so `Debug` prints `[REDACTED]`). Built only by [`super::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Uri};
use secrecy::SecretString;

use crate::oauth::Credentials;

/// The `User-Agent` IRIS sends; irisd sends the same unless a destination overrides it.
pub const IRIS_USER_AGENT: &str = "Adobe Audience Manager Iris";

/// Default spool file, in the working directory.
pub const DEFAULT_SPOOL_PATH: &str = "irisd-spool.sqlite";

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

/// `[intake]`: the HTTP API producers post qualifications to.
#[derive(Debug, Clone)]
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
    /// Bearer token clients must send, when configured.
    pub auth_token: Option<SecretString>,
    /// HTTPS (and mutual TLS) files, when configured.
    pub tls: Option<ListenerTls>,
}

/// `[admin]`: Prometheus metrics, health, readiness and status.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// Address of the admin listener; none = no admin listener.
    pub listen: Option<SocketAddr>,
    /// Bearer token clients must send on `/metrics` and `/status`, when configured.
    pub auth_token: Option<SecretString>,
    /// HTTPS (and mutual TLS) files, when configured.
    pub tls: Option<ListenerTls>,
}

/// A listener's TLS files, checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
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

/// `[destination.signing]`: an HMAC of each publish request in a header, as IRIS can send.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub algorithm: crate::signing::Algorithm,
    pub header: http::HeaderName,
    pub key: SecretString,
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

impl std::str::FromStr for PublishMethod {
    type Err = String;
    /// GET, POST or PUT, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "GET" => Ok(PublishMethod::Get),
            "POST" => Ok(PublishMethod::Post),
            "PUT" => Ok(PublishMethod::Put),
            other => Err(format!("{other:?} is not one of GET, POST, PUT")),
        }
    }
}

impl fmt::Display for PublishMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_method().as_str())
    }
}
