//! The mock partner: the other side of the protocol, strict, over HTTPS.
//!
//! It serves the RFC 6749 token endpoint ([`token`]) and the segment publish endpoint
//! ([`publish`]) exactly as PROTOCOL.md describes a partner, checks everything IRIS must send,
//! and answers errors the way the RFCs say. It is a product for partners (run it, point a
//! test setup at it) and the counterpart of every integration test; it shares only the payload
//! types and the secret types with the daemon. Its state (clients, issued tokens, counters, a
//! bounded journal of requests) is in [`MockState`]; admin endpoints live under `/_mock/`.

mod admin_api;
pub mod body;
mod config;
pub mod faults;
mod journal;
pub mod publish;
mod state;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use self::body::MockBody;
use self::faults::Action;
use crate::server::{error_response, json_response, serve, CloseConnection, ServerHandle};
pub use config::{ClientSpec, MockConfig, MockSigning};
pub(crate) use journal::Record;
pub use journal::{token_hash, AuditEntry, JournalEntry, JournalFilter, Received};
pub(crate) use state::{Client, Issued};
pub use state::{MockState, MockStats, UserCounts};

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
            move |mut req, peer| {
                // The client's address and port: one per connection, so the journal shows
                // which requests shared a (kept-alive) connection.
                req.extensions_mut().insert(journal::Peer(peer));
                route(s.clone(), req)
            },
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
    Ok(admin_api::handle(&state, req).await)
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
    state.record(Record {
        seq,
        request: parts,
        body_bytes: body.len(),
        status,
        verdict: &verdict,
        detail: "fault injection",
    });
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

pub(super) async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Response<Full<Bytes>>> {
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
