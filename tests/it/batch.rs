//! Batch delivery against the real mock partner: multi-file batches (CSV, NDJSON, gzip) arrive
//! complete and grouped per user, rejects files, rate limits, re-runs, format failures, and a
//! `kill -9` mid-file that resumes after the last acknowledged chunk.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use irisd::config::Config;
use irisd::mock::faults::Faults;
use irisd::shutdown::RunState;

/// The test env's config with a `[destination.batch]` section.
fn batch_config(env: &Env, publish_extra: &str, batch: &str) -> Config {
    env.config_file()
        .publish(publish_extra)
        .section(&format!("[destination.batch]\n{batch}"))
        .load()
}

fn write(path: &Path, text: &str, gzip: bool) {
    let bytes = if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    } else {
        text.as_bytes().to_vec()
    };
    std::fs::write(path, bytes).unwrap();
}

/// CSV rows for users `from..to`, user i having (i % 3) + 1 segments on adjacent rows.
fn csv(from: u64, to: u64) -> String {
    let mut s = String::from("aam_uuid,data_partner_uuid,segment_id,status,time\n");
    for i in from..to {
        for seg in 0..(i % 3) + 1 {
            s.push_str(&format!(
                "{i},dp-{i},{},1,2016-07-27T16:17:22Z\n",
                100 + seg
            ));
        }
    }
    s
}

fn ndjson(from: u64, to: u64) -> String {
    (from..to)
        .map(|i| {
            let segs: Vec<String> = (0..(i % 3) + 1)
                .map(|s| format!(r#"{{"segment_id":"{}","status":"0"}}"#, 200 + s))
                .collect();
            format!(
                r#"{{"aam_uuid":"{i}","data_partner_uuid":"dp-{i}","segments":[{}]}}"#,
                segs.join(",")
            ) + "\n"
        })
        .collect()
}

fn running() -> tokio::sync::watch::Receiver<RunState> {
    let (tx, rx) = tokio::sync::watch::channel(RunState::Running);
    std::mem::forget(tx);
    rx
}

/// Segments per AAM_UUID as the mock received them (over all accepted payloads).
fn segments_seen(env: &Env) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in env.mock.state.received() {
        for u in r.payload.users {
            *out.entry(u.aam_uuid).or_default() += u.segments.len();
        }
    }
    out
}

#[tokio::test]
async fn a_multi_file_batch_arrives_complete_and_grouped_per_user() {
    let env = mock(|c| c.payload_capacity = 10_000).await;
    let config = batch_config(&env, "", "max_users = 50\nchunk_users = 120");
    let dir = env.dir.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = vec![
        dir.join("a.csv"),
        dir.join("b.csv.gz"),
        dir.join("c.ndjson"),
        dir.join("d.jsonl.gz"),
    ];
    write(&files[0], &csv(1000, 1300), false);
    write(&files[1], &csv(2000, 2250), true);
    write(&files[2], &ndjson(3000, 3200), false);
    write(&files[3], &ndjson(4000, 4100), true);

    let report = irisd::batch::run_now(&config, "partner-a", files.clone(), running())
        .await
        .unwrap();
    assert!(report.complete(), "{report:#?}");
    assert_eq!(report.users, 300 + 250 + 200 + 100);
    assert_eq!(report.rejects, 0);
    let seen = segments_seen(&env);
    assert_eq!(seen.len(), 850);
    for (range, _) in [
        (1000..1300, 'c'),
        (2000..2250, 'c'),
        (3000..3200, 'n'),
        (4000..4100, 'n'),
    ] {
        for i in range {
            assert_eq!(
                seen.get(&i.to_string()),
                Some(&((i % 3) as usize + 1)),
                "user {i}"
            );
        }
    }
    // Adjacent rows of one user are one Users entry: the mock saw each user exactly once.
    assert_eq!(env.mock.state.stats().duplicate_users, 0);
    assert!(env
        .mock
        .state
        .received()
        .iter()
        .all(|r| r.payload.users.len() <= 50));

    // Delivered files are not sent again.
    let again = irisd::batch::run_now(&config, "partner-a", files, running())
        .await
        .unwrap();
    assert!(
        again.files.iter().all(|f| f.status == "skipped"),
        "{again:#?}"
    );
    assert_eq!(env.mock.state.stats().unique_users, 850);
}

#[tokio::test]
async fn bad_lines_go_to_a_rejects_file_with_line_and_reason() {
    let env = mock(|_| {}).await;
    let config = batch_config(&env, "", "");
    let file = env.dir.path().join("mixed.csv");
    write(
        &file,
        "aam_uuid,data_partner_uuid,segment_id,status,time\n\
         1,dp,10,1,\n\
         abc,dp,10,1,\n\
         2,dp,10,9,\n\
         3,dp\n\
         4,dp,10,1,\n",
        false,
    );
    let report = irisd::batch::run_now(&config, "partner-a", vec![file.clone()], running())
        .await
        .unwrap();
    assert!(report.complete());
    assert_eq!((report.users, report.rejects), (2, 3));
    let rejects = std::fs::read_to_string(env.dir.path().join("mixed.csv.rejects")).unwrap();
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["line"], 3);
    assert!(lines[0]["reason"].as_str().unwrap().contains("aam_uuid"));
    assert_eq!(lines[0]["text"], "abc,dp,10,1,");
    assert_eq!(lines[1]["line"], 4);
    assert!(lines[1]["reason"].as_str().unwrap().contains("status"));
    assert_eq!(lines[2]["line"], 5);
    assert!(lines[2]["reason"].as_str().unwrap().contains("2 fields"));
    let seen = env.mock.state.user_counts();
    assert_eq!(
        (seen.get("1"), seen.get("4"), seen.len()),
        (Some(&1), Some(&1), 2)
    );
}

