//! The HTTP/1.1 server loop shared by the intake and the mock partner: accept (optionally TLS),
//! serve with hyper, bound header read time, and shut down gracefully on request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Limits of one listener against peers that hold connections or send slowly.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest a keep-alive connection
    /// may sit idle between requests (slowloris and idle-connection guard).
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) accepted; more is answered 431.
    pub max_header_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }
}
/// Time a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one HTTP/2 connection may carry at once (a bound per connection, like
/// `max_connections` for connections).
const H2_MAX_STREAMS: u32 = 256;

/// Returned by a handler to drop the connection without answering (fault injection).
#[derive(Debug)]
pub struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed without an answer")
    }
}

impl std::error::Error for CloseConnection {}

/// Binds a listener with a deep accept backlog (4096, capped by the kernel's `somaxconn`):
/// the standard library's 128 overflows under a burst of connections and every connection
/// past it waits a SYN retransmission (1 s) before it is even seen.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// A TLS acceptor from PEM files; with `client_ca`, client certificates issued by it are
/// required (mutual TLS).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                roots
                    .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, lets open requests finish (up to `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

/// Serves `handler` on `listener` until [`ServerHandle::shutdown`]. A handler answering
/// `Err(CloseConnection)` makes the connection close without a response.
pub fn serve<H, F, B>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: H) -> ServerHandle
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, CloseConnection>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, tls, ServeLimits::default(), handler)
}

/// [`serve`] with explicit limits.
pub fn serve_with<H, F, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ServeLimits,
    handler: H,
) -> ServerHandle
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, CloseConnection>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => p.expect("never closed"),
                _ = shutdown_rx.changed() => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown_rx.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let svc = hyper::service::service_fn(move |req| handler(req, peer));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .keep_alive(true);
            match &tls {
                None => {
                    let watcher = graceful.watcher();
                    let timeout = limits.header_read_timeout;
                    tokio::spawn(async move {
                        // An idle connection costs a task and a socket, not hyper's buffers,
                        // until its first byte arrives (10,000 idle connections ≈ 20 MB).
                        // (`peek`, not `readable`: readiness may be reported before any byte.)
                        let mut first = [0u8; 1];
                        match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        // Boxed: the connection's state is large and would otherwise be part of
                        // every idle task.
                        let conn = Box::pin(
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)),
                        );
                        let _ = conn.await;
                        drop(permit);
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls_stream = match tokio::time::timeout(
                            TLS_HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        // HTTP/2 only where the acceptor offers it (the mock partner) and the
                        // client chose it in the handshake.
                        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        if h2 {
                            let mut h2 = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            );
                            h2.timer(TokioTimer::new())
                                .max_header_list_size(limits.max_header_bytes as u32)
                                .max_concurrent_streams(H2_MAX_STREAMS);
                            let conn =
                                watcher.watch(h2.serve_connection(TokioIo::new(tls_stream), svc));
                            let _ = conn.await;
                        } else {
                            let conn = watcher
                                .watch(builder.serve_connection(TokioIo::new(tls_stream), svc));
                            let _ = conn.await;
                        }
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        graceful.shutdown().await;
    });
    ServerHandle {
        addr,
        shutdown: shutdown_tx,
        task,
    }
}

/// Checks `Authorization: Bearer <token>` against `expected` (constant time). The refusal is
/// RFC 6750's: 401 with `WWW-Authenticate: Bearer realm="irisd"`, plus `error="invalid_token"`
/// when a token was sent but is wrong. The token is never echoed or logged.
pub fn check_bearer(
    headers: &http::HeaderMap,
    expected: &secrecy::SecretString,
) -> Result<(), Box<Response<Full<Bytes>>>> {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        });
    let (challenge, message) = match given {
        Some(t) if bool::from(t.as_bytes().ct_eq(expected.expose_secret().as_bytes())) => {
            return Ok(())
        }
        Some(_) => (
            "Bearer realm=\"irisd\", error=\"invalid_token\"",
            "the bearer token is not valid here",
        ),
        None => (
            "Bearer realm=\"irisd\"",
            "send Authorization: Bearer <token> (the listener's auth_token_file / auth_token_env)",
        ),
    };
    let mut r = error_response(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    Err(Box::new(r))
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, &serde_json::json!({ "error": message.into() }))
}
