//! What the mock remembers of the traffic it saw, for the inspector page and for tests: the
//! request journal (every request, `Authorization` redacted, with its verdict), its filters,
//! the payloads accepted, and the token audit journal (never a token, only a short hash).

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use crate::payload::Payload;

/// The client's address, put in each request's extensions by the server loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub std::net::SocketAddr);

/// One request to journal: what came in, and how it was answered.
pub(crate) struct Record<'a> {
    pub seq: u64,
    pub request: &'a http::request::Parts,
    pub body_bytes: usize,
    pub status: StatusCode,
    /// `accepted` or the rejection reason.
    pub verdict: &'a str,
    pub detail: &'a str,
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
    /// The client's address and port (one per connection).
    #[serde(default)]
    pub peer: String,
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

/// Headers for the journal: `Authorization` shows only its scheme.
pub(super) fn redact_headers(headers: &HeaderMap) -> Vec<(String, String)> {
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