#[tokio::test]
async fn a_file_not_in_its_declared_format_fails_whole_and_sends_nothing() {
    let env = mock(|_| {}).await;
    let config = batch_config(&env, "", "");
    let file = env.dir.path().join("wrong.csv");
    write(&file, "id;segment\n1;2\n", false);
    let gz = env.dir.path().join("notgzip.csv.gz");
    write(&gz, &csv(1, 5), false);
    let report = irisd::batch::run_now(&config, "partner-a", vec![file, gz], running())
        .await
        .unwrap();
    assert!(!report.complete());
    assert_eq!(report.files[0].status, "failed");
    assert!(
        report.files[0]
            .error
            .as_ref()
            .unwrap()
            .contains("must be the header"),
        "{report:#?}"
    );
    assert_eq!(report.files[1].status, "failed");
    assert!(
        report.files[1].error.as_ref().unwrap().contains("gzip"),
        "{report:#?}"
    );
    assert_eq!(env.mock.state.stats().publish_requests, 0);
}

#[tokio::test]
async fn the_requests_per_second_limit_is_honoured() {
    let env = mock(|_| {}).await;
    let config = batch_config(
        &env,
        "",
        "max_users = 1\nrequests_per_second = 10\nmax_in_flight = 4",
    );
    let file = env.dir.path().join("r.csv");
    write(&file, &csv(1, 26), false);
    let started = std::time::Instant::now();
    let report = irisd::batch::run_now(&config, "partner-a", vec![file], running())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.requests, 25);
    // A burst of 10, then one every 100 ms: the 25th cannot start before 1.5 s. (A bound
    // below only: a loaded machine makes it later, never sooner. The partner's timestamps are
    // no measure: the first request also waits for a token and a TLS handshake.)
    assert!(
        took >= Duration::from_millis(1490),
        "25 requests at 10/s after a burst of 10 took {took:?}"
    );
}

