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

use super::{Client, Issued, MockState};
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
        let ok = match c {
            Client::Raw { basic, .. } => {
                bool::from(basic.expose_secret().as_bytes().ct_eq(creds.as_bytes()))
            }
            Client::IdSecret { id, secret, .. } => match &decoded {
                Some((rid, rsecret)) => {
                    let id_ok = id.as_bytes().ct_eq(rid.as_bytes());
                    let secret_ok = secret.expose_secret().as_bytes().ct_eq(rsecret.as_bytes());
                    bool::from(id_ok & secret_ok)
                }
                None => false,
            },
        };
        if ok && found.is_none() {
            found = Some(c);
        }
    }
    found.ok_or_else(|| unauthorized("unknown client or wrong secret"))
}

/// Checks a token request and returns the client and granted scopes.
fn check(
    state: &MockState,
    parts: &Parts,
    body: &[u8],
) -> Result<(String, Vec<String>), OAuthError> {
    let bad = |d: String| oauth_err(StatusCode::BAD_REQUEST, "invalid_request", d);
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
        .ok_or_else(|| bad("missing Content-Type".into()))?;
    content_type_ok(ct, state.config().strict_content_type).map_err(bad)?;
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
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let grant_type = param("grant_type").ok_or_else(|| bad("missing grant_type".into()))?;

    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            oauth_err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "no client authentication",
            )
        })?;
    let clients = state.clients.read().unwrap_or_else(|e| e.into_inner());
    let client = authenticate(&clients, authorization)?;

    if grant_type != "client_credentials" {
        return Err(oauth_err(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        ));
    }
    let requested: Vec<String> = param("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let allowed = client.scopes();
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
        allowed.to_vec()
    } else {
        requested
    };
    Ok((client.name().to_string(), granted))
}

/// A new random access token: 256 bits, base64url.
fn new_token() -> String {
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn accepts_gzip(parts: &Parts) -> bool {
    parts
        .headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut it = enc.split(';');
            let name = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            name.eq_ignore_ascii_case("gzip") && !q_zero
        })
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
    let (status, json, verdict, detail) = match result {
        Ok((client, scopes)) => {
            let token = new_token();
            let ttl = state.token_ttl();
            state
                .tokens
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    token.clone(),
                    Issued {
                        client: client.clone(),
                        scopes: scopes.clone(),
                        expires_at: ttl.map(|t| Instant::now() + t),
                    },
                );
            state.count(|s| s.tokens_issued += 1);
            let mut body = serde_json::json!({ "token_type": "Bearer", "access_token": token });
            if let Some(ttl) = ttl {
                body["expires_in"] = ttl.as_secs().into();
            }
            if !scopes.is_empty() {
                body["scope"] = scopes.join(" ").into();
            }
            (
                StatusCode::OK,
                body,
                "accepted".to_string(),
                format!("token issued to {client}"),
            )
        }
        Err(e) => {
            state.count(|s| *s.token_rejections.entry(e.code.to_string()).or_default() += 1);
            let body = serde_json::json!({ "error": e.code, "error_description": e.description });
            (e.status, body, e.code.to_string(), e.description.clone())
        }
    };
    state.record(
        seq,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        body.len(),
        status,
        &verdict,
        &detail,
    );

    let text = json.to_string();
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
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""))
                .expect("static"),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    r
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
        let clients = vec![Client::IdSecret {
            id: "id:1 é".into(),
            secret: secrecy::SecretString::from("p@ss+w%rd!".to_string()),
            scopes: vec![],
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
        assert!(!accepts_gzip(&parts("identity")));
    }
}
