//! Outbound HTTPS: one pooled keep-alive hyper client per destination over rustls (ring),
//! with bounded response bodies and bounded gzip decoding.
//!
//! We use hyper's client directly rather than a higher-level one because the requests must be
//! byte-for-byte the ones IRIS sends: we choose every header and its order, header names go out
//! in Title-Case like IRIS's, and nothing is added behind our back (no `Accept: */*`, no
//! redirect following: a token request that gets redirected is reported, not replayed
//! elsewhere with the credentials).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why a request produced no HTTP response we could use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Connecting, the TLS handshake or the exchange failed; the message has the cause chain.
    #[error("{0}")]
    Io(String),
    /// No complete response within the deadline.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The response body was larger than we accept.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// A TLS setup problem (unreadable CA file, no certificate in it).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsSetupError {
    pub path: String,
    pub message: String,
}

/// A fully read response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body exactly as received (still gzip-encoded if `Content-Encoding: gzip`).
    pub body: Bytes,
}

/// Settings of one destination's client.
#[derive(Debug, Clone)]
pub struct ClientOptions<'a> {
    /// Extra trust roots in PEM, added to the public web roots.
    pub ca_file: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Offer HTTP/2 in the TLS handshake (ALPN); HTTP/1.1 when the server does not take it.
    pub http2: bool,
}

/// A pooled HTTPS client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

/// rustls client configuration: ring provider, TLS 1.2 and 1.3, verification always on.
pub fn client_tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(config_roots(ca_file)?)
        .with_no_client_auth())
}

/// What a destination's TLS adds to the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsOptions<'a> {
    /// Client certificate chain and key (PEM) for partners that require mutual TLS.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// Accept any server certificate (local tests only; the caller warns loudly).
    pub insecure_skip_verify: bool,
}

/// [`client_tls_config`] plus a client certificate and/or no server verification.
pub fn client_tls_config_with(
    ca_file: Option<&Path>,
    opts: TlsOptions<'_>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut config = client_tls_config(ca_file)?;
    if let Some((cert_path, key_path)) = opts.client_cert {
        let err = |p: &Path, message: String| TlsSetupError {
            path: p.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| {
                err(
                    cert_path,
                    format!("cannot read the client certificate: {e}"),
                )
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| err(cert_path, format!("invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err(cert_path, "no CERTIFICATE block in the file".into()));
        }
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| err(key_path, format!("cannot read the client key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(config_roots(ca_file)?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| {
                err(
                    key_path,
                    format!("the key does not fit the certificate: {e}"),
                )
            })?;
    }
    if opts.insecure_skip_verify {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(SkipServerVerification(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))));
    }
    Ok(config)
}

/// The public web roots plus the certificates of `ca_file`.
fn config_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let err = |message: String| TlsSetupError {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(format!("cannot read CA file: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err("no CERTIFICATE block in the CA file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| err(format!("unusable CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// Accepts any server certificate, but still checks the handshake signatures (so the peer
/// holds the key of the certificate it shows). Only behind `insecure_skip_verify`.
#[derive(Debug)]
struct SkipServerVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SkipServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl HttpClient {
    pub fn new(opts: &ClientOptions<'_>) -> Result<Self, TlsSetupError> {
        Self::new_with(opts, TlsOptions::default())
    }

    /// A client with a destination's TLS options (client certificate, skip verification).
    pub fn new_with(opts: &ClientOptions<'_>, tls: TlsOptions<'_>) -> Result<Self, TlsSetupError> {
        let tls = client_tls_config_with(opts.ca_file, tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(opts.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // Plain http is refused by config validation unless the operator opted in.
            .https_or_http();
        let connector = if opts.http2 {
            // One connection per partner, requests multiplexed on it.
            connector.enable_all_versions().wrap_connector(http)
        } else {
            connector.enable_http1().wrap_connector(http)
        };
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_title_case_headers(true)
            .build(connector);
        Ok(Self { inner })
    }

    /// Sends `req` and reads the whole response within `timeout`, keeping at most `max_body`
    /// bytes of body (more is an error: the connection is dropped, not drained).
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, TransportError> {
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| TransportError::Io(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        TransportError::TooLarge(max_body)
                    } else {
                        TransportError::Io(format!("reading response body: {}", error_chain(&*e)))
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }
}

/// The error and its sources, joined: hyper's top-level messages alone ("client error
/// (Connect)") do not say what to fix.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        cur = s.source();
    }
    msg
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported Content-Encoding {0:?}")]
    UnsupportedEncoding(String),
    #[error("invalid gzip data: {0}")]
    Gzip(String),
    #[error("decoded body larger than {0} bytes")]
    TooLarge(usize),
}

/// Decodes a body according to its `Content-Encoding` (identity or gzip), refusing to inflate
/// past `max` bytes so a small gzip bomb cannot take the memory.
pub fn decode_body(headers: &HeaderMap, body: &[u8], max: usize) -> Result<Bytes, DecodeError> {
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > max {
                return Err(DecodeError::TooLarge(max));
            }
            Ok(Bytes::copy_from_slice(body))
        }
        Some("gzip") | Some("x-gzip") => gunzip_bounded(body, max).map(Bytes::from),
        Some(other) => Err(DecodeError::UnsupportedEncoding(other.to_string())),
    }
}

/// Inflates gzip data, failing as soon as the output would exceed `max` bytes.
pub fn gunzip_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    // The gzip trailer states the (last member's) size: one allocation of the right size in
    // the usual case. It is only a hint from the peer, so it is capped (deflate cannot expand
    // more than ~1032:1, and never beyond `max` or 8 MiB up front).
    let stated = body
        .len()
        .checked_sub(4)
        .map(|i| u32::from_le_bytes(body[i..].try_into().expect("4 bytes")) as usize)
        .unwrap_or(0);
    let hint = stated
        .max(body.len() * 4)
        .min(body.len().saturating_mul(1032))
        .min(max.saturating_add(1))
        .min(8 << 20);
    let mut out = Vec::with_capacity(hint);
    let mut dec = flate2::read::MultiGzDecoder::new(body).take(max as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if out.len() > max {
        return Err(DecodeError::TooLarge(max));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 1_000_000]);
        assert!(bomb.len() < 10_000);
        assert_eq!(
            gunzip_bounded(&bomb, 1000),
            Err(DecodeError::TooLarge(1000))
        );
        assert_eq!(gunzip_bounded(&bomb, 1_000_000).unwrap().len(), 1_000_000);
    }

    #[test]
    fn decode_body_follows_content_encoding() {
        let mut h = HeaderMap::new();
        assert_eq!(&decode_body(&h, b"abc", 10).unwrap()[..], b"abc");
        h.insert(http::header::CONTENT_ENCODING, "GZIP".parse().unwrap());
        assert_eq!(&decode_body(&h, &gzip(b"abc"), 10).unwrap()[..], b"abc");
        assert!(matches!(
            decode_body(&h, b"not gzip", 10),
            Err(DecodeError::Gzip(_))
        ));
        h.insert(http::header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(matches!(
            decode_body(&h, b"x", 10),
            Err(DecodeError::UnsupportedEncoding(_))
        ));
    }
}
