//! The mock's token endpoint: RFC 6749 §4.4 client-credentials grant with client
//! authentication per §2.3.1, errors per §5.2, `Cache-Control: no-store` on every answer.
//!
//! Checks, in order: method (`POST`, else 405); `Content-Type` (the form media type, charset
//! UTF-8 or none, any case and spacing; the exact IRIS string in strict mode); the form body
//! (no repeated parameters, `grant_type` present); client authentication (HTTP Basic, compared
//! in constant time); `grant_type=client_credentials`; `scope` against the client's scopes.

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::{Client, Issued, MockState, Record};
use crate::oauth::client::TOKEN_CONTENT_TYPE;

const REALM: &str = "irisd-mock";

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
}

fn oauth_err(status: StatusCode, code: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status,
        code,
        description: description.into(),
    }
}

/// Is `value` the form media type with charset UTF-8 or no charset?
pub fn content_type_ok(value: &str, strict: bool) -> Result<(), String> {
    if strict {
        return if value == TOKEN_CONTENT_TYPE {
            Ok(())
        } else {
            Err(format!(
                "Content-Type must be exactly {TOKEN_CONTENT_TYPE:?} (strict mode), got {value:?}"
            ))
        };
    }
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(format!(
            "Content-Type must be application/x-www-form-urlencoded, got {value:?}"
        ));
    }
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        if k.trim().eq_ignore_ascii_case("charset") {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") {
                return Err(format!("charset must be UTF-8, got {v:?}"));
            }
        }
    }
    Ok(())
}

/// Decodes an `application/x-www-form-urlencoded` component (RFC 6749 Appendix B); `None`
/// for a malformed escape (`%` not followed by two hex digits) or invalid UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
            return None;
        }
    }
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Finds the client whose credentials are in `authorization` (the whole header value).
fn authenticate<'c>(clients: &'c [Client], authorization: &str) -> Result<&'c Client, OAuthError> {
    let unauthorized = |d: &str| oauth_err(StatusCode::UNAUTHORIZED, "invalid_client", d);
    let (scheme, creds) = authorization
        .trim()
        .split_once(' ')
        .unwrap_or((authorization, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized("client authentication must use HTTP Basic"));
    }
    let creds = creds.trim();
    // Decoded id:secret, when the value is RFC 6749 §2.3.1 form.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(creds)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            Some((form_decode(id)?, form_decode(secret)?))
        });
    let mut found = None;
    // Every client is compared (no early exit) so timing does not tell which part matched.
    for c in clients {
        let raw_ok = c
            .basic
            .as_ref()
            .is_some_and(|b| bool::from(b.expose_secret().as_bytes().ct_eq(creds.as_bytes())));
        let pair_ok = match (&decoded, &c.secret) {
            (Some((id, secret)), Some(s)) => id_secret_match(c, s, id, secret),
            _ => false,
        };
        if (raw_ok || pair_ok) && found.is_none() {
            found = Some(c);
        }
    }
    found.ok_or_else(|| unauthorized("unknown client or wrong secret"))
}

fn id_secret_match(c: &Client, secret: &secrecy::SecretString, id: &str, given: &str) -> bool {
    let id_ok = c.id.as_bytes().ct_eq(id.as_bytes());
    let secret_ok = secret.expose_secret().as_bytes().ct_eq(given.as_bytes());
    bool::from(id_ok & secret_ok)
}

/// Parses a form body strictly: valid escapes, UTF-8, no repeated parameter.
fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let bad = |d: String| oauth_err(StatusCode::BAD_REQUEST, "invalid_request", d);
    let body = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8".into()))?;
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = form_decode(k).ok_or_else(|| bad("body is not valid form encoding".into()))?;
        let v = form_decode(v).ok_or_else(|| bad("body is not valid form encoding".into()))?;
        if params.iter().any(|(pk, _)| *pk == k) {
            return Err(bad(format!("parameter {k:?} is repeated")));
        }
        params.push((k, v));
    }
    Ok(params)
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The authenticated client's id and scopes, and the request's form parameters.
type Authenticated = (String, Vec<String>, Vec<(String, String)>);

