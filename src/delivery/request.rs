//! The publish request builder, free of I/O: a batch of user records in, the exact bytes and
//! headers out. The payload is written straight into a buffer and, when enabled, gzip-encoded;
//! the token is added last, per attempt, so a replay after a 401 reuses the same body.

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    USER_AGENT,
};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use jiff::Timestamp;

use crate::oauth::client::host_header;
use crate::oauth::Token;
use crate::payload::{PayloadHeader, UserRecord};

/// Header carrying the request id; the same on every attempt of one batch.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

thread_local! {
    static JSON_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A per-thread JSON buffer larger than this is given back after use (bounded memory).
const MAX_KEPT_BUFFER: usize = 4 << 20;

/// A built publish request, ready to be sent (and re-sent) with a token.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// The body as sent (gzip-encoded when enabled).
    pub body: Bytes,
    /// Payload size before compression.
    pub raw_len: usize,
    /// Number of users in the payload.
    pub users: usize,
    /// Unique id of this batch.
    pub request_id: String,
    /// The signature header's value, when the destination signs its requests.
    pub signature: Option<HeaderValue>,
}

/// Builds one destination's publish requests.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    url: Uri,
    method: Method,
    host: HeaderValue,
    user_agent: HeaderValue,
    gzip: Option<flate2::Compression>,
    header: PayloadHeader,
    signing: Option<crate::config::SigningConfig>,
}

impl RequestBuilder {
    pub fn new(
        url: Uri,
        method: Method,
        user_agent: HeaderValue,
        gzip: Option<flate2::Compression>,
        header: PayloadHeader,
    ) -> Self {
        Self {
            host: host_header(&url),
            url,
            method,
            user_agent,
            gzip,
            header,
            signing: None,
        }
    }

    /// Signs every request with `signing` (see [`crate::signing`]).
    pub fn with_signing(mut self, signing: Option<crate::config::SigningConfig>) -> Self {
        self.signing = signing;
        self
    }

    pub fn payload_header(&self) -> &PayloadHeader {
        &self.header
    }

    /// Renders the payload for `users` (with `ProcessTime` = `now`) and encodes it.
    pub fn build(
        &self,
        users: &[UserRecord],
        now: Timestamp,
        request_id: String,
    ) -> PreparedRequest {
        let bytes: usize = users.iter().map(|u| u.json.len()).sum();
        let size = self.header.payload_size(users.len(), bytes);
        let (body, raw_len) = match self.gzip {
            // The plain JSON is only the compressor's input: a per-thread buffer, reused.
            Some(level) => JSON_BUFFER.with(|cell| {
                let mut json = cell.borrow_mut();
                json.clear();
                json.reserve(size);
                self.header.write_payload(now, users, &mut json);
                let body = Bytes::from(crate::gzip::encode(&json, level));
                let raw_len = json.len();
                if json.capacity() > MAX_KEPT_BUFFER {
                    *json = Vec::new();
                }
                (body, raw_len)
            }),
            None => {
                let mut json = Vec::with_capacity(size);
                self.header.write_payload(now, users, &mut json);
                let raw_len = json.len();
                (Bytes::from(json), raw_len)
            }
        };
        let signature = self.signing.as_ref().map(|sg| {
            use secrecy::ExposeSecret;
            let pq = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let data = crate::signing::signed_data(&self.method, pq, &body);
            let sig = crate::signing::sign(sg.algorithm, sg.key.expose_secret().as_bytes(), data);
            HeaderValue::from_str(&sig).expect("base64 is a valid header value")
        });
        PreparedRequest {
            body,
            raw_len,
            users: users.len(),
            request_id,
            signature,
        }
    }

    /// The HTTP request for one attempt: headers in a fixed order, `Authorization: Bearer`.
    pub fn http_request(&self, req: &PreparedRequest, token: &Token) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(req.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.url.clone();
        let h = r.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(USER_AGENT, self.user_agent.clone());
        h.insert(AUTHORIZATION, token.bearer_header());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.gzip.is_some() {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(req.body.len()));
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        if let Ok(v) = HeaderValue::from_str(&req.request_id) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
        if let (Some(sg), Some(sig)) = (&self.signing, &req.signature) {
            h.insert(sg.header.clone(), sig.clone());
        }
        r
    }
}

/// A new random request id (128 bits, hex).
pub fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use tokio::time::Instant;

    fn builder(gzip: bool) -> RequestBuilder {
        RequestBuilder::new(
            "https://partner.example:8443/segments/aam?x=1"
                .parse()
                .unwrap(),
            Method::GET,
            HeaderValue::from_static("Adobe Audience Manager Iris"),
            gzip.then(flate2::Compression::fast),
            PayloadHeader {
                user_dpid: "1".into(),
                client_id: "2".into(),
                destination_id: "3".into(),
            },
        )
    }

    fn token() -> Token {
        Token {
            value: SecretString::from("tkn".to_string()),
            generation: 1,
            obtained_at: Instant::now(),
            expires_at: None,
            refresh_at: None,
        }
    }

    fn users() -> Vec<UserRecord> {
        vec![UserRecord::new(Bytes::from_static(
            br#"{"AAM_UUID":"1","DataPartner_UUID":"","Segments":[]}"#,
        ))]
    }

    #[test]
    fn gzip_body_decodes_to_the_payload() {
        let b = builder(true);
        let p = b.build(&users(), Timestamp::UNIX_EPOCH, "rid".into());
        let plain = crate::transport::gunzip_bounded(&p.body, 1 << 20).unwrap();
        assert_eq!(plain.len(), p.raw_len);
        assert!(std::str::from_utf8(&plain)
            .unwrap()
            .starts_with(r#"{"ProcessTime":"Thu Jan 01 00:00:00 UTC 1970","User_DPID":"1""#));
        let r = b.http_request(&p, &token());
        let names: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "user-agent",
                "authorization",
                "content-type",
                "content-encoding",
                "content-length",
                "accept-encoding",
                "x-request-id"
            ]
        );
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.headers()[HOST], "partner.example:8443");
        assert_eq!(r.headers()[AUTHORIZATION], "Bearer tkn");
        assert!(r.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            r.headers()[CONTENT_LENGTH],
            p.body.len().to_string().as_str()
        );
    }

    #[test]
    fn identity_body_has_no_content_encoding() {
        let b = builder(false);
        let p = b.build(&users(), Timestamp::UNIX_EPOCH, new_request_id());
        assert_eq!(p.body.len(), p.raw_len);
        assert_eq!(p.request_id.len(), 32);
        assert!(b
            .http_request(&p, &token())
            .headers()
            .get(CONTENT_ENCODING)
            .is_none());
    }
}
