//! `irisd bench` end to end (small sizes: speeds belong in BENCHMARKS.md, not in tests): it
//! runs the daemon as a child process, delivers every user, verifies the mock received exactly
//! what was sent, measures the ceiling in the same run and reports one JSON line.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "irisd bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

fn positive(r: &serde_json::Value, key: &str) -> f64 {
    let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} in {r}"));
    assert!(v > 0.0, "{key} = {v} in {r}");
    v
}

#[test]
fn realtime_bench_delivers_verifies_and_measures_the_ceiling() {
    let r = bench(&[
        "--users",
        "3000",
        "--users-per-request",
        "10",
        "--concurrency",
        "4",
        "--events-per-post",
        "250",
    ]);
    assert_eq!(r["mode"], "realtime");
    assert_eq!(r["users"], 3000);
    assert_eq!(r["verified"], true);
    assert_eq!(r["duplicates"], 0);
    let ours = positive(&r, "users_per_sec");
    let ceiling = positive(&r, "ceiling_users_per_sec");
    let ratio = positive(&r, "ratio_to_ceiling");
    assert!((ratio - ours / ceiling).abs() < 0.01, "{r}");
    // 3000 users at 10 per request: exactly 300 requests were acknowledged.
    assert!(
        (positive(&r, "requests_per_sec") * r["seconds"].as_f64().unwrap() - 300.0).abs() < 2.0
    );
    // gzip'd: fewer bytes sent than payload bytes.
    assert!(positive(&r, "mb_per_sec_sent") < positive(&r, "mb_per_sec_raw"));
    positive(&r, "latency_p99_ms");
    positive(&r, "daemon_cpu_s_per_million_users");
    positive(&r, "daemon_peak_rss_mb");
    // The bound on the ratio: stated only when the ceiling kept the cores busy, and then it
    // is the ceiling's CPU over the ceiling's plus the pre-build's, scaled by how busy.
    let busy = positive(&r, "ceiling_cores_busy");
    let ceiling_cpu = r["ceiling_cpu_s_per_million_users"].as_f64().unwrap();
    let prebuild_cpu = r["prebuild_cpu_s_per_million_users"].as_f64().unwrap();
    assert!(prebuild_cpu >= 0.0, "{r}");
    match r["ratio_bound"].as_f64() {
        Some(bound) => {
            // (`ceiling_cores_busy` is rounded to 0.01.)
            assert!(busy >= 0.895, "{r}");
            let expected = ceiling_cpu / (busy * (ceiling_cpu + prebuild_cpu));
            assert!((bound - expected).abs() < 0.03, "{r}");
        }
        None => assert!(busy < 0.905, "{r}"),
    }
}

#[test]
fn batch_bench_without_gzip_or_fsync() {
    let r = bench(&[
        "--mode",
        "batch",
        "--users",
        "5000",
        "--users-per-request",
        "1000",
        "--gzip-level",
        "0",
        "--durable",
        "false",
        "--no-ceiling",
    ]);
    assert_eq!(r["mode"], "batch");
    assert_eq!(r["verified"], true);
    assert_eq!(r["durable"], false);
    assert_eq!(r["mb_per_sec_sent"], r["mb_per_sec_raw"], "no gzip: {r}");
    assert!(r["ceiling_users_per_sec"].is_null());
    assert!(r["ratio_bound"].is_null() && r["prebuild_cpu_s_per_million_users"].is_null());
    assert!(
        r["latency_p50_ms"].is_null(),
        "no intake latency in batch mode"
    );
    positive(&r, "daemon_peak_rss_mb");
}

#[test]
fn bad_options_are_refused_with_the_option_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_irisd"))
        .args(["bench", "--users", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--users"));
}

#[test]
fn http2_is_negotiated_for_the_daemon_and_the_ceiling_when_asked() {
    // The bench fails unless every publish request of both runs reached the mock over
    // HTTP/2 (and, in the other tests, over HTTP/1.1 when not asked).
    let r = bench(&[
        "--users",
        "2000",
        "--users-per-request",
        "10",
        "--concurrency",
        "8",
        "--http2",
    ]);
    assert_eq!(r["http2"], true);
    assert_eq!(r["verified"], true);
    assert_eq!(r["duplicates"], 0);
    positive(&r, "ceiling_users_per_sec");
}
