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

/// Connections served at once per listener; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 4096;
/// Time a client has to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Returned by a handler to drop the connection without answering (fault injection).
#[derive(Debug)]
pub struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed without an answer")
    }
}

impl std::error::Error for CloseConnection {}

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
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            match &tls {
                None => {
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                    tokio::spawn(async move {
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
                        let conn =
                            watcher.watch(builder.serve_connection(TokioIo::new(tls_stream), svc));
                        let _ = conn.await;
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