/// Content type, form, and client authentication (Basic, or the body when enabled): what the
/// token, introspection and revocation endpoints all check first. Returns the client's id and
/// scopes, and the form.
fn authenticate_request(
    state: &MockState,
    parts: &Parts,
    body: &[u8],
) -> Result<Authenticated, OAuthError> {
    let bad = |d: String| oauth_err(StatusCode::BAD_REQUEST, "invalid_request", d);
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
        .ok_or_else(|| bad("missing Content-Type".into()))?;
    content_type_ok(ct, state.config().strict_content_type).map_err(bad)?;
    let params = parse_form(body)?;
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let body_id = param(&params, "client_id");
    let body_secret = param(&params, "client_secret");
    let clients = state.clients.read().unwrap_or_else(|e| e.into_inner());
    let client = match (authorization, body_secret) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "more than one client authentication method (Basic and client_secret in the body); RFC 6749 §2.3 allows one".into(),
            ))
        }
        (Some(a), None) => authenticate(&clients, a)?,
        (None, Some(secret)) => {
            if !state.config().allow_body_credentials {
                return Err(oauth_err(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client credentials in the body are not accepted here; use HTTP Basic",
                ));
            }
            let id = body_id.ok_or_else(|| bad("client_secret without client_id".into()))?;
            let mut found = None;
            for c in clients.iter() {
                let ok = c.secret.as_ref().is_some_and(|s| id_secret_match(c, s, id, secret));
                if ok && found.is_none() {
                    found = Some(c);
                }
            }
            found.ok_or_else(|| oauth_err(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client or wrong secret"))?
        }
        (None, None) => {
            return Err(oauth_err(StatusCode::UNAUTHORIZED, "invalid_client", "no client authentication"))
        }
    };
    if !client.active {
        return Err(oauth_err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the client is inactive",
        ));
    }
    Ok((client.id.clone(), client.scopes.clone(), params))
}

/// Checks a token request and returns the client and granted scopes.
fn check(
    state: &MockState,
    parts: &Parts,
    body: &[u8],
) -> Result<(String, Vec<String>), OAuthError> {
    let bad = |d: String| oauth_err(StatusCode::BAD_REQUEST, "invalid_request", d);
    // The form's own errors come before client authentication (so a malformed request is
    // invalid_request even with bad credentials).
    let params = parse_form(body).and_then(|p| {
        param(&p, "grant_type")
            .map(|_| ())
            .ok_or_else(|| bad("missing grant_type".into()))
    });
    if let Err(e) = params {
        let ct_ok = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| content_type_ok(ct, state.config().strict_content_type).is_ok());
        if ct_ok {
            return Err(e);
        }
    }
    let (client, allowed, params) = authenticate_request(state, parts, body)?;
    let grant_type = param(&params, "grant_type").unwrap_or_default();
    if grant_type != "client_credentials" {
        return Err(oauth_err(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        ));
    }
    let requested: Vec<String> = param(&params, "scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !allowed.is_empty() {
        if let Some(s) = requested.iter().find(|s| !allowed.contains(s)) {
            return Err(oauth_err(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("scope {s:?} is not granted to this client"),
            ));
        }
    }
    let granted = if requested.is_empty() {
        allowed
    } else {
        requested
    };
    Ok((client, granted))
}

/// A JSON answer with `Cache-Control: no-store` and `Pragma: no-cache` (every token-related
/// answer carries them, errors included),
/// gzip-encoded when the client accepts it.
fn no_store_json(
    parts: &Parts,
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<Full<Bytes>> {
    let text = value.to_string();
    let gzip = accepts_gzip(parts);
    let body = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).expect("writing to a Vec");
        Bytes::from(enc.finish().expect("writing to a Vec"))
    } else {
        Bytes::from(text)
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn oauth_error_response(parts: &Parts, e: &OAuthError) -> Response<Full<Bytes>> {
    let mut r = no_store_json(
        parts,
        e.status,
        &serde_json::json!({ "error": e.code, "error_description": e.description }),
    );
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""))
                .expect("static"),
        );
    }
    if e.status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    r
}

