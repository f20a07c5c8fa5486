//! The mock partner: the other side of the protocol, strict, over HTTPS.
//!
//! It serves the RFC 6749 token endpoint ([`token`]) and the segment publish endpoint
//! ([`publish`]) exactly as PROTOCOL.md describes a partner, checks everything IRIS must send,
//! and answers errors the way the RFCs say. It is a product for partners (run it, point a
//! test setup at it) and the counterpart of every integration test; it shares only the payload
//! types and the secret types with the daemon. Its state (clients, issued tokens, counters, a
//! bounded journal of requests) is in [`MockState`]; admin endpoints live under `/_mock/`.

pub mod body;
pub mod faults;
pub mod publish;
pub mod tls;
pub mod token;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use self::body::MockBody;
use self::faults::{Action, Faults};
use crate::payload::Payload;
use crate::server::{error_response, json_response, serve, CloseConnection, ServerHandle};

/// Users and request ids tracked for duplicate counting, at most.
const MAX_TRACKED: usize = 10_000_000;

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

/// A client the mock knows, with its secret held as a secret.
pub(crate) struct Client {
    /// The client id (`(opaque basic)` for a client known by an opaque Basic value).
    pub id: String,
    /// RFC 6749 client secret; `None` for an opaque-Basic client.
    pub secret: Option<SecretString>,
    /// The opaque Basic value, for clients that have one.
    pub basic: Option<SecretString>,
    pub scopes: Vec<String>,
    pub active: bool,
}

impl Client {
    fn from_spec(spec: &ClientSpec) -> Result<Client, String> {
        match (&spec.client_id, &spec.client_secret, &spec.basic) {
            (Some(id), Some(secret), None) => Ok(Client {
                id: id.clone(),
                secret: Some(SecretString::from(secret.clone())),
                basic: None,
                scopes: spec.scopes.clone(),
                active: spec.active,
            }),
            (id, None, Some(basic)) => Ok(Client {
                id: id.clone().unwrap_or_else(|| "(opaque basic)".into()),
                secret: None,
                basic: Some(SecretString::from(basic.clone())),
                scopes: spec.scopes.clone(),
                active: spec.active,
            }),
            _ => Err("a client has either client_id and client_secret, or basic".into()),
        }
    }
}

/// A token the mock issued.
pub(crate) struct Issued {
    pub client: String,
    pub scopes: Vec<String>,
    pub issued_at: Instant,
    pub expires_at: Option<Instant>,
    /// Revoked (RFC 7009): refused from the next validation on.
    pub revoked: bool,
    /// When the publish endpoint last validated it (validation results are cached).
    pub validated_at: Instant,
}

/// Counters, readable at `GET /_mock/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MockStats {
    pub token_requests: u64,
    pub tokens_issued: u64,
    /// Token requests refused, by RFC 6749 error code.
    pub token_rejections: BTreeMap<String, u64>,
    pub publish_requests: u64,
    /// Publish requests that came over HTTP/2 (the rest over HTTP/1.1).
    #[serde(default)]
    pub publish_requests_http2: u64,
    pub publish_accepted: u64,
    pub users_accepted: u64,
    pub segments_accepted: u64,
    /// Publish requests refused, by reason.
    pub publish_rejections: BTreeMap<String, u64>,
    /// Injected faults, by kind (`status_503`, `closed`, `token_down`).
    pub injected: BTreeMap<String, u64>,
    /// Distinct `AAM_UUID`s accepted.
    pub unique_users: u64,
    /// Accepted user entries beyond the first for their `AAM_UUID` (redeliveries).
    pub duplicate_users: u64,
    /// Distinct `X-Request-Id`s accepted.
    pub unique_request_ids: u64,
    /// Accepted requests whose `X-Request-Id` was accepted before.
    pub duplicate_request_ids: u64,
    /// More than 10 million distinct users or request ids: tracking stopped there.
    pub tracking_truncated: bool,
    /// Wrapping sum of [`crate::payload::User::digest`] over the first accepted entry of each
    /// distinct `AAM_UUID`: a fingerprint of exactly what arrived, whatever the order.
    #[serde(default)]
    pub users_digest: u64,
}

