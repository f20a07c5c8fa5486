//! TLS toward partners: mutual TLS with a client certificate when the partner requires one,
//! verification always on unless `insecure_skip_verify` (which then works, and is logged at
//! ERROR), an untrusted partner certificate refused with a clear error, and connections kept
//! alive (a TLS handshake per request would cost the partner and us dearly).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use irisd::config::Config;
use irisd::daemon::Daemon;

fn with_tls(env: &Env, tls_lines: &str) -> std::path::PathBuf {
    env.config_file().tls(tls_lines).write()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_requiring_client_certificates_gets_ours_and_refuses_others() {
    let env = mock(|c| c.require_client_cert = true).await;
    let tls_dir = env.mock.ca_file.parent().unwrap().to_owned();
    let key = tls_dir.join("client.key");
    let path = with_tls(
        &env,
        &format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            env.mock.ca_file.display(),
            tls_dir.join("client.pem").display(),
            key.display()
        ),
    );
    let daemon = Daemon::start(&Config::load(&path).unwrap()).await.unwrap();
    let (status, _, body) =
        post_events(daemon.intake_addr, event("partner-a", 77, &[("5", "1")])).await;
    assert_eq!(status, 202, "{body}");
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await,
        "not delivered over mutual TLS: {:?}",
        m.snapshot()
    );
    daemon.shutdown(Duration::from_secs(2)).await;

    // Without the client certificate the partner's handshake refuses us.
    let path = with_tls(
        &env,
        &format!("ca_file = \"{}\"", env.mock.ca_file.display()),
    );
    let daemon = Daemon::start(&Config::load(&path).unwrap()).await.unwrap();
    post_events(daemon.intake_addr, event("partner-a", 78, &[("5", "1")])).await;
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m
            .snapshot()
            .token_fetches
            .contains_key("transport"))
        .await,
        "{:?}",
        m.snapshot()
    );
    assert_eq!(m.snapshot().delivered_users, 0);
    daemon.shutdown(Duration::from_secs(1)).await;

    // A certificate without its key is a configuration error naming the key.
    let path = with_tls(
        &env,
        &format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"",
            env.mock.ca_file.display(),
            tls_dir.join("client.pem").display()
        ),
    );
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("tls.client_cert_file: needs tls.client_key_file too"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_partner_is_refused_unless_insecure_skip_verify_which_is_logged_as_an_error() {
    let env = mock(|_| {}).await;
    // No ca_file: the mock's private CA is not trusted.
    let path = with_tls(&env, "");
    let daemon = Daemon::start(&Config::load(&path).unwrap()).await.unwrap();
    post_events(daemon.intake_addr, event("partner-a", 90, &[("5", "1")])).await;
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m
            .snapshot()
            .token_fetches
            .contains_key("transport"))
        .await
    );
    assert_eq!(m.snapshot().delivered_users, 0);
    daemon.shutdown(Duration::from_secs(1)).await;

    let path = with_tls(&env, "insecure_skip_verify = true");
    let log = env.dir.path().join("irisd.log");
    let child = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let _proc = Proc(child);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || read()
            .contains("irisd is running"))
        .await
    );
    let addr: std::net::SocketAddr = read()
        .split("intake=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (status, _, _) = post_events(addr, event("partner-a", 91, &[("5", "1")])).await;
    assert_eq!(status, 202);
    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(10), || state
            .user_counts()
            .contains_key("91"))
        .await,
        "insecure_skip_verify delivers to an untrusted certificate"
    );
    let text = read();
    assert!(
        text.lines().any(|l| l.contains("ERROR")
            && l.contains("insecure_skip_verify = true")
            && l.contains("partner-a")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_requests_reuse_their_connections() {
    let env = mock(|_| {}).await;
    let config = env.config("linger_ms = 0\nmax_users = 1\nmax_in_flight = 1", "");
    let daemon = Daemon::start(&config).await.unwrap();
    let m = daemon.destinations[0].metrics.clone();
    for i in 1..=30u64 {
        assert_eq!(
            post_events(daemon.intake_addr, event("partner-a", i, &[("1", "1")]))
                .await
                .0,
            202
        );
        assert!(
            wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
                == i)
            .await
        );
    }
    let peers: std::collections::HashSet<String> = env
        .mock
        .state
        .journal()
        .into_iter()
        .filter(|j| j.path == "/segments/aam")
        .map(|j| j.peer)
        .collect();
    // One connection, or a couple when a request started before the previous connection was
    // back in the pool; never one per request.
    assert!(
        (1..=3).contains(&peers.len()),
        "30 publish requests over {} connections: {peers:?}",
        peers.len()
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}
