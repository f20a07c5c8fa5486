//! The real binary under `kill -9` and SIGTERM while producers are posting: every event the
//! intake acknowledged (202) reaches the partner, possibly twice, never not at all. Also: a
//! damaged spool file stops the daemon with an error naming it.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use irisd::mock::faults::Faults;

async fn wait_for_all(env: &Env, acked: &[u64], timeout: Duration) -> (usize, u64) {
    let state = env.mock.state.clone();
    let want: Vec<String> = acked.iter().map(u64::to_string).collect();
    let ok = wait_until(timeout, || {
        let seen = state.user_counts();
        want.iter().all(|u| seen.contains_key(u))
    })
    .await;
    let seen = state.user_counts();
    let missing = want.iter().filter(|u| !seen.contains_key(u)).count();
    assert!(
        ok,
        "{missing} of {} acknowledged events never reached the partner",
        want.len()
    );
    let duplicates: u64 = seen.values().map(|&n| u64::from(n) - 1).sum();
    (seen.len(), duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_a_random_moment_loses_nothing_acknowledged() {
    let env = mock(|c| {
        c.token_ttl_secs = None;
        c.faults = Faults {
            latency_ms: 2,
            latency_jitter_ms: 5,
            ..Faults::default()
        };
    })
    .await;
    let _ = env.config_with(
        "linger_ms = 5\nmax_in_flight = 4",
        "",
        "",
        "initial_ms = 50\nmax_delay_ms = 300",
    );
    let config = env.dir.path().join("irisd.toml");
    let seed = fastrand::u64(..);
    let kill_after = Duration::from_millis(fastrand::Rng::with_seed(seed).u64(300..1500));
    eprintln!("crash test: seed {seed}, kill -9 after {kill_after:?}");

    let (mut child, addr) = spawn_daemon(&config, 5);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(produce(addr, 1, 20, stop.clone()));
    tokio::time::sleep(kill_after).await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = load.await.unwrap();
    assert!(
        !acked.is_empty(),
        "some events were acknowledged before the kill"
    );
    let before_restart = env.mock.state.stats().unique_users;

    let (mut child, _) = spawn_daemon(&config, 5);
    let (unique, duplicates) = wait_for_all(&env, &acked, Duration::from_secs(60)).await;
    eprintln!(
        "crash test: {} acknowledged, {before_restart} at the partner before the restart, {unique} after; {duplicates} duplicate deliveries",
        acked.len()
    );
    assert!(unique >= acked.len());
    child.sigterm();
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_0_within_the_grace_period_and_restart_delivers_the_rest() {
    // A slow partner and one request in flight: the spool cannot drain within the grace period.
    let env = mock(|c| {
        c.token_ttl_secs = None;
        c.faults = Faults {
            latency_ms: 40,
            ..Faults::default()
        };
    })
    .await;
    let _ = env.config("linger_ms = 5\nmax_in_flight = 1", "");
    let config = env.dir.path().join("irisd.toml");
    let grace = 1;
    let (child, addr) = spawn_daemon(&config, grace);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(produce(addr, 1, 20, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    child.sigterm();
    let child = Arc::new(Mutex::new(child));
    let c = child.clone();
    let status = tokio::task::spawn_blocking(move || c.lock().unwrap().0.wait().unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = load.await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(grace + 4), "exit took {took:?}");
    let at_shutdown = env.mock.state.stats().unique_users as usize;
    assert!(
        at_shutdown < acked.len(),
        "the test wants events left in the spool ({at_shutdown} of {})",
        acked.len()
    );

    // The partner is fast again; the restarted daemon sends what the spool kept.
    env.mock.state.set_faults(Faults::default()).unwrap();
    let (mut child, _) = spawn_daemon(&config, 5);
    let (unique, duplicates) = wait_for_all(&env, &acked, Duration::from_secs(60)).await;
    eprintln!("sigterm test: {} acknowledged, {at_shutdown} delivered before the restart, {unique} after, {duplicates} duplicates", acked.len());
    child.sigterm();
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_damaged_spool_file_stops_the_daemon_with_its_path() {
    let env = mock(|_| {}).await;
    let config = env.config("", "");
    std::fs::write(&config.spool.path, vec![0x42u8; 16 * 1024]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["run", "--config"])
        .arg(env.dir.path().join("irisd.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&config.spool.path.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("not a database"), "{stderr}");
    // Nothing was truncated or replaced.
    assert_eq!(
        std::fs::read(&config.spool.path).unwrap(),
        vec![0x42u8; 16 * 1024]
    );
}
