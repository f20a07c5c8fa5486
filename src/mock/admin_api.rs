//! The mock's own admin API under `/_mock/`: counters, the request journal, received
//! payloads, faults, scenario position, the token audit journal, client lifecycle (add,
//! activate, deactivate, reauthorize, delete), revocation, reset, and the inspector page. One
//! handler per route.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::faults::Faults;
use super::journal::JournalFilter;
use super::read_body;
use super::state::MockState;
use crate::server::{error_response, json_response};

type Answer = Response<Full<Bytes>>;

/// Answers a request under `/_mock/` (or 404).
pub(super) async fn handle(state: &MockState, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/_mock/stats") => json(&state.stats()),
        (Method::GET, "/_mock/requests") => requests(state, req.uri().query().unwrap_or("")),
        (Method::GET, "/_mock/received") => json(&state.received()),
        (Method::GET, "/_mock/faults") => json(&state.faults()),
        (Method::POST, "/_mock/faults") => set_faults(state, req).await,
        (Method::POST, "/_mock/reset") => {
            state.reset();
            json_response(StatusCode::OK, &serde_json::json!({"reset": true}))
        }
        (Method::POST, "/_mock/revoke") => {
            let n = state.revoke_all_tokens();
            json_response(StatusCode::OK, &serde_json::json!({"revoked": n}))
        }
        (Method::GET, "/_mock/") | (Method::GET, "/_mock") => inspector_page(),
        (Method::GET, "/_mock/scenario") => scenario(state),
        (Method::GET, "/_mock/audit") => json(&state.audit_journal()),
        (Method::GET, "/_mock/clients") => json(&state.client_list()),
        (Method::POST, "/_mock/clients") => add_client(state, req).await,
        (method, p) if p.starts_with("/_mock/clients/") => {
            client_action(state, &method, &p["/_mock/clients/".len()..])
        }
        _ => error_response(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
    }
}

fn json(v: &impl serde::Serialize) -> Answer {
    json_response(StatusCode::OK, &serde_json::to_value(v).unwrap_or_default())
}

/// `GET /_mock/requests?verdict=..&path=..&method=..&status=..&limit=..`
fn requests(state: &MockState, query: &str) -> Answer {
    match JournalFilter::parse(query) {
        Ok(f) => json(&f.apply(state.journal())),
        Err(e) => error_response(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /_mock/faults` with the faults as JSON: they replace the ones in force.
async fn set_faults(state: &MockState, req: Request<Incoming>) -> Answer {
    let body = match read_body(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match serde_json::from_slice::<Faults>(&body)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            state.set_faults(f.clone())?;
            Ok(f)
        }) {
        Ok(f) => json(&f),
        Err(e) => error_response(StatusCode::BAD_REQUEST, format!("faults: {e}")),
    }
}

/// The inspector page: no build step, no external assets.
fn inspector_page() -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(include_bytes!("page.html"))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn scenario(state: &MockState) -> Answer {
    let (phase, requests) = state.scenario_position();
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "phase": phase,
            "phases": state.config().phases.len(),
            "requests_in_phase": requests,
        }),
    )
}

/// `POST /_mock/clients`: a new client, saved inactive unless `active`; its secret is
/// returned once, to the admin who created it.
async fn add_client(state: &MockState, req: Request<Incoming>) -> Answer {
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
        Err(r) => return r,
    };
    match serde_json::from_slice::<NewClient>(&body)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            state
                .add_client(&c.client_id, c.client_secret, c.scopes, c.active)
                .map(|s| (c.client_id, c.active, s))
        }) {
        Ok((id, active, secret)) => json_response(
            StatusCode::CREATED,
            &serde_json::json!({"client_id": id, "client_secret": secret, "active": active}),
        ),
        Err(e) => error_response(StatusCode::BAD_REQUEST, format!("clients: {e}")),
    }
}

/// `POST /_mock/clients/ID/{activate,deactivate,reauthorize}`, `DELETE /_mock/clients/ID`.
fn client_action(state: &MockState, method: &Method, rest: &str) -> Answer {
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
