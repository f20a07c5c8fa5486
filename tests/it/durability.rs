//! Never lose an accepted event: partner outages, 429 with Retry-After, token revocation,
//! permanent rejections and dead letters, the IRIS profile, and failing partners that must not
//! stall others. Real TLS, real disk (the spool lives in each test's temporary directory).

use std::time::Duration;

use crate::common::*;
use irisd::daemon::Daemon;
use irisd::mock::faults::Faults;
use irisd::spool::DeadLetterStore;

const FAST_RETRY: &str = "initial_ms = 50\nmax_delay_ms = 300";

fn events(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|i| event("partner-a", i, &[("1", "1")]) + "\n")
        .collect()
}

#[tokio::test]
async fn partner_503_for_a_while_then_recovers_everything_delivered_nothing_dead_lettered() {
    let env = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 10", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 50)).await.0, 202);
    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(10), || state
            .stats()
            .injected
            .get("status_503")
            .copied()
            .unwrap_or(0)
            >= 10)
        .await
    );
    env.mock.state.set_faults(Faults::default()).unwrap();
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(15), || m.snapshot().delivered_users
            == 50)
        .await
    );
    let snap = m.snapshot();
    assert_eq!(snap.dead_lettered_users, 0);
    assert!(snap.retries >= 10);
    assert_eq!(env.mock.state.stats().unique_users, 50);
    daemon.shutdown(Duration::from_secs(5)).await;
    // Everything acknowledged left the spool.
    assert_eq!(
        DeadLetterStore::open(&config.spool.path)
            .unwrap()
            .pending()
            .unwrap(),
        []
    );
}

