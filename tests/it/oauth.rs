//! The token client and cache against real TLS servers on loopback: the exact bytes of the
//! token and publish requests, gzip token responses, tokens without `expires_in`,
//! single-flight, refresh ahead of expiry, and 401 → one refresh, one replay.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use http::HeaderValue;
use irisd::daemon::Daemon;
use irisd::metrics::DestinationMetrics;
use irisd::mock::faults::Faults;
use irisd::oauth::{Credentials, TokenCache, TokenClient};
use irisd::transport::{ClientOptions, HttpClient};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server (the mock's certificate) that records one request's raw bytes and answers
/// with `response`.
async fn capture_server(
    dir: &std::path::Path,
    response: Vec<u8>,
) -> (u16, std::path::PathBuf, tokio::task::JoinHandle<Vec<u8>>) {
    let (tls, ca) = irisd::mock::tls::load_or_create(dir, false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before a full request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        s.write_all(&response).await.unwrap();
        s.flush().await.unwrap();
        let _ = s.shutdown().await;
        buf
    });
    (port, ca, task)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn http_response(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn token_request_is_byte_for_byte_the_iris_request_and_gzip_response_without_expires_in_is_used(
) {
    let dir = tempfile::tempdir().unwrap();
    let token = "glIbBVohK8d86alDEnllPWi6IpjZvJC6kwBRuuawts6YMkw4tZkt84rEZYU2ZKHCQP3TT7PnzCQPI0yY";
    let body = gzip(format!(r#"{{"token_type":"Bearer","access_token":"{token}"}}"#).as_bytes());
    let resp = http_response(
        "Content-Type: application/json; charset=utf-8\r\nContent-Encoding: gzip\r\n",
        &body,
    );
    let (port, ca, server) = capture_server(dir.path(), resp).await;

    let http = HttpClient::new(&ClientOptions {
        ca_file: Some(&ca),
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(5),
        http2: false,
    })
    .unwrap();
    let client = TokenClient::new(
        http,
        format!("https://localhost:{port}/oauth2/token")
            .parse()
            .unwrap(),
        Credentials::ClientSecret {
            client_id: CLIENT_ID.into(),
            secret: SecretString::from(CLIENT_SECRET.to_string()),
        },
        None,
        HeaderValue::from_static("Adobe Audience Manager Iris"),
        Duration::from_secs(5),
    );
    let got = client.fetch().await.unwrap();
    assert_eq!(got.access_token.expose_secret(), token);
    assert_eq!(got.expires_in, None, "no expires_in in the response");

    // RFC 6749 §2.3.1: form-urlencode id and secret, join with ':', base64.
    let basic = base64::engine::general_purpose::STANDARD
        .encode("iris-test:s3cr3t-Value%3Awith%40odd+chars%25%21");
    let expected = format!(
        "POST /oauth2/token HTTP/1.1\r\n\
         Host: localhost:{port}\r\n\
         User-Agent: Adobe Audience Manager Iris\r\n\
         Authorization: Basic {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded;charset=UTF-8\r\n\
         Content-Length: 29\r\n\
         Accept-Encoding: gzip\r\n\
         \r\n\
         grant_type=client_credentials"
    );
    let raw = server.await.unwrap();
    assert_eq!(String::from_utf8(raw).unwrap(), expected);
}

#[tokio::test]
async fn publish_request_has_the_iris_headers_in_order_and_a_gzip_payload() {
    let env = mock(|_| {}).await;
    let capture_dir = tempfile::tempdir().unwrap();
    let (port, ca, server) = capture_server(
        capture_dir.path(),
        http_response("Content-Type: application/json\r\n", b"{}"),
    )
    .await;
    // Token from the real mock, publish to the capturing server (both trust roots needed:
    // the capture server reuses a fresh CA, so point the daemon at a combined bundle).
    let bundle = env.dir.path().join("bundle.pem");
    let mut pem = std::fs::read(env.ca()).unwrap();
    pem.extend(std::fs::read(&ca).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let mut config = env.config("linger_ms = 10", "");
    config.destinations[0].publish.url = format!("https://localhost:{port}/segments/aam")
        .parse()
        .unwrap();
    config.destinations[0].tls.ca_file = Some(bundle);
    let daemon = Daemon::start(&config).await.unwrap();
    let body = format!(
        "{}\n{}\n",
        event("partner-a", 11, &[("14356", "1")]),
        event("partner-a", 12, &[("7", "0")])
    );
    assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
    let raw = server.await.unwrap();
    let token = env.mock.state.issued_token_values().pop().unwrap();

    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let lines: Vec<&str> = head.split("\r\n").collect();
    let body = &raw[end + 4..];
    assert_eq!(lines[0], "POST /segments/aam HTTP/1.1");
    assert_eq!(lines[1], format!("Host: localhost:{port}"));
    assert_eq!(lines[2], "User-Agent: Adobe Audience Manager Iris");
    assert_eq!(lines[3], format!("Authorization: Bearer {token}"));
    assert_eq!(lines[4], "Content-Type: application/json");
    assert_eq!(lines[5], "Content-Encoding: gzip");
    assert_eq!(lines[6], format!("Content-Length: {}", body.len()));
    assert_eq!(lines[7], "Accept-Encoding: gzip");
    let rid = lines[8].strip_prefix("X-Request-Id: ").unwrap();
    assert!(
        rid.len() == 32 && rid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rid}"
    );
    assert_eq!(lines.len(), 9, "no other headers: {lines:?}");
    let json = irisd::transport::gunzip_bounded(body, 1 << 20).unwrap();
    let payload = irisd::payload::parse_payload(&json, 10).unwrap();
    assert_eq!(payload.user_count, "2");
    assert_eq!(payload.users[0].aam_uuid, "11");
    assert_eq!(payload.users[1].segments[0].status, "0");
    daemon.shutdown(Duration::from_secs(5)).await;
}

fn token_cache(env: &Env, skew: Option<Duration>) -> (Arc<TokenCache>, Arc<DestinationMetrics>) {
    let config = env.config("", "");
    let d = &config.destinations[0];
    let http = HttpClient::new(&ClientOptions {
        ca_file: d.tls.ca_file.as_deref(),
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(30),
        http2: false,
    })
    .unwrap();
    let metrics = Arc::new(DestinationMetrics::default());
    let client = TokenClient::new(
        http,
        d.auth.token_url.clone(),
        d.auth.credentials.clone(),
        None,
        HeaderValue::from_static("ua"),
        Duration::from_secs(5),
    );
    (
        Arc::new(TokenCache::new(
            "partner-a".into(),
            client,
            skew,
            metrics.clone(),
        )),
        metrics,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_100_concurrent_cold_gets_make_one_token_request() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let (cache, metrics) = token_cache(&env, None);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, barrier) = (cache.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache.get().await.unwrap().generation
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(env.mock.state.stats().token_requests, 1);
    assert_eq!(metrics.snapshot().token_fetches_ok(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_100_cold_publishes_through_the_daemon_make_one_token_request() {
    let env = mock(|_| {}).await;
    let config = env.config("max_users = 1\nmax_in_flight = 100\nlinger_ms = 0", "");
    let daemon = Daemon::start(&config).await.unwrap();
    let body: String = (0..100)
        .map(|i| event("partner-a", 1000 + i, &[("1", "1")]) + "\n")
        .collect();
    assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(20), || m.snapshot().delivered_users
            == 100)
        .await
    );
    let stats = env.mock.state.stats();
    assert_eq!(stats.publish_accepted, 100);
    assert_eq!(stats.token_requests, 1);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn token_is_refreshed_ahead_of_expiry_without_stalling_sends() {
    let env = mock(|c| c.token_ttl_secs = Some(10)).await;
    // Lifetime 10 s, skew 8 s: the refresh is due after 2 s, expiry after 10 s.
    let (cache, _) = token_cache(&env, Some(Duration::from_secs(8)));
    let first = cache.get().await.unwrap();
    assert_eq!(first.generation, 1);
    // The refresh will take a while at the token endpoint.
    env.mock
        .state
        .set_faults(Faults {
            token_latency_ms: 1_500,
            ..Faults::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Inside the refresh window: the current token comes back and a refresh starts. Had the
    // send waited for that refresh, it would have got the new token.
    let during = cache.get().await.unwrap();
    assert_eq!(during.generation, 1, "sends are not stalled by the refresh");
    let again = cache.get().await.unwrap();
    assert_eq!(
        again.generation, 1,
        "one refresh at a time, and no wait for it"
    );
    assert!(
        wait_until(Duration::from_secs(30), || cache
            .peek()
            .is_some_and(|t| t.generation == 2))
        .await
    );
    assert!(
        tokio::time::Instant::now() < first.expires_at.unwrap(),
        "the new token arrived before the old one expired"
    );
    assert_eq!(env.mock.state.stats().tokens_issued, 2);
}

#[tokio::test]
async fn without_expires_in_the_token_is_kept_until_the_partner_answers_401() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let config = env.config("linger_ms = 10", "");
    let daemon = Daemon::start(&config).await.unwrap();
    let m = daemon.destinations[0].metrics.clone();
    for round in 0..3u64 {
        let (status, _, _) = post_events(
            daemon.intake_addr,
            event("partner-a", 50 + round, &[("1", "1")]),
        )
        .await;
        assert_eq!(status, 202);
        assert!(
            wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
                == round + 1)
            .await
        );
    }
    assert!(daemon.destinations[0]
        .tokens
        .peek()
        .unwrap()
        .expires_at
        .is_none());
    assert_eq!(
        env.mock.state.stats().tokens_issued,
        1,
        "one token for all rounds"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn publish_401_invalidates_the_token_refreshes_once_and_replays_once() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let config = env.config("linger_ms = 10", "");
    let daemon = Daemon::start(&config).await.unwrap();
    let m = daemon.destinations[0].metrics.clone();
    post_events(daemon.intake_addr, event("partner-a", 1, &[("1", "1")])).await;
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );

    assert_eq!(env.mock.state.revoke_all_tokens(), 1);
    post_events(daemon.intake_addr, event("partner-a", 2, &[("1", "1")])).await;
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 2)
        .await
    );

    let stats = env.mock.state.stats();
    assert_eq!(stats.tokens_issued, 2, "one refresh");
    assert_eq!(
        stats.publish_rejections.get("invalid_token"),
        Some(&1),
        "one failed attempt"
    );
    assert_eq!(stats.publish_accepted, 2, "the replay was accepted");
    let snap = m.snapshot();
    assert_eq!(snap.unauthorized, 1);
    assert_eq!(snap.failed_users, 0);
    assert_eq!(daemon.destinations[0].tokens.peek().unwrap().generation, 2);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn token_endpoint_failures_back_off_instead_of_hot_looping() {
    let env = mock(|c| c.clients[0].client_secret = Some("another secret".into())).await;
    let (cache, metrics) = token_cache(&env, None);
    let first = cache.get().await.unwrap_err();
    assert_eq!(first.label(), "invalid_client");
    for _ in 0..50 {
        let e = cache.get().await.unwrap_err();
        assert_eq!(e.label(), "backing_off", "{e}");
    }
    assert_eq!(
        env.mock.state.stats().token_requests,
        1,
        "no request while backing off"
    );
    assert_eq!(
        metrics.snapshot().token_fetches.get("invalid_client"),
        Some(&1)
    );
}