/// One request as the mock saw it (Authorization redacted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    /// Milliseconds since the mock started.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_bytes: usize,
    pub status: u16,
    /// `accepted` or the rejection reason.
    pub verdict: String,
    pub detail: String,
}

/// Filters of `GET /_mock/requests?verdict=..&path=..&method=..&status=..&limit=..`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalFilter {
    pub verdict: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    pub status: Option<u16>,
    /// The newest this-many entries.
    pub limit: Option<usize>,
}

impl JournalFilter {
    /// Parses a query string; unknown parameters are errors (a typo should not match all).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut f = JournalFilter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "verdict" => f.verdict = Some(v.into_owned()),
                "path" => f.path = Some(v.into_owned()),
                "method" => f.method = Some(v.to_ascii_uppercase()),
                "status" => {
                    f.status = Some(
                        v.parse()
                            .map_err(|_| format!("status {v:?} is not a number"))?,
                    )
                }
                "limit" => {
                    f.limit = Some(
                        v.parse()
                            .map_err(|_| format!("limit {v:?} is not a number"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown filter {other:?}: use verdict, path, method, status, limit"
                    ))
                }
            }
        }
        Ok(f)
    }

    pub fn apply(&self, entries: Vec<JournalEntry>) -> Vec<JournalEntry> {
        let mut out: Vec<JournalEntry> = entries
            .into_iter()
            .filter(|e| self.verdict.as_ref().is_none_or(|v| &e.verdict == v))
            .filter(|e| self.path.as_ref().is_none_or(|p| &e.path == p))
            .filter(|e| self.method.as_ref().is_none_or(|m| &e.method == m))
            .filter(|e| self.status.is_none_or(|s| e.status == s))
            .collect();
        if let Some(n) = self.limit {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        out
    }
}

/// A payload the publish endpoint accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    pub seq: u64,
    pub method: String,
    pub request_id: Option<String>,
    pub payload: Payload,
}

/// Everything the mock knows.
pub struct MockState {
    cfg: MockConfig,
    started: Instant,
    pub(crate) clients: RwLock<Vec<Client>>,
    pub(crate) tokens: RwLock<HashMap<String, Issued>>,
    stats: Mutex<MockStats>,
    journal: Mutex<VecDeque<JournalEntry>>,
    received: Mutex<VecDeque<Received>>,
    seq: std::sync::atomic::AtomicU64,
    faults: RwLock<Faults>,
    /// Scenario position: phase index, when it started, requests in it.
    scenario: Mutex<(usize, Instant, u64)>,
    seen: Mutex<Seen>,
    audit: Mutex<VecDeque<AuditEntry>>,
}

/// One line of the token audit journal: never the token, only a short hash of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    pub client: String,
    /// `issued`, `rejected`, `validated`, `invalidated`, `revoked`.
    pub event: String,
    /// First 12 hex digits of the token's SHA-256 (empty when there is no token).
    pub token_hash: String,
    pub detail: String,
}

/// A short, non-reversible name for a token in the audit journal.
pub fn token_hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deliveries per user and per request id, for duplicate counting.
#[derive(Default)]
struct Seen {
    /// By a 64-bit hash of the id: a tenth of the memory of the ids themselves, and a false
    /// "duplicate" needs a 64-bit collision (about 3 in a million at the 10 million cap).
    users: HashMap<u64, u32, BuildIdentity>,
    request_ids: HashMap<u64, u32, BuildIdentity>,
    duplicate_users: u64,
    duplicate_request_ids: u64,
    truncated: bool,
    digest: u64,
}

impl MockState {
    fn new(cfg: MockConfig) -> Result<Self, String> {
        let clients = cfg
            .clients
            .iter()
            .map(Client::from_spec)
            .collect::<Result<Vec<_>, _>>()?;
        cfg.faults.validate().map_err(|e| format!("faults: {e}"))?;
        Ok(Self {
            faults: RwLock::new(cfg.faults.clone()),
            scenario: Mutex::new((0, Instant::now(), 0)),
            seen: Mutex::new(Seen::default()),
            audit: Mutex::new(VecDeque::new()),
            cfg,
            started: Instant::now(),
            clients: RwLock::new(clients),
            tokens: RwLock::new(HashMap::new()),
            stats: Mutex::new(MockStats::default()),
            journal: Mutex::new(VecDeque::new()),
            received: Mutex::new(VecDeque::new()),
            seq: Default::default(),
        })
    }