/// What introspection and revocation both check first: `POST`, client authentication, a
/// `token` parameter. Returns the calling client and the token.
fn token_operation(
    state: &MockState,
    parts: &Parts,
    body: &[u8],
) -> Result<(String, String), Box<Response<Full<Bytes>>>> {
    let fail = |e: OAuthError| Box::new(oauth_error_response(parts, &e));
    if parts.method != Method::POST {
        return Err(fail(oauth_err(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "POST only",
        )));
    }
    let (caller, _, params) = authenticate_request(state, parts, body).map_err(fail)?;
    let token = param(&params, "token").ok_or_else(|| {
        fail(oauth_err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing token",
        ))
    })?;
    Ok((caller, token.to_string()))
}

/// RFC 7662 token introspection: `{"active": false}` for anything not currently valid.
pub fn introspect(state: &MockState, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let (caller, token) = match token_operation(state, parts, body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let token = token.as_str();
    let now = Instant::now();
    let tokens = state.tokens.read().unwrap_or_else(|e| e.into_inner());
    let answer = match tokens.get(token) {
        Some(t) if !t.revoked && t.expires_at.is_none_or(|e| now < e) => {
            let unix = jiff::Timestamp::now().as_second();
            let mut v = serde_json::json!({
                "active": true,
                "client_id": t.client,
                "token_type": "Bearer",
                "iat": unix - now.duration_since(t.issued_at).as_secs() as i64,
            });
            if !t.scopes.is_empty() {
                v["scope"] = t.scopes.join(" ").into();
            }
            if let Some(e) = t.expires_at {
                v["exp"] = (unix + e.duration_since(now).as_secs() as i64).into();
            }
            v
        }
        _ => serde_json::json!({ "active": false }),
    };
    drop(tokens);
    state.audit(
        &caller,
        "introspected",
        Some(token),
        &answer["active"].to_string(),
    );
    no_store_json(parts, StatusCode::OK, &answer)
}

/// RFC 7009 token revocation: 200 whether or not the token is known. The publish endpoint
/// refuses a revoked token from its next validation on (`validation_interval_secs`).
pub fn revoke(state: &MockState, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let (caller, token) = match token_operation(state, parts, body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let token = token.as_str();
    let mut tokens = state.tokens.write().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = tokens.get_mut(token) {
        if t.client != caller {
            return oauth_error_response(
                parts,
                &oauth_err(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "the token was issued to another client",
                ),
            );
        }
        t.revoked = true;
        drop(tokens);
        state.audit(&caller, "revoked", Some(token), "RFC 7009 revocation");
    }
    no_store_json(parts, StatusCode::OK, &serde_json::json!({}))
}

/// A new random access token: 256 bits, base64url.
fn new_token() -> String {
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Whether `Accept-Encoding` takes gzip (RFC 9110 §12.5.3): listed (or `x-gzip`, its alias)
/// with a weight above 0, or not listed and `*` is; the `q` parameter's name is
/// case-insensitive (§12.4.2), so `gzip;Q=0` refuses it.
fn accepts_gzip(parts: &Parts) -> bool {
    let (mut gzip, mut any) = (None, None);
    for enc in parts
        .headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut it = enc.split(';');
        let name = it.next().unwrap_or("").trim();
        let weight = it
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().unwrap_or(0.0))
            })
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight);
        } else if name == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// Handles one token request.
