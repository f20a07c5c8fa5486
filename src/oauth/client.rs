//! The token request (RFC 6749 §4.4.2) exactly as IRIS sends it, and the handling of the
//! token response (§5.1) and error response (§5.2).
//!
//! Building the request and parsing the response are pure functions, unit-tested without
//! sockets; [`TokenClient::fetch`] only glues them to the transport. Errors carry evidence (the
//! status, the partner's `error` code and description, a bounded snippet of an unexpected body)
//! but never a credential or a token: a success body is never quoted, and a snippet of an error
//! body has our own credentials scrubbed from it in case a partner echoes them.

use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT,
};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};

use super::Credentials;
use crate::transport::{decode_body, DecodeError, HttpClient, TransportError};

/// The `Content-Type` IRIS sends on token requests, byte for byte.
pub const TOKEN_CONTENT_TYPE: &str = "application/x-www-form-urlencoded;charset=UTF-8";

/// Largest token response we read or inflate. Real ones are a few hundred bytes.
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Longest access token we accept (it goes into every publish request's header).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why no token was obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("{}", transport_message(.0))]
    Transport(#[from] TransportError),
    /// RFC 6749 §5.2 error response.
    #[error("token endpoint answered {status} {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected {
        status: u16,
        /// The RFC 6749 `error` code, e.g. `invalid_client`.
        error: String,
        description: Option<String>,
    },
    /// A status that is neither 200 nor an RFC 6749 error.
    #[error("token endpoint answered {status}{}: {snippet:?}", if (300..400).contains(status) { " (redirects are not followed for token requests)" } else { "" })]
    UnexpectedStatus { status: u16, snippet: String },
    /// A 200 whose body is not a usable token response (the body is never quoted: it may hold a token).
    #[error("malformed token response: {0}")]
    Malformed(String),
    #[error("token endpoint issued token_type {0:?}; only Bearer is supported")]
    UnsupportedTokenType(String),
    #[error("token response: {0}")]
    Decode(#[from] DecodeError),
    /// Earlier fetches failed; the next attempt waits so a broken endpoint is not hammered.
    #[error("token endpoint backing off for {retry_in:?} after: {last}")]
    BackingOff { retry_in: Duration, last: String },
}

/// What happened on the way to the token endpoint, named as it happened: an answer that was
/// too large came from an endpoint that was reached.
fn transport_message(e: &TransportError) -> String {
    match e {
        TransportError::Io(cause) => format!("token endpoint unreachable: {cause}"),
        TransportError::Timeout(d) => format!("token endpoint did not answer within {d:?}"),
        TransportError::TooLarge(max) => format!(
            "the token endpoint's answer is larger than {max} bytes, more than a token response can be; it was not read"
        ),
    }
}

impl TokenError {
    /// A short label for metrics (`ok`, `invalid_client`, `transport`, ...).
    pub fn label(&self) -> String {
        match self {
            TokenError::Transport(TransportError::Timeout(_)) => "timeout".into(),
            TokenError::Transport(TransportError::TooLarge(_)) => "too_large".into(),
            TokenError::Transport(_) => "transport".into(),
            TokenError::Rejected { error, .. } => sanitize_label(error),
            TokenError::UnexpectedStatus { status, .. } => format!("http_{status}"),
            TokenError::Malformed(_) | TokenError::Decode(_) => "malformed".into(),
            TokenError::UnsupportedTokenType(_) => "unsupported_token_type".into(),
            TokenError::BackingOff { .. } => "backing_off".into(),
        }
    }
}

fn sanitize_label(s: &str) -> String {
    let l: String = s
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if l.is_empty() {
        "unknown".into()
    } else {
        l
    }
}

/// A successfully parsed token response.
pub struct TokenResponse {
    pub access_token: SecretString,
    /// `expires_in`, when present and positive.
    pub expires_in: Option<Duration>,
}

/// Builds the token request: `POST`, headers in IRIS's order, body
/// `grant_type=client_credentials` (plus `&scope=...` when configured).
pub fn token_request(
    url: &Uri,
    credentials: &Credentials,
    scope: Option<&str>,
    user_agent: &HeaderValue,
) -> Request<Full<Bytes>> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if let Some(scope) = scope {
        form.append_pair("scope", scope);
    }
    let body = Bytes::from(form.finish());
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = url.clone();
    let h = req.headers_mut();
    // Insertion order is wire order: the same as the request IRIS sends.
    h.insert(HOST, host_header(url));
    h.insert(USER_AGENT, user_agent.clone());
    h.insert(AUTHORIZATION, credentials.authorization());
    h.insert(CONTENT_TYPE, HeaderValue::from_static(TOKEN_CONTENT_TYPE));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    req
}