    pub fn config(&self) -> &MockConfig {
        &self.cfg
    }

    pub fn stats(&self) -> MockStats {
        let mut s = lock(&self.stats).clone();
        let seen = lock(&self.seen);
        s.unique_users = seen.users.len() as u64;
        s.duplicate_users = seen.duplicate_users;
        s.unique_request_ids = seen.request_ids.len() as u64;
        s.duplicate_request_ids = seen.duplicate_request_ids;
        s.tracking_truncated = seen.truncated;
        s.users_digest = seen.digest;
        s
    }

    /// Records a token event in the audit journal (bounded like the request journal).
    pub(crate) fn audit(&self, client: &str, event: &str, token: Option<&str>, detail: &str) {
        let entry = AuditEntry {
            at_ms: self.started.elapsed().as_millis() as u64,
            client: client.to_string(),
            event: event.to_string(),
            token_hash: token.map(token_hash).unwrap_or_default(),
            detail: detail.to_string(),
        };
        let mut a = lock(&self.audit);
        if a.len() >= self.cfg.journal_capacity.max(1) * 10 {
            a.pop_front();
        }
        a.push_back(entry);
    }

    /// The token audit journal, oldest first.
    pub fn audit_journal(&self) -> Vec<AuditEntry> {
        lock(&self.audit).iter().cloned().collect()
    }

    /// Adds a client at run time (inactive unless `active`); returns its secret (generated
    /// when not given).
    pub fn add_client(
        &self,
        id: &str,
        secret: Option<String>,
        scopes: Vec<String>,
        active: bool,
    ) -> Result<String, String> {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if clients.iter().any(|c| c.id == id) {
            return Err(format!("client {id:?} exists"));
        }
        let secret = secret.unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
        clients.push(Client {
            id: id.to_string(),
            secret: Some(SecretString::from(secret.clone())),
            basic: None,
            scopes,
            active,
        });
        Ok(secret)
    }