pub fn handle(state: &MockState, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let seq = state.next_seq();
    state.count(|s| s.token_requests += 1);
    let result = if parts.method != Method::POST {
        Err(oauth_err(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint takes POST only",
        ))
    } else {
        check(state, parts, body)
    };
    let (response, verdict, detail) = match result {
        Ok((client, scopes)) => {
            let token = new_token();
            let ttl = state.token_ttl();
            let now = Instant::now();
            state
                .tokens
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    token.clone(),
                    Issued {
                        client: client.clone(),
                        scopes: scopes.clone(),
                        issued_at: now,
                        expires_at: ttl.map(|t| now + t),
                        revoked: false,
                        validated_at: now,
                    },
                );
            state.audit(&client, "issued", Some(&token), "");
            state.count(|s| s.tokens_issued += 1);
            let mut body = serde_json::json!({ "token_type": "Bearer", "access_token": token });
            if let Some(ttl) = ttl {
                body["expires_in"] = ttl.as_secs().into();
            }
            if !scopes.is_empty() {
                body["scope"] = scopes.join(" ").into();
            }
            (
                no_store_json(parts, StatusCode::OK, &body),
                "accepted".to_string(),
                format!("token issued to {client}"),
            )
        }
        Err(e) => {
            state.count(|s| *s.token_rejections.entry(e.code.to_string()).or_default() += 1);
            state.audit(
                "?",
                "rejected",
                None,
                &format!("{}: {}", e.code, e.description),
            );
            (
                oauth_error_response(parts, &e),
                e.code.to_string(),
                e.description.clone(),
            )
        }
    };
    state.record(Record {
        seq,
        request: parts,
        body_bytes: body.len(),
        status: response.status(),
        verdict: &verdict,
        detail: &detail,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_is_parsed_not_compared() {
        for ok in [
            "application/x-www-form-urlencoded;charset=UTF-8",
            "application/x-www-form-urlencoded ;charset=UTF-8",
            "Application/X-WWW-Form-Urlencoded; Charset=\"utf-8\"",
            "application/x-www-form-urlencoded",
        ] {
            assert!(content_type_ok(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "application/json",
            "application/x-www-form-urlencoded; charset=ISO-8859-1",
            "",
        ] {
            assert!(content_type_ok(bad, false).is_err(), "{bad}");
        }
        assert!(content_type_ok("application/x-www-form-urlencoded", true).is_err());
        assert!(content_type_ok(TOKEN_CONTENT_TYPE, true).is_ok());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let clients = vec![Client {
            id: "id:1 é".into(),
            secret: Some(secrecy::SecretString::from("p@ss+w%rd!".to_string())),
            basic: None,
            scopes: vec![],
            active: true,
        }];
        let creds = crate::oauth::Credentials::ClientSecret {
            client_id: "id:1 é".into(),
            secret: secrecy::SecretString::from("p@ss+w%rd!".to_string()),
        };
        let header = creds.authorization();
        assert!(authenticate(&clients, header.to_str().unwrap()).is_ok());
        let wrong = crate::oauth::Credentials::ClientSecret {
            client_id: "id:1 é".into(),
            secret: secrecy::SecretString::from("p@ss+w%rd?".to_string()),
        };
        let e = authenticate(&clients, wrong.authorization().to_str().unwrap())
            .err()
            .unwrap();
        assert_eq!(e.code, "invalid_client");
    }

    #[test]
    fn gzip_acceptance_honours_q_zero() {
        let parts = |v: &str| {
            let (p, _) = http::Request::builder()
                .header("accept-encoding", v)
                .body(())
                .unwrap()
                .into_parts();
            p
        };
        assert!(accepts_gzip(&parts("gzip")));
        assert!(accepts_gzip(&parts("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(&parts("gzip;q=0")));
        assert!(
            !accepts_gzip(&parts("gzip;Q=0")),
            "the q is case-insensitive"
        );
        assert!(!accepts_gzip(&parts("gzip ; q = 0.000")));
        assert!(accepts_gzip(&parts("x-gzip")));
        assert!(accepts_gzip(&parts("*")));
        assert!(!accepts_gzip(&parts("*;q=0")));
        assert!(
            !accepts_gzip(&parts("gzip;q=0, *;q=1")),
            "gzip's own weight wins"
        );
        assert!(!accepts_gzip(&parts("identity")));
    }
}
