//! No secret ever reaches the logs: the whole path runs with every target at TRACE into a
//! captured buffer (token fetch, refresh-ahead, 401 + replay, a rejected client, a failing
//! publish), then the buffer is searched for the client secret, its encoded forms, every
//! token the mock issued and a value interpolated into the configuration from the environment. This file is its own test binary because it installs the global
//! subscriber.

// Shared with the `it` binary; this one uses a few of its helpers.
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use irisd::daemon::Daemon;
use irisd::oauth::Credentials;
use secrecy::SecretString;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const OPAQUE: &str = "opaque-partner-credential-0123456789";
const INTERPOLATED: &str = "interpolated-query-key-9876543210";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_appears_in_trace_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let env = mock(|c| c.token_ttl_secs = Some(2)).await;
    // The publish URL carries a value interpolated from the environment (a partner's query
    // key, say): it must not reach the logs either.
    let file = env
        .config_file()
        .publish("linger_ms = 10")
        .auth("refresh_skew_secs = 1");
    let publish = env.mock.publish_url();
    let text = file.text().replace(
        &format!("url = \"{publish}\""),
        &format!("url = \"{publish}?key=${{IRISD_LOG_TEST_QUERY_KEY}}\""),
    );
    file.write();
    std::env::set_var("IRISD_LOG_TEST_QUERY_KEY", INTERPOLATED);
    let path = env.dir.path().join("irisd.toml");
    std::fs::write(&path, text).unwrap();
    let mut config = irisd::config::Config::load(&path).unwrap();
    assert!(config.destinations[0]
        .publish
        .url
        .to_string()
        .ends_with(INTERPOLATED));
    // A second destination whose opaque credential the partner does not know.
    let mut rejected = config.destinations[0].clone();
    rejected.name = "partner-b".into();
    rejected.auth.credentials = Credentials::Basic(SecretString::from(OPAQUE.to_string()));
    config.destinations.push(rejected);
    let daemon = Daemon::start(&config).await.unwrap();
    let a = daemon.destinations[0].metrics.clone();
    let b = daemon.destinations[1].metrics.clone();

    let mut tokens = Vec::new();
    for round in 0..3u64 {
        let body = format!(
            "{}\n{}\n",
            event("partner-a", 10 + round, &[("1", "1")]),
            event("partner-b", 20 + round, &[("1", "1")])
        );
        assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
        assert!(
            wait_until(Duration::from_secs(10), || a.snapshot().delivered_users
                == round + 1)
            .await
        );
        assert!(
            wait_until(Duration::from_secs(10), || b.snapshot().requests_failed
                > round)
            .await
        );
        tokens.extend(env.mock.state.issued_token_values());
        // Round 1 revokes (401 + replay), round 2 runs into the refresh-ahead window.
        if round == 0 {
            env.mock.state.revoke_all_tokens();
        } else {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    tokens.extend(env.mock.state.issued_token_values());
    let token_debug = format!("{:?}", daemon.destinations[0].tokens.peek());
    // partner-b can never deliver: no point waiting for it to drain.
    daemon.shutdown(Duration::from_secs(1)).await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture really holds the interesting events, at every level.
    assert!(logs.contains("obtained access token"), "{logs}");
    assert!(logs.contains("401"), "the replay was logged");
    assert!(
        logs.contains("invalid_client"),
        "the rejected client was logged"
    );
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "low levels captured"
    );
    assert!(a.snapshot().unauthorized >= 1);

    tokens.sort();
    tokens.dedup();
    assert!(tokens.len() >= 2, "{tokens:?}");
    let encoded_secret: String =
        form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{encoded_secret}"));
    let mut secrets = vec![
        CLIENT_SECRET.to_string(),
        encoded_secret,
        basic,
        OPAQUE.to_string(),
        INTERPOLATED.to_string(),
    ];
    secrets.extend(tokens);
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret leaked into the logs");
        assert!(
            !token_debug.contains(s.as_str()),
            "a secret leaked into Debug output"
        );
    }
}