#[tokio::test]
async fn a_file_that_changes_while_half_delivered_is_an_error_not_a_resend() {
    let env = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Faults::default()
        }
    })
    .await;
    let config = batch_config(&env, "", "chunk_users = 10\nmax_users = 10");
    let file = env.dir.path().join("grow.csv");
    write(&file, &csv(1, 100), false);
    // Stop the run while its first chunk is being retried: the file stays "running".
    let (tx, rx) = tokio::sync::watch::channel(RunState::Running);
    let run = tokio::spawn({
        let config = config.clone();
        let file = file.clone();
        async move {
            irisd::batch::run_now(&config, "partner-a", vec![file], rx)
                .await
                .unwrap()
        }
    });
    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(5), || state.stats().publish_requests
            > 0)
        .await
    );
    tx.send(RunState::Stop).unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.files[0].status, "interrupted");
    env.mock.state.set_faults(Faults::default()).unwrap();
    write(&file, &csv(1, 200), false);
    let report = irisd::batch::run_now(&config, "partner-a", vec![file], running())
        .await
        .unwrap();
    assert_eq!(report.files[0].status, "failed");
    assert!(
        report.files[0]
            .error
            .as_ref()
            .unwrap()
            .contains("changed after it was picked up"),
        "{report:#?}"
    );
    assert_eq!(env.mock.state.stats().users_accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_file_resumes_after_the_last_acknowledged_chunk() {
    let env = mock(|c| {
        c.token_ttl_secs = None;
        c.faults = Faults {
            latency_ms: 10,
            ..Faults::default()
        };
    })
    .await;
    let chunk = 500u64;
    let _ = batch_config(
        &env,
        "",
        &format!("max_users = 50\nchunk_users = {chunk}\nmax_in_flight = 2"),
    );
    let config = env.dir.path().join("irisd.toml");
    let file = env.dir.path().join("big.csv.gz");
    let users = 8000u64;
    write(&file, &csv(1, users + 1), true);
    let run = |report: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
            .args(["batch", "run", "--destination", "partner-a", "--config"])
            .arg(&config)
            .arg("--report")
            .arg(env.dir.path().join(report))
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = Proc(run("first.json"));
    let state = env.mock.state.clone();
    assert!(
        wait_until(Duration::from_secs(30), || state.stats().unique_users
            >= 2 * chunk + chunk / 2)
        .await
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill = env.mock.state.stats().unique_users;
    assert!(at_kill < users, "killed mid-file ({at_kill} of {users})");

    let mut second = Proc(run("second.json"));
    let status = tokio::task::spawn_blocking(move || second.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let stats = env.mock.state.stats();
    assert_eq!(stats.unique_users, users, "the file completed");
    eprintln!(
        "batch kill test: killed at {at_kill} users, {} duplicates (chunk {chunk})",
        stats.duplicate_users
    );
    assert!(
        stats.duplicate_users <= chunk,
        "{} duplicates, more than one chunk",
        stats.duplicate_users
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.path().join("second.json")).unwrap())
            .unwrap();
    assert!(
        report["files"][0]["resumed_at_line"].as_u64().unwrap() > 1,
        "{report}"
    );
    assert_eq!(report["files"][0]["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_batches_on_schedule_sharing_the_token_with_real_time() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let input = env.dir.path().join("drop");
    std::fs::create_dir_all(&input).unwrap();
    let config = batch_config(
        &env,
        "linger_ms = 5",
        &format!(
            "input = \"{}/*.csv\"\ncron = \"* * * * * *\"\ntime_zone = \"Europe/Berlin\"\nmove_done = true",
            input.display()
        ),
    );
    let daemon = irisd::daemon::Daemon::start(&config).await.unwrap();
    assert_eq!(
        post_events(daemon.intake_addr, event("partner-a", 1, &[("1", "1")]))
            .await
            .0,
        202
    );
    write(&input.join("today.csv"), &csv(100, 150), false);
    let state = env.mock.state.clone();
    assert!(wait_until(Duration::from_secs(10), || state.stats().unique_users == 51).await);
    assert_eq!(
        env.mock.state.stats().tokens_issued,
        1,
        "batch and real-time share the token"
    );
    assert!(
        wait_until(Duration::from_secs(5), || input
            .join("done/today.csv")
            .exists())
        .await
    );
    let reports = env.dir.path().join("batch-reports");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_dir(&reports)
            .map(|d| d.count() > 0)
            .unwrap_or(false))
        .await
    );
    let batch = daemon.destinations[0].batch_metrics.clone().unwrap();
    assert_eq!(batch.snapshot().delivered_users, 50);
    assert_eq!(daemon.destinations[0].metrics.snapshot().delivered_users, 1);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_events_go_out_while_a_long_batch_runs() {
    let env = mock(|c| {
        c.token_ttl_secs = None;
        c.faults = Faults {
            latency_ms: 20,
            ..Faults::default()
        };
    })
    .await;
    let input = env.dir.path().join("drop");
    std::fs::create_dir_all(&input).unwrap();
    let config = batch_config(
        &env,
        "linger_ms = 5",
        &format!(
            "input = \"{}/*.csv\"\ncron = \"* * * * * *\"\nmax_users = 10\nmax_in_flight = 1",
            input.display()
        ),
    );
    write(&input.join("big.csv"), &csv(1000, 3000), false);
    let daemon = irisd::daemon::Daemon::start(&config).await.unwrap();
    let batch = {
        let state = env.mock.state.clone();
        assert!(wait_until(Duration::from_secs(10), || state.stats().users_accepted > 0).await);
        daemon.destinations[0].batch_metrics.clone().unwrap()
    };
    assert_eq!(
        post_events(daemon.intake_addr, event("partner-a", 7, &[("1", "1")]))
            .await
            .0,
        202
    );
    let rt = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(2), || rt.snapshot().delivered_users
            == 1)
        .await
    );
    assert!(
        batch.snapshot().delivered_users < 2000,
        "real-time did not wait for the batch to finish"
    );
    daemon.shutdown(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn the_users_per_second_limit_is_honoured() {
    let env = mock(|_| {}).await;
    let config = batch_config(
        &env,
        "",
        "max_users = 10\nusers_per_second = 20\nmax_in_flight = 4",
    );
    let file = env.dir.path().join("u.csv");
    // 60 users (one entry each, whatever their segments): 6 requests of 10.
    write(&file, &csv(0, 60), false);
    let started = std::time::Instant::now();
    let report = irisd::batch::run_now(&config, "partner-a", vec![file], running())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!((report.users, report.requests), (60, 6));
    // A burst of 20 users (2 requests), then 10 users every 500 ms: the last request cannot
    // start before 2 s (a bound below only, as above).
    assert!(
        took >= Duration::from_millis(1990),
        "60 users at 20/s after a burst of 20 took {took:?}"
    );
}

// A scheduled job must notice more than "it ran": the exit code says whether lines were
// rejected or users dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_run_exits_with_distinct_codes_for_rejects_and_dead_letters() {
    let env = mock(|_| {}).await;
    let _ = batch_config(&env, "", "max_users = 10");
    let config = env.dir.path().join("irisd.toml");
    let report = env.dir.path().join("report.json");
    let run = move |file: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
            .args(["batch", "run", "--destination", "partner-a", "--config"])
            .arg(&config)
            .arg("--report")
            .arg(&report)
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let clean = env.dir.path().join("clean.csv");
    write(&clean, &csv(1, 21), false);
    let rejected = env.dir.path().join("rejected.csv");
    write(
        &rejected,
        &format!("{}not,a,valid,line\n", csv(21, 31)),
        false,
    );
    let dead = env.dir.path().join("dead.csv");
    write(&dead, &csv(31, 41), false);
    let (clean, rejected) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || (run(&clean), run(&rejected))
    })
    .await
    .unwrap();
    assert_eq!(clean.0, Some(0), "{}", clean.1);
    assert_eq!(rejected.0, Some(4), "{}", rejected.1);
    assert!(rejected.1.contains("REJECTED"), "{}", rejected.1);
    env.mock
        .state
        .set_faults(Faults {
            error_rate: 1.0,
            error_status: 400,
            ..Faults::default()
        })
        .unwrap();
    let dead = tokio::task::spawn_blocking(move || run(&dead))
        .await
        .unwrap();
    assert_eq!(dead.0, Some(3), "{}", dead.1);
    assert!(dead.1.contains("DEAD LETTERS"), "{}", dead.1);
}