    /// Activates or deactivates a client; a deactivated client's tokens fail their next validation.
    pub fn set_client_active(&self, id: &str, active: bool) -> Result<(), String> {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        let c = clients
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| format!("no client {id:?}"))?;
        c.active = active;
        Ok(())
    }

    /// Deletes a client and revokes its tokens at once.
    pub fn delete_client(&self, id: &str) -> Result<(), String> {
        {
            let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
            let before = clients.len();
            clients.retain(|c| c.id != id);
            if clients.len() == before {
                return Err(format!("no client {id:?}"));
            }
        }
        self.drop_tokens_of(id, "client deleted");
        Ok(())
    }

    /// Clients without their secrets: id, active, scopes.
    pub fn client_list(&self) -> Vec<serde_json::Value> {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| serde_json::json!({"client_id": c.id, "active": c.active, "scopes": c.scopes}))
            .collect()
    }

    fn drop_tokens_of(&self, client: &str, why: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = tokens
            .iter()
            .filter(|(_, t)| t.client == client)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            tokens.remove(&k);
            self.audit(client, "revoked", Some(&k), why);
        }
    }

    /// How many times each `AAM_UUID` was accepted (a copy).
    pub fn user_counts(&self) -> UserCounts {
        UserCounts(lock(&self.seen).users.clone())
    }

    /// Counts one publish request in the scenario and returns the faults it gets: the
    /// current phase's, or the plain `faults` when there is no scenario or it is over.
    fn scenario_faults(&self) -> Option<Faults> {
        if self.cfg.phases.is_empty() {
            return None;
        }
        let mut sc = lock(&self.scenario);
        let now = Instant::now();
        let p = faults::advance(
            &self.cfg.phases,
            faults::Progress {
                index: sc.0,
                elapsed_s: now.duration_since(sc.1).as_secs_f64(),
                requests: sc.2,
            },
        );
        if p.index != sc.0 {
            *sc = (p.index, now - Duration::from_secs_f64(p.elapsed_s), 0);
            tracing::info!(
                phase = p.index,
                of = self.cfg.phases.len(),
                "mock scenario: next phase"
            );
        }
        sc.2 += 1;
        self.cfg.phases.get(p.index).map(|ph| ph.faults.clone())
    }

    /// Where the scenario is: phase index (== number of phases when over), requests in it.
    pub fn scenario_position(&self) -> (usize, u64) {
        let sc = lock(&self.scenario);
        (sc.0, sc.2)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, f: Faults) -> Result<(), String> {
        f.validate()?;
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = f;
        Ok(())
    }

    /// "Reauthorize" a client: it gets a new secret (returned; generated when `None`), the old
    /// one stops working, and every token issued to it is revoked.
    pub fn rotate_secret(
        &self,
        client_id: &str,
        new_secret: Option<String>,
    ) -> Result<String, String> {
        let secret = new_secret.unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
        {
            let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
            let client = clients
                .iter_mut()
                .find(|c| c.id == client_id && c.secret.is_some())
                .ok_or_else(|| format!("no client {client_id:?} with a secret"))?;
            client.secret = Some(SecretString::from(secret.clone()));
        }
        self.drop_tokens_of(client_id, "client reauthorized");
        Ok(secret)
    }

    /// Counts an accepted payload's users and request id.
    pub(crate) fn note_delivery(&self, payload: &Payload, request_id: Option<&str>) {
        let mut guard = lock(&self.seen);
        let seen = &mut *guard;
        for u in &payload.users {
            if count_seen(&mut seen.users, &u.aam_uuid, &mut seen.truncated) {
                seen.duplicate_users += 1;
            } else {
                seen.digest = seen.digest.wrapping_add(u.digest());
            }
        }
        if let Some(rid) = request_id {
            if count_seen(&mut seen.request_ids, rid, &mut seen.truncated) {
                seen.duplicate_request_ids += 1;
            }
        }
    }

    /// The journal, oldest first.
    pub fn journal(&self) -> Vec<JournalEntry> {
        lock(&self.journal).iter().cloned().collect()
    }

    /// Accepted payloads, oldest first (bounded by `payload_capacity`).
    pub fn received(&self) -> Vec<Received> {
        lock(&self.received).iter().cloned().collect()
    }

    /// Invalidates every issued token: the next publish with one gets 401.
    pub fn revoke_all_tokens(&self) -> usize {
        let mut t = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let n = t.len();
        t.clear();
        n
    }

    /// Forgets counters, journal, received payloads and duplicate tracking.
    pub fn reset(&self) {
        *lock(&self.stats) = MockStats::default();
        lock(&self.journal).clear();
        lock(&self.received).clear();
        *lock(&self.seen) = Seen::default();
    }

    /// Whether `value` is a token the mock issued, unexpired (for tests checking secrecy).
    pub fn issued_token_values(&self) -> Vec<String> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut MockStats)) {
        f(&mut lock(&self.stats));
    }

    pub(crate) fn keep_payload(&self, r: Received) {
        let mut q = lock(&self.received);
        if q.len() >= self.cfg.payload_capacity.max(1) {
            q.pop_front();
        }
        q.push_back(r);
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        seq: u64,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body_bytes: usize,
        status: StatusCode,
        verdict: &str,
        detail: &str,
    ) {
        let entry = JournalEntry {
            seq,
            at_ms: self.started.elapsed().as_millis() as u64,
            method: method.to_string(),
            path: path.to_string(),
            headers: redact_headers(headers),
            body_bytes,
            status: status.as_u16(),
            verdict: verdict.to_string(),
            detail: detail.to_string(),
        };
        let mut j = lock(&self.journal);
        if j.len() >= self.cfg.journal_capacity.max(1) {
            j.pop_front();
        }
        j.push_back(entry);
    }

    pub(crate) fn token_ttl(&self) -> Option<Duration> {
        self.cfg
            .token_ttl_secs
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
    }
}

