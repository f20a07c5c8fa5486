//! Everything the mock knows while it runs: clients (with their lifecycle: added inactive,
//! activated, reauthorized, deleted), issued tokens, counters, the journals, duplicate
//! tracking of users and request ids, faults in force and the scenario's position.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{ClientSpec, MockConfig};
use super::faults::{self, Faults};
use super::journal::{redact_headers, token_hash, AuditEntry, JournalEntry, Received, Record};
use crate::payload::Payload;

/// Users and request ids tracked for duplicate counting, at most.
const MAX_TRACKED: usize = 10_000_000;

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
    pub(super) fn from_spec(spec: &ClientSpec) -> Result<Client, String> {
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

/// Everything the mock knows.
pub struct MockState {
    pub(super) cfg: MockConfig,
    started: Instant,
    pub(crate) clients: RwLock<Vec<Client>>,
    pub(crate) tokens: RwLock<HashMap<String, Issued>>,
    stats: Mutex<MockStats>,
    journal: Mutex<VecDeque<JournalEntry>>,
    received: Mutex<VecDeque<Received>>,
    seq: std::sync::atomic::AtomicU64,
    pub(super) faults: RwLock<Faults>,
    /// Scenario position: phase index, when it started, requests in it.
    scenario: Mutex<(usize, Instant, u64)>,
    seen: Mutex<Seen>,
    audit: Mutex<VecDeque<AuditEntry>>,
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
    pub(super) fn new(cfg: MockConfig) -> Result<Self, String> {
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
    pub(super) fn scenario_faults(&self) -> Option<Faults> {
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

    /// Journals one request and its answer (bounded: the oldest entry goes first).
    pub(crate) fn record(&self, r: Record<'_>) {
        let entry = JournalEntry {
            seq: r.seq,
            at_ms: self.started.elapsed().as_millis() as u64,
            method: r.request.method.to_string(),
            path: r.request.uri.path().to_string(),
            headers: redact_headers(&r.request.headers),
            peer: r
                .request
                .extensions
                .get::<super::journal::Peer>()
                .map(|p| p.0.to_string())
                .unwrap_or_default(),
            body_bytes: r.body_bytes,
            status: r.status.as_u16(),
            verdict: r.verdict.to_string(),
            detail: r.detail.to_string(),
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

/// Counts one more sighting of `key`; true if it was seen before.
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
