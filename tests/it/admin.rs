//! The admin listener: Prometheus metrics after a known run, health and readiness, the status
//! summary and `irisd status`; none of it shows a secret or a token.

use std::time::Duration;

use crate::common::*;
use http_body_util::BodyExt;
use irisd::daemon::Daemon;
use irisd::mock::faults::Faults;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_known_run() {
    let env = mock(|c| {
        c.token_ttl_secs = Some(600);
        c.faults = Faults {
            fail_next: 1,
            error_status: 503,
            ..Faults::default()
        };
    })
    .await;
    let mut config = env.config_with(
        "linger_ms = 5\nmax_users = 5",
        "",
        "",
        "initial_ms = 10\nmax_delay_ms = 50",
    );
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let daemon = Daemon::start(&config).await.unwrap();
    let admin = daemon.admin_addr.unwrap();
    let body: String = (0..5)
        .map(|i| event("partner-a", i, &[("1", "1")]) + "\n")
        .collect();
    assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 5)
        .await
    );

    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"irisd_events_accepted_total{destination="partner-a"} 5"#,
        r#"irisd_events_delivered_total{destination="partner-a"} 5"#,
        r#"irisd_events_dead_lettered_total{destination="partner-a"} 0"#,
        r#"irisd_publish_retries_total{destination="partner-a"} 1"#,
        r#"irisd_publish_attempts_total{destination="partner-a",status_class="5xx"} 1"#,
        r#"irisd_publish_attempts_total{destination="partner-a",status_class="2xx"} 1"#,
        r#"irisd_token_fetches_total{destination="partner-a",outcome="ok"} 1"#,
        r#"irisd_spool_events{destination="partner-a"} 0"#,
        r#"irisd_publish_duration_seconds_count{destination="partner-a"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains("irisd_token_expires_in_seconds{destination=\"partner-a\"}"));
    assert!(text.contains("irisd_publish_bytes_total{destination=\"partner-a\",stage=\"sent\"}"));

    let (status, json) = get(admin, "/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["destinations"][0]["delivered"], 5);
    assert!(
        v["destinations"][0]["token"]["expires_in_s"]
            .as_u64()
            .unwrap()
            > 500
    );

    // Nothing secret, no user id.
    let token = env.mock.state.issued_token_values().pop().unwrap();
    for text in [&text, &json] {
        assert!(!text.contains(&token) && !text.contains(CLIENT_SECRET));
        assert!(!text.contains("dp-3"), "no user ids");
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("partner-a") && l.split_whitespace().nth(2) == Some("5")),
        "{table}"
    );

    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    daemon
        .admin
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(admin, "/readyz").await.0, 503);
    daemon.shutdown(Duration::from_secs(5)).await;
}

// /readyz means "this instance can take events now": a load balancer routes away from a full
// instance before its producers see 503s; /healthz ("alive") does not change.
#[tokio::test]
async fn readyz_is_not_ready_while_the_spool_is_full_and_healthz_stays_alive() {
    let env = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Faults::default()
        }
    })
    .await;
    let config = env
        .config_file()
        .admin("listen = \"127.0.0.1:0\"")
        .spool("max_bytes = 65536")
        .publish("linger_ms = 5")
        .retry("initial_ms = 50\nmax_delay_ms = 200")
        .load();
    let daemon = Daemon::start(&config).await.unwrap();
    let admin = daemon.admin_addr.unwrap();
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let mut refused = false;
    for round in 0..200u64 {
        let body: String = (0..20)
            .map(|i| event("partner-a", round * 100 + i, &[("1", "1")]) + "\n")
            .collect();
        if post_events(daemon.intake_addr, body).await.0 == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the spool filled up");
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("full") && body.contains("spool.max_bytes"),
        "{body}"
    );
    assert_eq!(get(admin, "/healthz").await.0, 200);
    // The partner is back: the spool drains and the instance is ready again.
    env.mock.state.set_faults(Faults::default()).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || daemon
            .spool
            .not_ready()
            .is_none())
        .await,
        "ready again once drained"
    );
    assert_eq!(get(admin, "/readyz").await.0, 200);
    daemon.shutdown(Duration::from_secs(5)).await;
}