/// Counts one more sighting of `key`; true if it was seen before.
/// Deliveries per `AAM_UUID`, from [`MockState::user_counts`].
pub struct UserCounts(HashMap<u64, u32, BuildIdentity>);

impl UserCounts {
    fn key(aam_uuid: &str) -> u64 {
        crate::payload::user_digest(aam_uuid, "", std::iter::empty())
    }
    /// How many times `aam_uuid` was accepted, if at all.
    pub fn get(&self, aam_uuid: &str) -> Option<&u32> {
        self.0.get(&Self::key(aam_uuid))
    }
    pub fn contains_key(&self, aam_uuid: &str) -> bool {
        self.0.contains_key(&Self::key(aam_uuid))
    }
    /// Distinct users.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Deliveries of each distinct user.
    pub fn values(&self) -> impl Iterator<Item = &u32> {
        self.0.values()
    }
}

/// Keys of the duplicate maps are already well-mixed 64-bit hashes: hashing them again is
/// wasted work.
#[derive(Default, Clone, Copy)]
struct BuildIdentity;

#[derive(Default)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl std::hash::BuildHasher for BuildIdentity {
    type Hasher = Identity;
    fn build_hasher(&self) -> Identity {
        Identity(0)
    }
}

fn count_seen(map: &mut HashMap<u64, u32, BuildIdentity>, key: &str, truncated: &mut bool) -> bool {
    let key = UserCounts::key(key);
    if let Some(n) = map.get_mut(&key) {
        *n += 1;
        return true;
    }
    if map.len() < MAX_TRACKED {
        map.insert(key, 1);
    } else {
        *truncated = true;
    }
    false
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Headers for the journal: `Authorization` shows only its scheme.
fn redact_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let value = if k == http::header::AUTHORIZATION || k == http::header::COOKIE {
                let s = v.to_str().unwrap_or("");
                format!("{} [redacted]", s.split(' ').next().unwrap_or(""))
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            (k.as_str().to_string(), value)
        })
        .collect()
}

/// A running mock partner.
pub struct MockPartner {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    pub state: Arc<MockState>,
    server: ServerHandle,
}

impl MockPartner {
    /// Binds, loads or creates the certificates, and serves.
    pub async fn start(cfg: MockConfig) -> Result<MockPartner, String> {
        let (tls, ca_file) = tls::load_or_create(&cfg.tls_dir, cfg.require_client_cert)
            .map_err(|e| e.to_string())?;
        let listener = crate::server::bind(cfg.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
        let state = Arc::new(MockState::new(cfg)?);
        let s = state.clone();
        let server = serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            move |req, _peer| route(s.clone(), req),
        );
        Ok(MockPartner {
            addr: server.addr,
            ca_file,
            state,
            server,
        })
    }

    /// `https://localhost:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn token_url(&self) -> String {
        self.url(&self.state.cfg.token_path)
    }

    pub fn publish_url(&self) -> String {
        self.url(&self.state.cfg.publish_path)
    }

    pub async fn shutdown(self) {
        self.server.shutdown(Duration::from_secs(5)).await;
    }
}