#[tokio::test]
async fn retry_after_2_seconds_is_honoured() {
    let env = mock(|c| {
        c.faults = Faults {
            fail_next: 1,
            error_status: 429,
            retry_after_secs: Some(2),
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 0", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 1)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    let publishes: Vec<_> = env
        .mock
        .state
        .journal()
        .into_iter()
        .filter(|j| j.path == "/segments/aam")
        .collect();
    assert_eq!(publishes.len(), 2, "{publishes:?}");
    assert_eq!((publishes[0].status, publishes[1].status), (429, 200));
    let gap = publishes[1].at_ms - publishes[0].at_ms;
    assert!(
        gap >= 1990,
        "the retry came {gap} ms after the 429, before Retry-After: 2"
    );
    // The same batch, the same request id on the retry.
    let ids: Vec<_> = publishes
        .iter()
        .map(|j| {
            j.headers
                .iter()
                .find(|(k, _)| k == "x-request-id")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn token_revoked_mid_stream_costs_at_most_one_failed_request_per_in_flight_batch() {
    let env = mock(|c| {
        c.token_ttl_secs = None;
        c.faults = Faults {
            latency_ms: 5,
            ..Faults::default()
        };
    })
    .await;
    let max_in_flight = 4;
    let config = env.config_with(
        &format!("linger_ms = 5\nmax_in_flight = {max_in_flight}"),
        "",
        "",
        FAST_RETRY,
    );
    let daemon = Daemon::start(&config).await.unwrap();
    let m = daemon.destinations[0].metrics.clone();
    for round in 0..20u64 {
        assert_eq!(
            post_events(daemon.intake_addr, events(round * 100, 25))
                .await
                .0,
            202
        );
        if round == 10 {
            env.mock.state.revoke_all_tokens();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        wait_until(Duration::from_secs(15), || m.snapshot().delivered_users
            == 500)
        .await
    );
    let stats = env.mock.state.stats();
    let failed = stats
        .publish_rejections
        .get("invalid_token")
        .copied()
        .unwrap_or(0);
    assert!(
        (1..=max_in_flight).contains(&(failed as usize)),
        "{failed} failed requests"
    );
    assert_eq!(
        stats.tokens_issued, 2,
        "one refresh for all in-flight batches"
    );
    assert_eq!(stats.unique_users, 500);
    assert_eq!(m.snapshot().dead_lettered_users, 0);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn permanent_400_is_dead_lettered_with_the_reason_and_dlq_replay_delivers_it() {
    let env = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 400,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 10", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(7, 3)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().dead_lettered_users
            == 3)
        .await
    );
    assert_eq!(m.snapshot().retries, 0, "a permanent answer is not retried");

    let store = DeadLetterStore::open(&config.spool.path).unwrap();
    let dead = store.list(Some("partner-a"), 10).unwrap();
    assert_eq!(dead.len(), 3);
    for d in &dead {
        assert_eq!(d.status, Some(400));
        assert!(d.reason.contains("partner answered 400"), "{}", d.reason);
        assert_eq!(d.attempts, 1);
        assert!(d.last_attempt_ms >= d.first_attempt_ms);
    }

    // The partner is fixed; the operator replays with the CLI while the daemon runs.
    env.mock.state.set_faults(Faults::default()).unwrap();
    let config_path = env.dir.path().join("irisd.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["dlq", "list", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && listing.contains("3 dead letter(s)")
            && listing.contains("partner answered 400"),
        "{listing}"
    );
    // A limited listing says how much it leaves out.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["dlq", "list", "--limit", "2", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("showing 2 of 3 dead letter(s)"),
        "{listing}"
    );
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.contains("partner answered 400"))
            .count(),
        2
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["dlq", "replay", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 dead letter(s) put back"));
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 3)
        .await
    );
    let seen = env.mock.state.user_counts();
    for uuid in ["7", "8", "9"] {
        assert_eq!(seen.get(uuid), Some(&1), "{uuid}");
    }
    assert!(store.list(None, 10).unwrap().is_empty());
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn iris_profile_counts_only_200_retries_once_then_dead_letters() {
    let env = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 10", "", "", FAST_RETRY);
    assert!(config.destinations[0].publish.success_status.is_empty());
    let config = env
        .config_file()
        .destination("profile = \"iris\"")
        .publish("linger_ms = 10")
        .retry(FAST_RETRY)
        .load();
    let d = &config.destinations[0];
    assert_eq!(
        (
            d.publish.max_users,
            d.publish.timeout.as_millis(),
            d.retry.max_attempts
        ),
        (10, 3000, Some(2))
    );
    assert_eq!(d.publish.success_status, [200]);

    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 2)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().dead_lettered_users
            == 2)
        .await
    );
    assert_eq!(
        env.mock.state.stats().injected["status_503"],
        2,
        "one attempt and one retry"
    );
    let dead = DeadLetterStore::open(&config.spool.path)
        .unwrap()
        .list(None, 10)
        .unwrap();
    assert!(
        dead[0].reason.contains("gave up after 2 attempts"),
        "{}",
        dead[0].reason
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_failing_partner_neither_stalls_another_nor_gets_hammered() {
    let failing = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        }
    })
    .await;
    let healthy = mock(|_| {}).await;
    let mut config = failing.config_with(
        "linger_ms = 5\nmax_users = 1\nmax_in_flight = 8",
        "",
        "",
        "initial_ms = 100\nmax_delay_ms = 500\ncircuit_threshold = 3",
    );
    let mut good = healthy.config("linger_ms = 5", "").destinations.remove(0);
    good.name = "partner-b".into();
    config.destinations.push(good);
    let daemon = Daemon::start(&config).await.unwrap();
    let body: String = (0..40u64)
        .map(|i| {
            event("partner-a", i, &[("1", "1")])
                + "\n"
                + &event("partner-b", 100 + i, &[("1", "1")])
                + "\n"
        })
        .collect();
    assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
    let b = daemon.destinations[1].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(5), || b.snapshot().delivered_users
            == 40)
        .await,
        "the healthy partner got everything"
    );
    let before = failing.mock.state.stats().publish_requests;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = failing.mock.state.stats().publish_requests - before;
    // Circuit open: one probe at a time, each after a backoff of up to 500 ms. Without it,
    // 8 batches in flight retrying every <=500 ms would be 32+ requests in 2 s.
    assert!(during <= 12, "{during} requests to a dead partner in 2 s");
    assert!(during >= 1, "it keeps probing");
    assert_eq!(
        daemon.destinations[0]
            .metrics
            .snapshot()
            .dead_lettered_users,
        0
    );
    daemon.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn connections_closed_without_an_answer_are_retried_until_delivered() {
    let env = mock(|c| {
        c.faults = Faults {
            reset_rate: 0.5,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 5\nmax_users = 2", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 40)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(20), || m.snapshot().delivered_users
            == 40)
        .await
    );
    let stats = env.mock.state.stats();
    assert!(stats.injected["closed"] >= 1, "{stats:?}");
    assert_eq!(stats.unique_users, 40);
    assert_eq!(m.snapshot().dead_lettered_users, 0);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn token_endpoint_down_then_back_delivers_everything() {
    let env = mock(|c| {
        c.faults = Faults {
            token_down: true,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 5", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 5)).await.0, 202);
    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(5), || state
            .stats()
            .injected
            .contains_key("token_down"))
        .await
    );
    let m = daemon.destinations[0].metrics.clone();
    assert_eq!(m.snapshot().delivered_users, 0);
    env.mock.state.set_faults(Faults::default()).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || m.snapshot().delivered_users
            == 5)
        .await
    );
    assert!(
        m.snapshot()
            .token_fetches
            .get("temporarily_unavailable")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rotating_a_client_secret_revokes_its_tokens_and_the_old_secret() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let config = env.config_with("linger_ms = 5", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 1)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    let new_secret = env.mock.state.rotate_secret(CLIENT_ID, None).unwrap();
    assert!(
        env.mock.state.issued_token_values().is_empty(),
        "tokens issued before are revoked"
    );
    // The daemon still has the old secret: its token is rejected and it cannot get a new one.
    assert_eq!(post_events(daemon.intake_addr, events(2, 1)).await.0, 202);
    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(10), || state
            .stats()
            .token_rejections
            .contains_key("invalid_client"))
        .await
    );
    assert_eq!(m.snapshot().delivered_users, 1);
    daemon.shutdown(Duration::from_millis(200)).await;
    // With the new secret, the event waiting in the spool goes out.
    std::fs::write(env.dir.path().join("secret"), &new_secret).unwrap();
    let config = irisd::config::Config::load(&env.dir.path().join("irisd.toml")).unwrap();
    let daemon = Daemon::start(&config).await.unwrap();
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    assert_eq!(env.mock.state.user_counts().get("2"), Some(&1));
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn answers_cut_mid_body_are_retried_and_counted_as_duplicates_at_the_partner() {
    let env = mock(|c| {
        c.faults = Faults {
            truncate_rate: 0.5,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 5\nmax_users = 2", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 30)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(20), || m.snapshot().delivered_users
            == 30)
        .await
    );
    let stats = env.mock.state.stats();
    assert!(stats.injected["truncated"] >= 1, "{stats:?}");
    assert_eq!(stats.unique_users, 30);
    assert!(
        stats.duplicate_users >= 1,
        "a cut answer means the partner saw the batch and we sent it again"
    );
    assert!(m.snapshot().attempts_by_class_total() > 15);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_dribbling_partner_times_out_and_is_retried_until_it_answers_in_time() {
    // About 60 bytes of answer, 8 bytes every 100 ms: ~700 ms, over the 300 ms timeout.
    let env = mock(|c| {
        c.faults = Faults {
            dribble_ms: 100,
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with("linger_ms = 5\ntimeout_ms = 300", "", "", FAST_RETRY);
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 1)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(wait_until(Duration::from_secs(5), || m.snapshot().retries >= 2).await);
    assert_eq!(
        m.snapshot().delivered_users,
        0,
        "never complete within the timeout"
    );
    let none = m.attempts_by_class[0].load(std::sync::atomic::Ordering::Relaxed);
    assert!(none >= 2, "timeouts count as no answer: {none}");
    // A partner that dribbles fast enough is fine.
    env.mock
        .state
        .set_faults(Faults {
            dribble_ms: 5,
            ..Faults::default()
        })
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn after_a_long_outage_probes_follow_the_partners_retry_after() {
    // The backoff grows toward max_delay (60 s); the partner says "come back in 1 s". Once the
    // circuit is open, probes come every Retry-After (not sooner), not at the grown backoff.
    let env = mock(|c| {
        c.faults = Faults {
            fail_next: 10,
            error_status: 503,
            retry_after_secs: Some(1),
            ..Faults::default()
        }
    })
    .await;
    let config = env.config_with(
        "linger_ms = 0\nmax_in_flight = 1",
        "",
        "",
        "initial_ms = 2000\nmax_delay_ms = 60000\ncircuit_threshold = 2",
    );
    let daemon = Daemon::start(&config).await.unwrap();
    assert_eq!(post_events(daemon.intake_addr, events(1, 1)).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(60), || m.snapshot().delivered_users
            == 1)
        .await,
        "delivered once the partner answers"
    );
    let at: Vec<u64> = env
        .mock
        .state
        .journal()
        .into_iter()
        .filter(|j| j.path == "/segments/aam")
        .map(|j| j.at_ms)
        .collect();
    assert_eq!(at.len(), 11, "10 failures, then the success");
    // From the third attempt on the circuit is open: every gap is the partner's second.
    for w in at[2..].windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (990..5_000).contains(&gap),
            "probes {gap} ms apart, Retry-After said 1 s: {at:?}"
        );
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}
