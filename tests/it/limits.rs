//! Hostile peers: every limit where a peer controls size or time, held against a real daemon
//! process (so its memory is its own) or the real mock partner. 10,000 idle connections, a
//! slowloris, a 100 MB NDJSON line, gzip bombs to the intake and to the mock, a token endpoint
//! answering 50 MB or never finishing, and a token endpoint redirecting to `http://`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use http::{HeaderValue, Method};
use irisd::oauth::client::TokenClient;
use irisd::oauth::Credentials;
use irisd::transport::{ClientOptions, HttpClient};
use secrecy::SecretString;

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

/// A daemon process with `intake_extra` lines in `[intake]`.
async fn daemon(intake_extra: &str) -> (Env, Proc, SocketAddr) {
    let env = mock(|_| {}).await;
    let path = env.config_file().intake(intake_extra).write();
    let (proc, addr) = spawn_daemon(&path, 1);
    (env, proc, addr)
}

/// One raw HTTP/1.1 exchange; the status code (0 when the server closed without answering).
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ok_post(addr: SocketAddr, uuid: u64) -> u16 {
    let body = event("partner-a", uuid, &[("5", "1")]);
    raw(
        addr,
        &format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        body.as_bytes(),
    )
}

/// [`ok_post`] from async code (the raw client blocks).
async fn ok_post_async(addr: SocketAddr, uuid: u64) -> u16 {
    tokio::task::spawn_blocking(move || ok_post(addr, uuid))
        .await
        .unwrap()
}