async fn route(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, CloseConnection> {
    if req.uri().path() == state.cfg.publish_path {
        if req.version() == http::Version::HTTP_2 {
            state.count(|s| s.publish_requests_http2 += 1);
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(body, state.cfg.max_body_bytes).await {
            Ok(b) => b,
            Err(r) => return Ok(r.map(MockBody::whole)),
        };
        return publish_with_faults(&state, &parts, &body).await;
    }
    Ok(route_other(state, req).await?.map(MockBody::whole))
}

/// Everything but the publish endpoint (whose answers may be shaped by faults).
async fn route_other(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let path = req.uri().path().to_string();
    if path == state.cfg.token_path {
        let faults = state.faults();
        if faults.token_latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.token_latency_ms)).await;
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(body, 64 * 1024).await {
            Ok(b) => b,
            Err(r) => return Ok(r),
        };
        if faults.token_down {
            return Ok(injected_token_outage(&state, &parts, &body));
        }
        return Ok(token::handle(&state, &parts, &body));
    }
    if path == state.cfg.introspect_path || path == state.cfg.revoke_path {
        let (parts, body) = req.into_parts();
        let body = match read_body(body, 64 * 1024).await {
            Ok(b) => b,
            Err(r) => return Ok(r),
        };
        return Ok(if path == state.cfg.introspect_path {
            token::introspect(&state, &parts, &body)
        } else {
            token::revoke(&state, &parts, &body)
        });
    }
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/_mock/stats") => json_response(
            StatusCode::OK,
            &serde_json::to_value(state.stats()).unwrap_or_default(),
        ),
        (&Method::GET, "/_mock/requests") => {
            let query = req.uri().query().unwrap_or("");
            match JournalFilter::parse(query) {
                Ok(f) => json_response(
                    StatusCode::OK,
                    &serde_json::to_value(f.apply(state.journal())).unwrap_or_default(),
                ),
                Err(e) => error_response(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::GET, "/_mock/received") => json_response(
            StatusCode::OK,
            &serde_json::to_value(state.received()).unwrap_or_default(),
        ),
        (&Method::GET, "/_mock/faults") => json_response(
            StatusCode::OK,
            &serde_json::to_value(state.faults()).unwrap_or_default(),
        ),
        (&Method::POST, "/_mock/faults") => {
            let body = match read_body(req.into_body(), 64 * 1024).await {
                Ok(b) => b,
                Err(r) => return Ok(r),
            };
            match serde_json::from_slice::<Faults>(&body)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    state.set_faults(f.clone())?;
                    Ok(f)
                }) {
                Ok(f) => {
                    json_response(StatusCode::OK, &serde_json::to_value(f).unwrap_or_default())
                }
                Err(e) => error_response(StatusCode::BAD_REQUEST, format!("faults: {e}")),
            }
        }
        (&Method::POST, "/_mock/reset") => {
            state.reset();
            json_response(StatusCode::OK, &serde_json::json!({"reset": true}))
        }
        (&Method::POST, "/_mock/revoke") => {
            let n = state.revoke_all_tokens();
            json_response(StatusCode::OK, &serde_json::json!({"revoked": n}))
        }
        (&Method::GET, "/_mock/") | (&Method::GET, "/_mock") => {
            // The inspector page: no build step, no external assets.
            let mut r = Response::new(Full::new(Bytes::from_static(include_bytes!("page.html"))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/_mock/scenario") => {
            let (phase, requests) = state.scenario_position();
            json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "phase": phase,
                    "phases": state.cfg.phases.len(),
                    "requests_in_phase": requests,
                }),
            )
        }
        (&Method::GET, "/_mock/audit") => json_response(
            StatusCode::OK,
            &serde_json::to_value(state.audit_journal()).unwrap_or_default(),
        ),
        (&Method::GET, "/_mock/clients") => {
            json_response(StatusCode::OK, &serde_json::json!(state.client_list()))
        }
        (&Method::POST, "/_mock/clients") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct NewClient {
                client_id: String,
                client_secret: Option<String>,
                #[serde(default)]
                scopes: Vec<String>,
                #[serde(default)]
                active: bool,
            }
            let body = match read_body(req.into_body(), 64 * 1024).await {
                Ok(b) => b,
                Err(r) => return Ok(r),
            };
            match serde_json::from_slice::<NewClient>(&body)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    state
                        .add_client(&c.client_id, c.client_secret, c.scopes, c.active)
                        .map(|s| (c.client_id, c.active, s))
                }) {
                // The secret is returned once, to the admin who created the client.
                Ok((id, active, secret)) => json_response(
                    StatusCode::CREATED,
                    &serde_json::json!({"client_id": id, "client_secret": secret, "active": active}),
                ),
                Err(e) => error_response(StatusCode::BAD_REQUEST, format!("clients: {e}")),
            }
        }
        (method, p) if p.starts_with("/_mock/clients/") => {
            let rest = &p["/_mock/clients/".len()..];
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            let id = percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned();
            let result = match (method, action) {
                (&Method::POST, "activate") => state
                    .set_client_active(&id, true)
                    .map(|_| serde_json::json!({"active": true})),
                (&Method::POST, "deactivate") => state
                    .set_client_active(&id, false)
                    .map(|_| serde_json::json!({"active": false})),
                (&Method::POST, "reauthorize") => state
                    .rotate_secret(&id, None)
                    .map(|s| serde_json::json!({"client_id": id, "client_secret": s})),
                (&Method::DELETE, "") => state
                    .delete_client(&id)
                    .map(|_| serde_json::json!({"deleted": id})),
                _ => Err(format!(
                    "unknown action {action:?}: use POST activate|deactivate|reauthorize or DELETE"
                )),
            };
            match result {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => error_response(StatusCode::NOT_FOUND, e),
            }
        }
        _ => error_response(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
    })
}

