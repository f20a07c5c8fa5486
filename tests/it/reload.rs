//! Configuration reload: destinations added, removed and changed (rotated credentials) take
//! effect without a restart and without losing spooled events; a bad new configuration is
//! refused and the running one stays in force (in-process and through SIGHUP).

use std::time::Duration;

use crate::common::*;
use irisd::config::Config;
use irisd::daemon::{Daemon, ReloadError};

/// The env's config text with a second destination "partner-b" (same mock).
fn with_partner_b(env: &Env) -> String {
    add_partner_b(&std::fs::read_to_string(env.dir.path().join("irisd.toml")).unwrap())
}

fn add_partner_b(text: &str) -> String {
    let dest = text.split_once("[[destination]]").unwrap().1;
    format!(
        "{text}\n[[destination]]{}",
        dest.replace("name = \"partner-a\"", "name = \"partner-b\"")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_changes_and_removes_destinations_without_losing_events() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let config = env.config("linger_ms = 5", "");
    let mut daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(
        post_events(daemon.intake_addr, event("partner-a", 1, &[("1", "1")]))
            .await
            .0,
        202
    );
    let a = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || a.snapshot().delivered_users
            == 1)
        .await
    );

    // The partner reauthorizes our client (new secret); we rotate and add partner-b.
    let new_secret = env.mock.state.rotate_secret(CLIENT_ID, None).unwrap();
    std::fs::write(env.dir.path().join("secret"), &new_secret).unwrap();
    let path = env.dir.path().join("irisd2.toml");
    std::fs::write(&path, with_partner_b(&env)).unwrap();
    let summary = daemon.reload(&Config::load(&path).unwrap()).await.unwrap();
    assert_eq!(
        summary.changed,
        ["partner-a"],
        "rotated credentials are a change"
    );
    assert_eq!(summary.added, ["partner-b"]);

    let body = format!(
        "{}\n{}\n",
        event("partner-a", 2, &[("1", "1")]),
        event("partner-b", 3, &[("1", "1")])
    );
    assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
    let state = env.mock.state.clone();
    assert!(wait_until(Duration::from_secs(10), || state.stats().unique_users == 3).await);
    assert!(
        env.mock.state.stats().tokens_issued >= 3,
        "new tokens with the new secret"
    );

    // Remove partner-b while it has spooled events: they stay in the spool.
    env.mock
        .state
        .set_faults(irisd::mock::faults::Faults {
            error_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        post_events(daemon.intake_addr, event("partner-b", 4, &[("1", "1")]))
            .await
            .0,
        202
    );
    let summary = daemon
        .reload(&Config::load(&env.dir.path().join("irisd.toml")).unwrap())
        .await
        .unwrap();
    assert_eq!(summary.removed, ["partner-b"]);
    assert_eq!(daemon.spool.events("partner-b"), 1, "kept in the spool");
    let (status, _, text) =
        post_events(daemon.intake_addr, event("partner-b", 5, &[("1", "1")])).await;
    assert_eq!(status, 404, "{text}");
    daemon.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn settings_that_need_a_restart_are_refused_and_nothing_changes() {
    let env = mock(|_| {}).await;
    let config = env.config("linger_ms = 5", "");
    let mut daemon = Daemon::start(&config).await.unwrap();
    let mut moved = config.clone();
    moved.spool.path = env.dir.path().join("elsewhere.sqlite");
    assert!(matches!(
        daemon.reload(&moved).await,
        Err(ReloadError::NeedsRestart("spool.path"))
    ));
    assert_eq!(
        post_events(daemon.intake_addr, event("partner-a", 1, &[("1", "1")]))
            .await
            .0,
        202
    );
    let a = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || a.snapshot().delivered_users
            == 1)
        .await
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_config_keeps_the_old_one_running() {
    let env = mock(|_| {}).await;
    let _ = env.config("linger_ms = 5", "");
    let path = env.dir.path().join("irisd.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let (child, addr) = spawn_daemon(&path, 5);
    let hup = |pid: u32| {
        assert!(std::process::Command::new("sh")
            .args(["-c", &format!("kill -HUP {pid}")])
            .status()
            .unwrap()
            .success());
    };
    // A broken file: refused, the daemon keeps running the old configuration.
    std::fs::write(
        &path,
        good.replace("linger_ms = 5", "linger_ms = 5\nlinger = 1"),
    )
    .unwrap();
    hup(child.0.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post_events(addr, event("partner-a", 1, &[("1", "1")]))
            .await
            .0,
        202
    );
    let state = env.mock.state.clone();
    assert!(wait_until(Duration::from_secs(10), || state.stats().unique_users == 1).await);
    // A good one with partner-b: applied.
    std::fs::write(&path, add_partner_b(&good)).unwrap();
    hup(child.0.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while post_events(addr, event("partner-b", 2, &[("1", "1")]))
        .await
        .0
        != 202
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partner-b never became available"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(wait_until(Duration::from_secs(10), || state.stats().unique_users == 2).await);
    child.sigterm();
}
