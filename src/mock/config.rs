//! The mock partner's configuration (`irisd mock-partner --config FILE`, or built in tests):
//! where it listens, its endpoints' paths, token lifetime and strictness, limits, the clients it
//! accepts, faults and scenario phases, and request signing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::faults::{self, Faults};

/// `[[client]]` in the mock's config: one set of credentials the token endpoint accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// RFC 6749 client id (with `client_secret`).
    pub client_id: Option<String>,
    /// RFC 6749 client secret (with `client_id`).
    pub client_secret: Option<String>,
    /// An opaque Basic credential, compared with what follows `Basic ` as is.
    pub basic: Option<String>,
    /// Scopes this client may request; empty = any.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Inactive clients exist but get no tokens (`invalid_client`) until activated.
    #[serde(default = "active_by_default")]
    pub active: bool,
}

impl ClientSpec {
    /// An active RFC 6749 client (id and secret), no scopes.
    pub fn with_secret(client_id: &str, client_secret: &str) -> Self {
        Self {
            client_id: Some(client_id.into()),
            client_secret: Some(client_secret.into()),
            basic: None,
            scopes: vec![],
            active: true,
        }
    }
}

fn active_by_default() -> bool {
    true
}

/// The mock partner's configuration (`irisd mock-partner --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Address to listen on (HTTPS).
    pub listen: SocketAddr,
    /// Where the CA and server certificate live (created on first start).
    pub tls_dir: PathBuf,
    /// Path of the token endpoint.
    pub token_path: String,
    /// Path of the segment publish endpoint.
    pub publish_path: String,
    /// Path of the RFC 7662 introspection endpoint.
    pub introspect_path: String,
    /// Path of the RFC 7009 revocation endpoint.
    pub revoke_path: String,
    /// Token lifetime in seconds; absent/0 = tokens never expire and `expires_in` is omitted,
    /// as in the IRIS example.
    pub token_ttl_secs: Option<u64>,
    /// Insist on the exact IRIS `Content-Type` string on token requests.
    pub strict_content_type: bool,
    /// Most users accepted in one publish request.
    pub max_users: usize,
    /// Largest publish body accepted (decoded).
    pub max_body_bytes: usize,
    /// Requests remembered in the journal.
    pub journal_capacity: usize,
    /// Accepted payloads kept for inspection.
    pub payload_capacity: usize,
    /// Scope a token must carry to publish (403 `insufficient_scope` otherwise); none = any.
    pub publish_scope: Option<String>,
    /// Accept `client_id`/`client_secret` in the form body (RFC 6749 §2.3.1 allows it but
    /// discourages it); both body and Basic at once is always `invalid_request`.
    pub allow_body_credentials: bool,
    /// Seconds a token validation result is trusted before the publish endpoint checks the
    /// token again (revocation takes effect within this), like IMS's 10 minutes.
    pub validation_interval_secs: u64,
    /// Require a client certificate (mutual TLS) issued by the mock's client CA; a client
    /// certificate and key for irisd are written next to the CA (`client.pem`, `client.key`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// Faults in force from the start (see [`Faults`]).
    pub faults: Faults,
    /// Require signed publish requests (403 when missing or wrong).
    pub signing: Option<MockSigning>,
    /// A scenario: fault phases in order (`[[phase]]`), each for some requests or seconds,
    /// e.g. "100 requests OK, then 30 s of 503, then 429 with Retry-After 5, then OK". While a
    /// phase is in force its faults replace `faults`.
    #[serde(rename = "phase")]
    pub phases: Vec<faults::Phase>,
    /// Accepted credentials.
    #[serde(rename = "client")]
    pub clients: Vec<ClientSpec>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            tls_dir: PathBuf::from("mock-partner-tls"),
            token_path: "/oauth2/token".into(),
            publish_path: "/segments/aam".into(),
            introspect_path: "/oauth2/introspect".into(),
            revoke_path: "/oauth2/revoke".into(),
            token_ttl_secs: Some(3600),
            strict_content_type: false,
            max_users: 100_000,
            max_body_bytes: 64 * 1024 * 1024,
            journal_capacity: 1000,
            payload_capacity: 1000,
            publish_scope: None,
            allow_body_credentials: false,
            validation_interval_secs: 600,
            faults: Faults::default(),
            require_client_cert: false,
            signing: None,
            phases: Vec::new(),
            clients: Vec::new(),
        }
    }
}

impl MockConfig {
    /// Reads a mock config file; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let de = toml::Deserializer::new(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .unwrap_or(1);
            format!("{}:{line}: {key}: {}", path.display(), inner.message())
        })
    }
}

/// `[signing]` in the mock's config: how publish requests must be signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockSigning {
    pub algorithm: crate::signing::Algorithm,
    #[serde(default = "default_signature_header")]
    pub header: String,
    /// One key, or two during a rotation; a signature by either is accepted.
    pub keys: Vec<String>,
}

fn default_signature_header() -> String {
    "X-Signature".into()
}