/// The publish endpoint with the faults in force applied first.
async fn publish_with_faults(
    state: &MockState,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<Response<MockBody>, CloseConnection> {
    let dribble = {
        let f = state.faults.read().unwrap_or_else(|e| e.into_inner());
        (f.dribble_ms > 0).then(|| Duration::from_millis(f.dribble_ms))
    };
    let action = match state.scenario_faults() {
        Some(phase) => phase.decide(fastrand::f64(), fastrand::f64(), fastrand::f64()),
        None => {
            let mut f = state.faults.write().unwrap_or_else(|e| e.into_inner());
            let action = f.decide(fastrand::f64(), fastrand::f64(), fastrand::f64());
            if matches!(action, Action::Fail { .. }) && f.fail_next > 0 {
                f.fail_next -= 1;
            }
            action
        }
    };
    match action {
        Action::Serve { delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let resp = publish::handle(state, parts, body);
            match dribble {
                None => Ok(resp.map(MockBody::whole)),
                Some(every) => {
                    let (head, full) = resp.into_parts();
                    let bytes = full
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    Ok(Response::from_parts(head, MockBody::dribble(bytes, every)))
                }
            }
        }
        Action::Truncate { delay } => {
            tokio::time::sleep(delay).await;
            // Handled for real (the payload counts as received), then the answer is cut.
            let (head, full) = publish::handle(state, parts, body).into_parts();
            state.count(|s| *s.injected.entry("truncated".into()).or_default() += 1);
            let bytes = full
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok(Response::from_parts(head, MockBody::truncated(bytes)))
        }
        Action::Close { delay } => {
            tokio::time::sleep(delay).await;
            // 499 in the journal: "closed before answering" (nginx's convention).
            let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            record_injected(state, parts, body, status, "closed", false);
            Err(CloseConnection)
        }
        Action::Fail {
            delay,
            status,
            retry_after,
        } => {
            tokio::time::sleep(delay).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            record_injected(
                state,
                parts,
                body,
                status,
                &format!("status_{}", status.as_u16()),
                false,
            );
            let mut r = error_response(status, "injected fault");
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            Ok(r.map(MockBody::whole))
        }
    }
}

/// Counts and journals an injected fault of kind `kind` (`closed`, `status_503`, `token_down`).
fn record_injected(
    state: &MockState,
    parts: &http::request::Parts,
    body: &Bytes,
    status: StatusCode,
    kind: &str,
    token: bool,
) {
    let seq = state.next_seq();
    state.count(|s| {
        if token {
            s.token_requests += 1;
        } else {
            s.publish_requests += 1;
        }
        *s.injected.entry(kind.to_string()).or_default() += 1;
    });
    let verdict = format!("injected_{kind}");
    state.record(
        seq,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        body.len(),
        status,
        &verdict,
        "fault injection",
    );
}

fn injected_token_outage(
    state: &MockState,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    record_injected(
        state,
        parts,
        body,
        StatusCode::SERVICE_UNAVAILABLE,
        "token_down",
        true,
    );
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"error": "temporarily_unavailable", "error_description": "injected fault"}),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {max} bytes"),
            ))
        }
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            format!("reading body: {e}"),
        )),
    }
}
