//! `irisd verify` against the mock partner: all checks pass in its strict mode, and each
//! deliberately broken mode fails (or warns) the check it should, for the right reason.

use std::time::Duration;

use crate::common::*;
use irisd::mock::faults::Faults;
use irisd::oauth::Credentials;
use irisd::verify::{run, Check, Verdict, VerifyOptions};
use secrecy::SecretString;

fn options(env: &Env, secret: &str) -> VerifyOptions {
    VerifyOptions {
        token_url: env.mock.token_url().parse().unwrap(),
        publish_url: env.mock.publish_url().parse().unwrap(),
        credentials: Credentials::ClientSecret {
            client_id: CLIENT_ID.into(),
            secret: SecretString::from(secret.to_string()),
        },
        scope: None,
        method: http::Method::POST,
        ca_file: Some(env.ca()),
        timeout: Duration::from_millis(3000),
    }
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[tokio::test]
async fn every_check_passes_against_the_strict_mock() {
    let env = mock(|c| c.strict_content_type = true).await;
    let checks = run(&options(&env, CLIENT_SECRET)).await;
    for c in &checks {
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
    }
    assert!(checks.len() >= 10);
    assert!(find(&checks, "publish_accepted").latency_ms.is_some());
    assert_eq!(
        env.mock.state.stats().users_accepted,
        1,
        "one sample user was published"
    );
}

#[tokio::test]
async fn wrong_credentials_fail_the_token_check_and_everything_needing_a_token() {
    let env = mock(|_| {}).await;
    let checks = run(&options(&env, "not-the-secret")).await;
    let t = find(&checks, "token_request_accepted");
    assert_eq!(t.verdict, Verdict::Fail);
    assert!(t.evidence.contains("invalid_client"), "{t:?}");
    assert!(!t.evidence.contains("not-the-secret"));
    assert_eq!(find(&checks, "publish_accepted").verdict, Verdict::Fail);
    assert!(!irisd::verify::passed(&checks));
}

#[tokio::test]
async fn a_token_without_expires_in_is_a_warning() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let checks = run(&options(&env, CLIENT_SECRET)).await;
    assert_eq!(find(&checks, "token_expires_in").verdict, Verdict::Warn);
    assert!(irisd::verify::passed(&checks), "a warning is not a failure");
}

#[tokio::test]
async fn a_failing_or_slow_publish_endpoint_fails_its_checks() {
    let env = mock(|c| {
        c.faults = Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        }
    })
    .await;
    let checks = run(&options(&env, CLIENT_SECRET)).await;
    let p = find(&checks, "publish_accepted");
    assert_eq!(p.verdict, Verdict::Fail);
    assert!(p.evidence.starts_with("500"), "{p:?}");

    let slow = mock(|c| {
        c.faults = Faults {
            latency_ms: 400,
            ..Faults::default()
        }
    })
    .await;
    let mut opts = options(&slow, CLIENT_SECRET);
    opts.timeout = Duration::from_millis(200);
    let checks = run(&opts).await;
    assert_eq!(
        find(&checks, "publish_accepted").verdict,
        Verdict::Fail,
        "no answer in time"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_tls_check() {
    let env = mock(|_| {}).await;
    let mut opts = options(&env, CLIENT_SECRET);
    opts.ca_file = None;
    let checks = run(&opts).await;
    let tls = find(&checks, "tls_certificate");
    assert_eq!(tls.verdict, Verdict::Fail);
    assert!(
        tls.evidence.to_ascii_lowercase().contains("certificate"),
        "{tls:?}"
    );
}

#[tokio::test]
async fn plain_http_urls_fail_the_https_checks() {
    let env = mock(|_| {}).await;
    let mut opts = options(&env, CLIENT_SECRET);
    opts.publish_url = format!("http://localhost:{}/segments/aam", env.mock.addr.port())
        .parse()
        .unwrap();
    let checks = run(&opts).await;
    assert_eq!(find(&checks, "publish_url_https").verdict, Verdict::Fail);
}

// The mock runs in this process: the blocking CLI calls need another thread to serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_junit_and_json_and_exits_non_zero_on_failure() {
    let env = mock(|_| {}).await;
    let run_cli = |secret: &str, format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
            .args([
                "verify",
                "--token-url",
                &env.mock.token_url(),
                "--publish-url",
                &env.mock.publish_url(),
            ])
            .args([
                "--client-id",
                CLIENT_ID,
                "--client-secret-env",
                "IRISD_VERIFY_SECRET",
                "--format",
                format,
            ])
            .arg("--ca-file")
            .arg(env.ca())
            .env("IRISD_VERIFY_SECRET", secret)
            .output()
            .unwrap()
    };
    let ok = run_cli(CLIENT_SECRET, "junit");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let xml = String::from_utf8_lossy(&ok.stdout);
    assert!(
        xml.contains("<testsuite name=\"irisd verify\"") && xml.contains("failures=\"0\""),
        "{xml}"
    );
    let bad = run_cli("wrong", "json");
    assert_eq!(bad.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "token_request_accepted" && c["verdict"] == "fail"));
    let table = run_cli(CLIENT_SECRET, "table");
    assert!(String::from_utf8_lossy(&table.stdout)
        .lines()
        .all(|l| l.starts_with("PASS")));
}

// The CLI loads its secret file the way the configuration does: a file others can read is
// warned about, an empty one refused, and flags that do not go together are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_loads_secret_files_with_the_configs_rules() {
    use std::os::unix::fs::PermissionsExt;
    let env = mock(|_| {}).await;
    let secret = env.dir.path().join("verify.secret");
    let run_cli = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_irisd"))
            .args(["verify", "--token-url", &env.mock.token_url()])
            .args(["--publish-url", &env.mock.publish_url(), "--format", "json"])
            .args(extra)
            .arg("--ca-file")
            .arg(env.ca())
            .output()
            .unwrap()
    };
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = secret.to_str().unwrap();
    let out = run_cli(&["--client-id", CLIENT_ID, "--client-secret-file", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("can be read by group or others"),
        "{stderr}"
    );
    std::fs::write(&secret, "\n").unwrap();
    let out = run_cli(&["--client-id", CLIENT_ID, "--client-secret-file", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");
    let out = run_cli(&["--client-id", CLIENT_ID, "--basic-env", "X"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--client-id"), "{stderr}");
}