// The batch's yield to real-time traffic: while the destination's real-time lane has work in
// flight, no batch request starts (for up to YIELD_MAX each); once it is idle, the batch goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_request_waits_while_real_time_work_is_in_flight() {
    use irisd::batch::runner::{run_files, BatchContext, Progress};
    let env = mock(|_| {}).await;
    let config = batch_config(&env, "", "max_users = 10\nmax_in_flight = 1");
    let d = &config.destinations[0];
    let realtime = std::sync::Arc::new(irisd::metrics::DestinationMetrics::default());
    let (sender, _) = irisd::delivery::build::build_sender(d, realtime.clone()).unwrap();
    let ctx = std::sync::Arc::new(BatchContext::new(
        d.name.clone(),
        sender,
        d.batch.clone().unwrap(),
        d.retry.clone(),
        false,
        std::sync::Arc::new(irisd::delivery::resolve::Circuit::new(&d.retry)),
        Some(realtime.clone()),
        config.spool.path.clone(),
    ));
    let file = env.dir.path().join("yield.csv");
    write(&file, &csv(1, 31), false);
    // Real-time work in flight from before the batch starts.
    realtime
        .in_flight_users
        .store(3, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move {
        run_files(
            ctx,
            &[file],
            std::sync::Arc::new(Progress::default()),
            running(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = env.mock.state.stats().publish_requests;
    // Only meaningful while this check came before YIELD_MAX ran out for the first request.
    if started.elapsed() < irisd::batch::runner::YIELD_MAX {
        assert_eq!(
            early, 0,
            "a batch request went out while real-time work was in flight"
        );
    }
    realtime
        .in_flight_users
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.users, report.requests), (30, 3));
    assert_eq!(env.mock.state.stats().unique_users, 30);
}
