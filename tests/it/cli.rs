//! The `irisd` binary itself: `demo`, `check-config`, and `run` with a signal-driven shutdown.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn irisd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_irisd"))
}

#[test]
fn demo_delivers_everything_it_accepted_and_says_so() {
    let out = irisd().args(["demo", "--seconds", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK: every accepted event was delivered"),
        "{stdout}"
    );
    let field = |name: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap();
        line.split_whitespace()
            .nth(name.split_whitespace().count())
            .unwrap()
            .parse()
            .unwrap()
    };
    let accepted = field("events accepted");
    assert!(accepted > 0);
    assert_eq!(field("events delivered"), accepted);
    assert_eq!(field("partner saw"), accepted);
}

#[test]
fn check_config_lists_destinations_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("irisd.toml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/irisd.example.toml"
    ))
    .unwrap();
    std::fs::write(&path, example).unwrap();
    let out = irisd()
        .arg("check-config")
        .arg(&path)
        .env("PARTNER_A_SECRET", "very-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("destination \"partner-a\""), "{stdout}");
    assert!(stdout.contains("client_secret=***"), "{stdout}");
    assert!(!stdout.contains("very-secret-value"));

    let out = irisd()
        .arg("check-config")
        .arg(&path)
        .env_remove("PARTNER_A_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("client_secret_env"))
        .unwrap()
        + 1;
    let expected = format!(
        "irisd.toml:{line}: destination[0].auth.client_secret_env: environment variable PARTNER_A_SECRET is not set"
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test]
async fn run_delivers_and_exits_0_on_sigterm() {
    let env = mock(|_| {}).await;
    let _ = env.config("linger_ms = 10", "");
    let (child, addr) = spawn_daemon(&env.dir.path().join("irisd.toml"), 10);
    let (status, _, _) = post_events(addr, event("partner-a", 77, &[("5", "1")])).await;
    assert_eq!(status, 202);
    assert!(
        wait_until(Duration::from_secs(10), || env
            .mock
            .state
            .stats()
            .users_accepted
            == 1)
        .await
    );
    child.sigterm();
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn json_logs_are_one_object_per_line_with_the_destination() {
    let out = irisd()
        .args(["--log-format", "json", "demo", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let token = logs
        .iter()
        .find(|l| l["fields"]["message"] == "obtained access token")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(token["fields"]["destination"], "demo-partner");
    assert_eq!(token["level"], "INFO");
    let bad = irisd()
        .args(["--log-format", "xml", "demo"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--log-format"));
}

#[test]
fn a_missing_config_file_is_named_once() {
    let out = irisd()
        .args(["check-config", "/nonexistent/irisd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/irisd.toml: cannot read config file"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the OS error once: {stderr}"
    );
}

#[test]
fn version_completions_and_manual_come_from_the_command_line_definition() {
    let out = irisd().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // `irisd 0.1.0 (target commit date)` and the optional features compiled in.
    let first = version.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("irisd {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let inner = first.split_once('(').unwrap().1.trim_end_matches(')');
    let parts: Vec<&str> = inner.split(' ').collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(
        parts[0].contains("linux") || parts[0].contains('-'),
        "{version}"
    );
    assert!(
        parts[2].len() == 10 && parts[2].as_bytes()[4] == b'-',
        "{version}"
    );
    assert!(version.contains("features: "), "{version}");
    for shell in ["bash", "zsh", "fish"] {
        let out = irisd().args(["completions", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        for sub in [
            "run",
            "mock-partner",
            "check-config",
            "dlq",
            "verify",
            "batch",
        ] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = irisd()
        .arg("man")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.path().join("irisd-run.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(
        page.contains("grace"),
        "the run page documents --grace-secs"
    );
}