fn gzip_of_zeros(bytes: usize) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        e.write_all(&zeros).unwrap();
    }
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_cost_little_and_new_clients_are_still_served() {
    let (_env, proc, addr) = daemon("").await;
    let pid = proc.0.id();
    let before = peak_rss_mb(pid);
    let idle = tokio::task::spawn_blocking(move || {
        (0..10_000)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let status = ok_post_async(addr, 1).await;
    let waited = started.elapsed();
    let after = peak_rss_mb(pid);
    eprintln!(
        "10,000 idle connections: daemon peak RSS {before:.1} MB -> {after:.1} MB; a new client answered in {waited:?}"
    );
    assert_eq!(status, 202);
    assert!(
        waited < Duration::from_secs(2),
        "new client waited {waited:?}"
    );
    assert!(after - before < 60.0, "{before:.1} -> {after:.1} MB");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_cut_at_the_header_timeout() {
    let (_env, _proc, addr) = daemon("header_read_timeout_ms = 500").await;
    let result = tokio::task::spawn_blocking(move || {
        // Headers one byte every 100 ms: never complete within 500 ms.
        let mut slow = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        slow.write_all(head).unwrap();
        let mut cut = None;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if slow.write_all(b"a").is_err() {
                cut = Some(started.elapsed());
                break;
            }
            slow.set_nonblocking(true).unwrap();
            let mut b = [0u8; 256];
            let r = slow.read(&mut b);
            slow.set_nonblocking(false).unwrap();
            if r.is_ok() {
                cut = Some(started.elapsed());
                break;
            }
        }
        // A connection that never sends a byte.
        let mut silent = TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let mut b = [0u8; 16];
        let closed = matches!(silent.read(&mut b), Ok(0) | Err(_));
        (cut, closed, started.elapsed())
    })
    .await
    .unwrap();
    let (cut, silent_closed, silent_after) = result;
    let cut = cut.expect("the slow client was never cut off");
    assert!(cut < Duration::from_secs(3), "slowloris lasted {cut:?}");
    assert!(
        silent_closed && silent_after < Duration::from_secs(3),
        "{silent_after:?}"
    );
    // The listener still serves.
    assert_eq!(ok_post_async(addr, 2).await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_line_and_a_gzip_bomb_are_refused_early_with_bounded_memory() {
    let (env, proc, addr) = daemon("").await;
    let pid = proc.0.id();
    let statuses = tokio::task::spawn_blocking(move || {
        // Declared 100 MB: refused before reading.
        let declared = raw(
            addr,
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n",
            b"{\"destination\":\"",
        );
        // Chunked, no length: one 100 MB line, refused once 10 MB (max_body_bytes) were read.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || s.write_all(&chunk).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        let chunked: u16 = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        // 1 MB of gzip inflating to 1 GB.
        let bomb = gzip_of_zeros(1 << 30);
        assert!(bomb.len() < 2 << 20, "{}", bomb.len());
        let bombed = raw(
            addr,
            &format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                bomb.len()
            ),
            &bomb,
        );
        (declared, chunked, bombed, bomb)
    })
    .await
    .unwrap();
    let (declared, chunked, bombed, bomb) = statuses;
    assert_eq!((declared, chunked, bombed), (413, 413, 413));
    let rss = peak_rss_mb(pid);
    eprintln!("100 MB line and 1 GB gzip bomb refused; daemon peak RSS {rss:.1} MB");
    assert!(rss < 100.0, "{rss:.1} MB");
    assert_eq!(ok_post_async(addr, 3).await, 202);

    // The same bomb at the mock partner's publish endpoint, with a valid token.
    let (resp, token) = send(
        &env,
        Method::POST,
        env.mock.token_url(),
        &[
            ("authorization", &basic(CLIENT_ID, CLIENT_SECRET)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        b"grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 200);
    let token = token["access_token"].as_str().unwrap().to_string();
    let started = Instant::now();
    let (resp, body) = send(
        &env,
        Method::POST,
        env.mock.publish_url(),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &bomb,
    )
    .await;
    assert_eq!(resp.status, 413, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A plain-HTTP server on loopback that answers every connection with `answer`.
async fn rogue(answer: impl Fn(tokio::net::TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            answer(s);
        }
    });
    addr
}

fn token_client(url: String) -> TokenClient {
    TokenClient::new(
        HttpClient::new(&ClientOptions {
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(2),
            http2: false,
        })
        .unwrap(),
        url.parse().unwrap(),
        Credentials::ClientSecret {
            client_id: "id".into(),
            secret: SecretString::from("s3cr3t-value".to_string()),
        },
        None,
        HeaderValue::from_static("Adobe Audience Manager Iris"),
        Duration::from_secs(3),
    )
}

#[tokio::test]
async fn hostile_token_endpoints_are_bounded_and_reported() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // 50 MB answer.
    let huge = rogue(|mut s| {
        tokio::spawn(async move {
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{\"access_token\":\"")
                .await;
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..50 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
    })
    .await;
    let started = Instant::now();
    let e = token_client(format!("http://{huge}/token"))
        .fetch()
        .await
        .err()
        .map(|e| e.to_string())
        .expect("the fetch must fail");
    // The endpoint was reached; what it sent was too much, and the message says so.
    assert!(e.contains("larger than 65536 bytes"), "{e}");
    assert!(!e.contains("unreachable"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Headers, then a body that never ends.
    let endless = rogue(|mut s| {
        tokio::spawn(async move {
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
                .await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
    })
    .await;
    let started = Instant::now();
    let e = token_client(format!("http://{endless}/token"))
        .fetch()
        .await
        .err()
        .map(|e| e.to_string())
        .expect("the fetch must fail");
    assert!(e.contains("did not answer within 3s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A redirect to http://: not followed, and said so.
    let followed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = followed.clone();
    let target = rogue(move |_| {
        f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })
    .await;
    let redirect = rogue(move |mut s| {
        tokio::spawn(async move {
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(format!("HTTP/1.1 302 Found\r\nLocation: http://{target}/steal\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        });
    })
    .await;
    let e = token_client(format!("http://{redirect}/token"))
        .fetch()
        .await
        .err()
        .map(|e| e.to_string())
        .expect("the fetch must fail");
    assert!(
        e.contains("302") && e.contains("redirects are not followed"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t-value"), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(followed.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let (_env, _proc, addr) = daemon("").await;
    let status = tokio::task::spawn_blocking(move || {
        let big = "a".repeat(200 * 1024);
        raw(
            addr,
            &format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nContent-Length: 0\r\n\r\n"
            ),
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 431, "a 200 KB header is refused (64 KiB head cap)");
    assert_eq!(ok_post_async(addr, 4).await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_and_frees_slots_as_idle_peers_are_cut() {
    let (_env, _proc, addr) = daemon("max_connections = 2\nheader_read_timeout_ms = 1000").await;
    let (status, waited) = tokio::task::spawn_blocking(move || {
        let idle: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        // Waits in the backlog until the idle peers are cut at the header timeout.
        let status = ok_post(addr, 5);
        drop(idle);
        (status, started.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(status, 202);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "served after {waited:?}: the third connection must wait for a slot"
    );
}
