//! Configuration errors name the file, line and key; secrets are never printed.

use std::path::Path;

use irisd::config::{Config, ConfigError};

const BASE: &str = r#"[intake]
listen = "127.0.0.1:0"

[[destination]]
name = "partner-a"
destination_id = "423"
user_dpid = "12345"
aam_client_id = "74323"

[destination.auth]
token_url = "https://partner.example/oauth2/token"
client_id = "iris"
client_secret_env = "IRISD_TEST_SECRET_SET"

[destination.publish]
url = "https://partner.example/segments/aam"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    // Every test sets the same value, so running them in parallel is harmless.
    std::env::set_var("IRISD_TEST_SECRET_SET", "top-secret-value");
    Config::from_toml(Path::new("irisd.toml"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_base_config_is_valid_and_gets_the_iris_defaults() {
    let c = parse(BASE).unwrap();
    let d = &c.destinations[0];
    assert_eq!(d.publish.max_users, 10);
    assert_eq!(d.publish.timeout.as_millis(), 3000);
    assert!(d.publish.gzip);
    assert_eq!(d.user_agent, "Adobe Audience Manager Iris");
}

#[test]
fn unknown_key_is_an_error_with_line_and_key() {
    let text = BASE.replace(
        "[destination.publish]\n",
        "[destination.publish]\nmax_user = 5\n",
    );
    let e = err(&text);
    assert!(
        e.starts_with("irisd.toml:16:1: destination[0].publish.max_user:"),
        "{e}"
    );
    assert!(e.contains("unknown field `max_user`"), "{e}");
}

#[test]
fn missing_secret_env_names_the_variable_key_and_line() {
    let text = BASE.replace("IRISD_TEST_SECRET_SET", "IRISD_TEST_SECRET_MISSING");
    let e = err(&text);
    assert_eq!(
        e,
        "irisd.toml:13: destination[0].auth.client_secret_env: environment variable IRISD_TEST_SECRET_MISSING is not set"
    );
}

#[test]
fn bad_url_is_an_error_with_line_and_key() {
    let text = BASE.replace("https://partner.example/segments/aam", "https://bad host/x");
    let e = err(&text);
    assert!(
        e.starts_with("irisd.toml:16: destination[0].publish.url:"),
        "{e}"
    );
    let text = BASE.replace(
        "https://partner.example/oauth2/token",
        "ftp://partner.example/t",
    );
    let e = err(&text);
    assert!(
        e.starts_with("irisd.toml:11: destination[0].auth.token_url:"),
        "{e}"
    );
}

#[test]
fn plain_http_is_refused_unless_explicitly_allowed() {
    let text = BASE.replace(
        "https://partner.example/oauth2",
        "http://partner.example/oauth2",
    );
    let e = err(&text);
    assert!(
        e.starts_with("irisd.toml:11: destination[0].auth.token_url:"),
        "{e}"
    );
    assert!(e.contains("http:// is refused"), "{e}");
    let allowed = text.replace(
        "aam_client_id = \"74323\"\n",
        "aam_client_id = \"74323\"\nallow_insecure_http = true\n",
    );
    let c = parse(&allowed).unwrap();
    assert!(c.destinations[0].allow_insecure_http);
}

#[test]
fn credential_sources_are_exclusive_and_required() {
    let both = BASE.replace(
        "client_secret_env = \"IRISD_TEST_SECRET_SET\"",
        "client_secret_env = \"IRISD_TEST_SECRET_SET\"\nbasic_credentials_env = \"X\"",
    );
    assert!(err(&both).contains("set only one of"));
    let none = BASE.replace("client_secret_env = \"IRISD_TEST_SECRET_SET\"", "");
    assert!(err(&none).contains("no credentials"));
}

#[test]
fn wrong_types_and_values_are_named() {
    let e = err(&BASE.replace("destination_id = \"423\"", "destination_id = 423"));
    assert!(
        e.starts_with("irisd.toml:6:") && e.contains("destination[0].destination_id"),
        "{e}"
    );
    let e = err(&BASE.replace("destination_id = \"423\"", "destination_id = \"abc\""));
    assert!(
        e.starts_with("irisd.toml:6: destination[0].destination_id:"),
        "{e}"
    );
    let e = err(&format!("{BASE}method = \"DELETE\"\n"));
    assert!(
        e.starts_with("irisd.toml:17: destination[0].publish.method:"),
        "{e}"
    );
    let e = err(&format!("{BASE}max_users = 0\n"));
    assert!(
        e.starts_with("irisd.toml:17: destination[0].publish.max_users:"),
        "{e}"
    );
    // A wrong type names the key as written, not serde's internal name for a spanned value.
    let e = err(&format!("{BASE}max_users = \"ten\"\n"));
    assert!(
        e.starts_with("irisd.toml:17:13: destination[0].publish.max_users: invalid type"),
        "{e}"
    );
    assert!(!e.contains("serde_spanned"), "{e}");
}

#[test]
fn duplicate_destination_names_are_refused() {
    let second = BASE.split_once("[[destination]]").unwrap().1;
    let e = err(&format!("{BASE}\n[[destination]]{second}"));
    assert!(
        e.contains("destination[1].name") && e.contains("duplicate"),
        "{e}"
    );
}

#[test]
fn debug_and_summary_never_show_the_secret() {
    let c = parse(BASE).unwrap();
    assert!(!format!("{c:?}").contains("top-secret-value"));
    let summary = c.summary();
    assert!(summary.contains("client_secret=***"), "{summary}");
    assert!(!summary.contains("top-secret-value"));
}

#[test]
fn the_example_config_in_deploy_parses() {
    std::env::set_var("PARTNER_A_SECRET", "example");
    let c = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/irisd.example.toml"
    )))
    .unwrap();
    assert_eq!(c.destinations.len(), 1);
    assert_eq!(c.destinations[0].publish.max_users, 10);
}

