//! The mock's segment publish endpoint: RFC 6750 bearer-token checks, `Content-Type`,
//! gzip decoding (bounded), and the strict IRIS payload parser.
//!
//! No credentials → 401 with `WWW-Authenticate: Bearer realm=...` and no error code (RFC 6750
//! §3.1); an unknown, expired or revoked token → 401 `error="invalid_token"`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

use super::{MockState, Received, Record};
use crate::payload::parse_payload;
use crate::server::json_response;
use crate::transport::{decode_body, DecodeError};

struct Rejection {
    status: StatusCode,
    reason: &'static str,
    detail: String,
    www_authenticate: Option<String>,
}

fn reject(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason,
        detail: detail.into(),
        www_authenticate: None,
    }
}

fn bearer_challenge(error: Option<(&str, &str)>) -> String {
    match error {
        None => "Bearer realm=\"irisd-mock\"".to_string(),
        Some((code, desc)) => {
            format!("Bearer realm=\"irisd-mock\", error=\"{code}\", error_description=\"{desc}\"")
        }
    }
}

/// Checks the bearer token; returns the client it was issued to.
fn check_token(state: &MockState, parts: &Parts) -> Result<String, Rejection> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = presented else {
        return Err(Rejection {
            www_authenticate: Some(bearer_challenge(None)),
            ..reject(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "no Bearer token in Authorization",
            )
        });
    };
    let invalid = |desc: &'static str| Rejection {
        www_authenticate: Some(bearer_challenge(Some(("invalid_token", desc)))),
        ..reject(StatusCode::UNAUTHORIZED, "invalid_token", desc)
    };
    let now = Instant::now();
    let interval = std::time::Duration::from_secs(state.config().validation_interval_secs);
    let mut tokens = state.tokens.write().unwrap_or_else(|e| e.into_inner());
    let Some(t) = tokens.get_mut(token) else {
        drop(tokens);
        state.audit(
            "?",
            "rejected",
            Some(token),
            "unknown or revoked token presented",
        );
        return Err(invalid("the access token is unknown or revoked"));
    };
    if t.expires_at.is_some_and(|e| now >= e) {
        let client = t.client.clone();
        drop(tokens);
        state.audit(&client, "rejected", Some(token), "expired token presented");
        return Err(invalid("the access token expired"));
    }
    // Validation results are cached for `validation_interval_secs` (IMS re-checks tokens older
    // than 10 minutes): a revocation takes effect at the next check.
    if now.duration_since(t.validated_at) >= interval {
        let client_ok = state
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c.id == t.client && c.active);
        let client = t.client.clone();
        if t.revoked || !client_ok {
            tokens.remove(token);
            drop(tokens);
            let why = if client_ok {
                "revoked"
            } else {
                "client inactive or deleted"
            };
            state.audit(&client, "invalidated", Some(token), why);
            return Err(invalid("the access token was revoked"));
        }
        t.validated_at = now;
        state.audit(&client, "validated", Some(token), "");
    }
    let t = &*t;
    match &state.config().publish_scope {
        Some(scope) if !t.scopes.contains(scope) => Err(Rejection {
            www_authenticate: Some(bearer_challenge(Some((
                "insufficient_scope",
                "the token lacks the publish scope",
            )))),
            ..reject(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("the token lacks scope {scope:?}"),
            )
        }),
        _ => Ok(t.client.clone()),
    }
}

/// What an accepted publish request carried.
struct Accepted {
    client: String,
    users: usize,
    segments: usize,
    payload: crate::payload::Payload,
}

fn check(state: &MockState, parts: &Parts, body: &[u8]) -> Result<Accepted, Rejection> {
    if !matches!(parts.method, Method::GET | Method::POST | Method::PUT) {
        return Err(reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET, POST or PUT",
        ));
    }
    let client = check_token(state, parts)?;
    if let Some(sg) = &state.config().signing {
        let given = parts
            .headers
            .get(sg.header.as_str())
            .and_then(|v| v.to_str().ok());
        let Some(given) = given else {
            return Err(reject(
                StatusCode::FORBIDDEN,
                "missing_signature",
                format!("no {} header", sg.header),
            ));
        };
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let data = crate::signing::signed_data(&parts.method, pq, body);
        let keys: Vec<&[u8]> = sg.keys.iter().map(|k| k.as_bytes()).collect();
        if !crate::signing::verify(sg.algorithm, &keys, data, given) {
            return Err(reject(
                StatusCode::FORBIDDEN,
                "bad_signature",
                format!(
                    "{} does not match the request under any active key",
                    sg.header
                ),
            ));
        }
    }
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "wrong_content_type",
            format!("Content-Type must be application/json, got {ct:?}"),
        ));
    }
    let decoded =
        decode_body(&parts.headers, body, state.config().max_body_bytes).map_err(|e| match e {
            DecodeError::UnsupportedEncoding(_) => reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                e.to_string(),
            ),
            DecodeError::TooLarge(_) => {
                reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            DecodeError::Gzip(_) => reject(StatusCode::BAD_REQUEST, "bad_gzip", e.to_string()),
        })?;
    let payload = parse_payload(&decoded, state.config().max_users)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.reason, e.detail))?;
    let users = payload.users.len();
    let segments = payload.users.iter().map(|u| u.segments.len()).sum();
    Ok(Accepted {
        client,
        users,
        segments,
        payload,
    })
}

/// Handles one publish request.
pub fn handle(state: &MockState, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let seq = state.next_seq();
    state.count(|s| s.publish_requests += 1);
    match check(state, parts, body) {
        Ok(Accepted {
            client,
            users,
            segments,
            payload,
        }) => {
            state.count(|s| {
                s.publish_accepted += 1;
                s.users_accepted += users as u64;
                s.segments_accepted += segments as u64;
            });
            let detail = format!("{users} users, {segments} segments, token of {client}");
            state.record(Record {
                seq,
                request: parts,
                body_bytes: body.len(),
                status: StatusCode::OK,
                verdict: "accepted",
                detail: &detail,
            });
            let request_id = parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            state.note_delivery(&payload, request_id.as_deref());
            state.keep_payload(Received {
                seq,
                method: parts.method.to_string(),
                request_id,
                payload,
            });
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "status": "ok", "users": users }),
            )
        }
        Err(r) => {
            state.count(|s| {
                *s.publish_rejections
                    .entry(r.reason.to_string())
                    .or_default() += 1
            });
            state.record(Record {
                seq,
                request: parts,
                body_bytes: body.len(),
                status: r.status,
                verdict: r.reason,
                detail: &r.detail,
            });
            let mut resp = json_response(
                r.status,
                &serde_json::json!({ "error": r.reason, "error_description": r.detail }),
            );
            if let Some(challenge) = r.www_authenticate {
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            if r.status == StatusCode::METHOD_NOT_ALLOWED {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT"));
            }
            resp
        }
    }
}