/// `Host` from the URL's authority (without userinfo).
pub fn host_header(url: &Uri) -> HeaderValue {
    let authority = url.authority().map(|a| a.as_str()).unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// Interprets a token endpoint response. `scrub` lists secret strings that must not appear in
/// error evidence.
pub fn parse_token_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    scrub: &[&str],
) -> Result<TokenResponse, TokenError> {
    let body = decode_body(headers, body, MAX_TOKEN_RESPONSE)?;
    if status != StatusCode::OK {
        return Err(error_response(status, &body, scrub));
    }
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        TokenError::Malformed(format!(
            "not JSON (at line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| TokenError::Malformed("not a JSON object".into()))?;
    let token_type = match obj.get("token_type") {
        Some(serde_json::Value::String(t)) => t,
        Some(_) => return Err(TokenError::Malformed("token_type is not a string".into())),
        None => return Err(TokenError::Malformed("no token_type".into())),
    };
    // RFC 6749 §5.1: the token type value is case insensitive.
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::UnsupportedTokenType(
            token_type.chars().take(40).collect(),
        ));
    }
    let access_token = match obj.get("access_token") {
        Some(serde_json::Value::String(t)) => t,
        Some(_) => return Err(TokenError::Malformed("access_token is not a string".into())),
        None => return Err(TokenError::Malformed("no access_token".into())),
    };
    if access_token.is_empty() || access_token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "access_token is {} bytes long (1 to {MAX_TOKEN_LEN} accepted)",
            access_token.len()
        )));
    }
    if !access_token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(TokenError::Malformed(
            "access_token has characters that cannot go into an Authorization header".into(),
        ));
    }
    let expires_in = match obj.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        // Some servers send the number as a string; accept both.
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => Some(
            s.trim()
                .parse::<f64>()
                .map_err(|_| TokenError::Malformed("expires_in is not a number".into()))?,
        ),
        Some(_) => return Err(TokenError::Malformed("expires_in is not a number".into())),
    };
    // A lifetime under one second would make every request fetch a token; treat it as unknown
    // and rely on the partner's 401 instead.
    let expires_in = expires_in
        .filter(|s| s.is_finite() && *s >= 1.0)
        .map(|s| Duration::from_secs_f64(s.min(10.0 * 365.0 * 86400.0)));
    Ok(TokenResponse {
        access_token: SecretString::from(access_token.clone()),
        expires_in,
    })
}

fn error_response(status: StatusCode, body: &[u8], scrub: &[&str]) -> TokenError {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: String,
        error_description: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<OAuthError>(body) {
        return TokenError::Rejected {
            status: status.as_u16(),
            error: scrub_text(&e.error.chars().take(64).collect::<String>(), scrub),
            description: e
                .error_description
                .map(|d| scrub_text(&d.chars().take(200).collect::<String>(), scrub)),
        };
    }
    TokenError::UnexpectedStatus {
        status: status.as_u16(),
        snippet: snippet(body, scrub),
    }
}

/// The first bytes of a body as printable text, with secrets removed.
pub fn snippet(body: &[u8], scrub: &[&str]) -> String {
    let text: String = String::from_utf8_lossy(&body[..body.len().min(256)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    scrub_text(&text, scrub)
}

fn scrub_text(text: &str, scrub: &[&str]) -> String {
    let mut out = text.to_string();
    for s in scrub.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "***");
    }
    out
}

