//! The raw schema: what the operator writes, key for key. These structs mirror the TOML exactly
//! (`deny_unknown_fields` everywhere, so a typo is an error, not a silently ignored key) and keep
//! the span of every value that validation may complain about, so its message can name the line.
//! Every key is documented in `deploy/irisd.example.toml`. Nothing here is checked beyond its
//! type: that is [`super::validate`]'s job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub intake: RawIntake,
    #[serde(default)]
    pub spool: RawSpool,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default, rename = "destination")]
    pub destinations: Vec<RawDestination>,
    #[serde(default)]
    pub source: RawSources,
    /// Secret files readable by group or others are refused (default: a warning).
    #[serde(default)]
    pub strict_permissions: bool,
}

/// Declares a listener section (`[intake]`, `[admin]`): its own keys, plus the keys every
/// listener takes for authentication and TLS, which are written here once.
macro_rules! listener_section {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Bearer token clients must send (`Authorization: Bearer <token>`), from a file...
            #[serde(default)]
            pub auth_token_file: Option<Spanned<PathBuf>>,
            /// ...or from an environment variable. Required on a non-loopback address unless
            /// `allow_unauthenticated = true`.
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
        }

        impl $name {
            /// The keys every listener takes.
            pub fn security(&self) -> RawListenerSecurity<'_> {
                RawListenerSecurity {
                    auth_token_file: &self.auth_token_file,
                    auth_token_env: &self.auth_token_env,
                    allow_unauthenticated: self.allow_unauthenticated,
                    tls_cert_file: &self.tls_cert_file,
                    tls_key_file: &self.tls_key_file,
                    client_ca_file: &self.client_ca_file,
                }
            }
        }
    };
}

/// The authentication and TLS keys of one listener section.
pub(super) struct RawListenerSecurity<'a> {
    pub auth_token_file: &'a Option<Spanned<PathBuf>>,
    pub auth_token_env: &'a Option<Spanned<String>>,
    pub allow_unauthenticated: bool,
    pub tls_cert_file: &'a Option<Spanned<PathBuf>>,
    pub tls_key_file: &'a Option<Spanned<PathBuf>>,
    pub client_ca_file: &'a Option<Spanned<PathBuf>>,
}

listener_section! {
    /// `[intake]`: the HTTP API producers post qualifications to.
    RawIntake {
        #[serde(default = "default_intake_listen")]
        listen: SocketAddr,
        #[serde(default = "default_max_body_bytes")]
        max_body_bytes: usize,
        #[serde(default = "default_max_connections")]
        max_connections: usize,
        #[serde(default = "default_header_read_timeout_ms")]
        header_read_timeout_ms: u64,
    }
}

impl Default for RawIntake {
    fn default() -> Self {
        Self {
            listen: default_intake_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_connections: default_max_connections(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            auth_token_file: None,
            auth_token_env: None,
            allow_unauthenticated: false,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
        }
    }
}

fn default_intake_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9700))
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_max_connections() -> usize {
    16_384
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}

listener_section! {
    /// `[admin]`: Prometheus metrics, health, readiness and status.
    #[derive(Default)]
    RawAdmin {
        #[serde(default)]
        listen: Option<SocketAddr>,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSources {
    #[serde(default)]
    pub kafka: Vec<RawKafka>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    pub bootstrap_servers: Spanned<String>,
    pub topics: Spanned<Vec<String>>,
    pub group_id: Spanned<String>,
    pub destination: Option<Spanned<String>>,
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    #[serde(default)]
    pub librdkafka: BTreeMap<String, Spanned<String>>,
}

fn default_commit_interval_ms() -> u64 {
    1000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    pub path: Option<Spanned<PathBuf>>,
    pub max_bytes: Option<Spanned<u64>>,
    pub max_bytes_per_destination: Option<Spanned<u64>>,
    pub fsync: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub name: Spanned<String>,
    pub destination_id: Spanned<String>,
    pub user_dpid: Spanned<String>,
    pub aam_client_id: Spanned<String>,
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub profile: Option<Spanned<String>>,
    pub auth: RawAuth,
    pub publish: RawPublish,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub tls: RawTls,
    pub batch: Option<RawBatch>,
    pub signing: Option<RawSigning>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    #[serde(default = "default_signing_algorithm")]
    pub algorithm: Spanned<String>,
    #[serde(default = "default_signing_header")]
    pub header: Spanned<String>,
    pub key_env: Option<Spanned<String>>,
    pub key_file: Option<Spanned<PathBuf>>,
}

fn default_signing_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "sha256".to_string())
}
fn default_signing_header() -> Spanned<String> {
    Spanned::new(0..0, "X-Signature".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    pub input: Option<Spanned<String>>,
    pub daily_at: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    #[serde(default = "default_time_zone")]
    pub time_zone: Spanned<String>,
    pub max_users: Option<Spanned<usize>>,
    #[serde(default = "default_batch_max_bytes")]
    pub max_bytes: Spanned<usize>,
    pub requests_per_second: Option<Spanned<u32>>,
    pub users_per_second: Option<Spanned<u32>>,
    #[serde(default = "default_batch_in_flight")]
    pub max_in_flight: Spanned<usize>,
    #[serde(default = "default_chunk_users")]
    pub chunk_users: Spanned<usize>,
    #[serde(default)]
    pub move_done: bool,
}

fn default_time_zone() -> Spanned<String> {
    Spanned::new(0..0, "UTC".to_string())
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub initial_ms: Option<u64>,
    pub max_delay_ms: Option<u64>,
    pub max_attempts: Option<Spanned<u32>>,
    pub max_age_secs: Option<u64>,
    pub circuit_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub token_url: Spanned<String>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<PathBuf>>,
    pub basic_credentials_env: Option<Spanned<String>>,
    pub basic_credentials_file: Option<Spanned<PathBuf>>,
    pub scope: Option<Spanned<String>>,
    pub refresh_skew_secs: Option<u64>,
    #[serde(default = "default_token_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_token_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    pub url: Spanned<String>,
    #[serde(default = "default_method")]
    pub method: Spanned<String>,
    #[serde(default = "yes")]
    pub gzip: bool,
    #[serde(default = "default_gzip_level")]
    pub gzip_level: Spanned<usize>,
    pub max_users: Option<Spanned<usize>>,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Spanned<usize>,
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    pub timeout_ms: Option<Spanned<u64>>,
    pub success_status: Option<Spanned<Vec<u16>>>,
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: Spanned<usize>,
    #[serde(default)]
    pub http2: bool,
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
pub(super) struct RawTls {
    pub ca_file: Option<Spanned<PathBuf>>,
    pub client_cert_file: Option<Spanned<PathBuf>>,
    pub client_key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}