#[test]
fn user_dpid_is_named_and_only_impossible_values_are_refused() {
    let ok = parse(&BASE.replace("user_dpid = \"12345\"", "user_dpid = \"20915\"")).unwrap();
    assert!(
        ok.summary()
            .contains("User_DPID=20915 (Apple ID for Advertising (IDFA))"),
        "{}",
        ok.summary()
    );
    let web = parse(BASE).unwrap();
    assert!(web
        .summary()
        .contains("User_DPID=12345 (partner-specific (web IDs))"));
    for (value, says) in [
        ("0", "0 is no data source"),
        ("ab12", "must be a decimal number"),
        ("99999999999999999999", "out of range"),
    ] {
        let e = err(&BASE.replace("user_dpid = \"12345\"", &format!("user_dpid = \"{value}\"")));
        assert!(
            e.starts_with("irisd.toml:7: destination[0].user_dpid:") && e.contains(says),
            "{value}: {e}"
        );
    }
}

#[test]
fn the_iris_profile_fixes_batch_delivery_too() {
    let iris = BASE.replace(
        "aam_client_id = \"74323\"",
        "aam_client_id = \"74323\"\nprofile = \"iris\"",
    );
    // Defaults: IRIS's 10 users per message for batches as for real time, no rate limit.
    let c = parse(&format!("{iris}\n[destination.batch]\n")).unwrap();
    let b = c.destinations[0].batch.as_ref().unwrap();
    assert_eq!(b.max_users, 10);
    assert!(b.requests_per_second.is_none() && b.users_per_second.is_none());
    let reliable = parse(&format!("{BASE}\n[destination.batch]\n")).unwrap();
    assert_eq!(
        reliable.destinations[0].batch.as_ref().unwrap().max_users,
        1000
    );
    for (line, says) in [
        ("max_users = 100", "at most 10 users per message"),
        ("requests_per_second = 5", "IRIS applies no rate limit"),
        ("users_per_second = 500", "IRIS applies no rate limit"),
    ] {
        let e = err(&format!("{iris}\n[destination.batch]\n{line}\n"));
        let key = line.split(' ').next().unwrap();
        assert!(
            e.contains(&format!(
                "destination[0].batch.{key}: profile = \"iris\" fixes this"
            )) && e.contains(says),
            "{e}"
        );
    }
}

#[tokio::test]
async fn environment_variables_are_interpolated_into_string_values_end_to_end() {
    let env = crate::common::mock(|_| {}).await;
    let file = env.config_file().publish("linger_ms = 5");
    let publish = env.mock.publish_url();
    let text = file
        .text()
        .replace(
            &format!("url = \"{publish}\""),
            "url = \"${IRISD_IT_INTERP_URL}\"",
        )
        .replace(
            "destination_id = \"423\"",
            "destination_id = \"${IRISD_IT_INTERP_UNSET:-423}\"",
        );
    std::env::set_var("IRISD_IT_INTERP_URL", &publish);
    file.write();
    let path = env.dir.path().join("irisd.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.destinations[0].publish.url.to_string(), publish);
    assert_eq!(config.destinations[0].destination_id, "423");
    let daemon = irisd::daemon::Daemon::start(&config).await.unwrap();
    let (status, _, _) = crate::common::post_events(
        daemon.intake_addr,
        crate::common::event("partner-a", 1, &[("1", "1")]),
    )
    .await;
    assert_eq!(status, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        crate::common::wait_until(std::time::Duration::from_secs(30), || {
            m.snapshot().delivered_users == 1
        })
        .await
    );
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
    // Unset and no default: the error names the variable, the line and the key.
    let broken = text.replace("${IRISD_IT_INTERP_URL}", "${IRISD_IT_INTERP_NOT_SET}");
    std::fs::write(&path, &broken).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    let line = broken
        .lines()
        .position(|l| l.contains("IRISD_IT_INTERP_NOT_SET"))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!(
            "irisd.toml:{line}: url: environment variable IRISD_IT_INTERP_NOT_SET is not set"
        )),
        "{e}"
    );
}