/// Fetches tokens for one destination.
pub struct TokenClient {
    http: HttpClient,
    url: Uri,
    credentials: Credentials,
    scope: Option<String>,
    user_agent: HeaderValue,
    timeout: Duration,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    pub fn new(
        http: HttpClient,
        url: Uri,
        credentials: Credentials,
        scope: Option<String>,
        user_agent: HeaderValue,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url,
            credentials,
            scope,
            user_agent,
            timeout,
        }
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// One token request, one response.
    pub async fn fetch(&self) -> Result<TokenResponse, TokenError> {
        let req = token_request(
            &self.url,
            &self.credentials,
            self.scope.as_deref(),
            &self.user_agent,
        );
        let resp = self
            .http
            .send(req, self.timeout, MAX_TOKEN_RESPONSE)
            .await?;
        let auth = self.credentials.authorization();
        let auth = auth.to_str().unwrap_or("");
        let b64 = auth.strip_prefix("Basic ").unwrap_or("");
        let secret = match &self.credentials {
            Credentials::ClientSecret { secret, .. } => secret.expose_secret(),
            Credentials::Basic(v) => v.expose_secret(),
        };
        parse_token_response(resp.status, &resp.headers, &resp.body, &[b64, secret])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ok(body: &str) -> Result<TokenResponse, TokenError> {
        parse_token_response(StatusCode::OK, &HeaderMap::new(), body.as_bytes(), &[])
    }

    #[test]
    fn request_is_the_one_iris_sends() {
        let creds = Credentials::Basic(SecretString::from("zq2LOO1C".to_string()));
        let url: Uri = "https://api.partner.com/oauth2/token".parse().unwrap();
        let req = token_request(
            &url,
            &creds,
            None,
            &HeaderValue::from_static(crate::config::IRIS_USER_AGENT),
        );
        assert_eq!(req.method(), Method::POST);
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "user-agent",
                "authorization",
                "content-type",
                "content-length",
                "accept-encoding"
            ]
        );
        assert_eq!(req.headers()[HOST], "api.partner.com");
        assert_eq!(req.headers()[AUTHORIZATION], "Basic zq2LOO1C");
        assert_eq!(
            req.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded;charset=UTF-8"
        );
        assert_eq!(req.headers()[CONTENT_LENGTH], "29");
        use http_body_util::BodyExt;
        let body = futures_body(req.into_body());
        assert_eq!(body, "grant_type=client_credentials");
        let _ = BodyExt::boxed(Full::new(Bytes::new()));
    }

    fn futures_body(b: Full<Bytes>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(b.collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn scope_is_form_encoded() {
        let creds = Credentials::Basic(SecretString::from("x".to_string()));
        let url: Uri = "https://h/t".parse().unwrap();
        let req = token_request(
            &url,
            &creds,
            Some("segments write"),
            &HeaderValue::from_static("ua"),
        );
        assert_eq!(
            futures_body(req.into_body()),
            "grant_type=client_credentials&scope=segments+write"
        );
    }

    #[test]
    fn token_type_is_case_insensitive_and_expires_in_optional() {
        let t = ok(r#"{"token_type":"bearer","access_token":"abc"}"#).unwrap();
        assert_eq!(t.access_token.expose_secret(), "abc");
        assert!(t.expires_in.is_none());
        let t = ok(r#"{"token_type":"BEARER","access_token":"abc","expires_in":3600}"#).unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        let t = ok(r#"{"token_type":"Bearer","access_token":"abc","expires_in":"60"}"#).unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
    }

    #[test]
    fn non_bearer_and_malformed_are_errors_without_the_token() {
        assert!(matches!(
            ok(r#"{"token_type":"mac","access_token":"abc"}"#),
            Err(TokenError::UnsupportedTokenType(t)) if t == "mac"
        ));
        let e = ok(r#"{"token_type":"Bearer","access_token":12345678}"#)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("12345678"), "{e}");
        let e = ok(r#"{"token_type":"Bearer","access_token":"sec ret"}"#)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("sec ret"), "{e}");
        assert!(matches!(ok("<html>"), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn gzip_response_is_decoded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(br#"{"token_type":"Bearer","access_token":"zzz"}"#)
            .unwrap();
        let gz = enc.finish().unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        let t = parse_token_response(StatusCode::OK, &h, &gz, &[]).unwrap();
        assert_eq!(t.access_token.expose_secret(), "zzz");
    }

    #[test]
    fn rfc6749_errors_keep_the_code_and_scrub_secrets() {
        let e = parse_token_response(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            br#"{"error":"invalid_client","error_description":"bad secret hunter2"}"#,
            &["hunter2"],
        )
        .err()
        .unwrap();
        assert_eq!(e.label(), "invalid_client");
        let msg = e.to_string();
        assert!(
            msg.contains("401 invalid_client") && !msg.contains("hunter2"),
            "{msg}"
        );
        let e = parse_token_response(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"<h1>oops</h1>",
            &[],
        )
        .err()
        .unwrap();
        assert!(matches!(
            e,
            TokenError::UnexpectedStatus { status: 502, .. }
        ));
        assert!(e.to_string().contains("oops"));
    }

    #[test]
    fn oversized_responses_are_refused() {
        let big = vec![b' '; MAX_TOKEN_RESPONSE + 1];
        let e = parse_token_response(StatusCode::OK, &HeaderMap::new(), &big, &[])
            .err()
            .unwrap();
        assert!(matches!(e, TokenError::Decode(DecodeError::TooLarge(_))));
    }
}
