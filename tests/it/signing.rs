//! Signed publish requests: the daemon signs (HMAC md5/sha1/sha256 over the body, or over path
//! and query for GET); the mock verifies against one or two active keys and rejects with 403
//! and the reason in its journal.

use std::time::Duration;

use crate::common::*;
use irisd::config::Config;
use irisd::daemon::Daemon;
use irisd::mock::MockSigning;
use irisd::signing::Algorithm;

fn signed_config(env: &Env, publish_extra: &str, signing: Option<(&str, &str)>) -> Config {
    let mut file = env.config_file().publish(publish_extra);
    if let Some((alg, key)) = signing {
        std::fs::write(env.dir.path().join("signing.key"), key).unwrap();
        file = file.section(&format!(
            "[destination.signing]\nalgorithm = \"{alg}\"\nkey_file = \"signing.key\""
        ));
    }
    file.load()
}

async fn deliver(config: &Config, n: u64) -> (u64, u64) {
    let daemon = Daemon::start(config).await.unwrap();
    let body: String = (0..n)
        .map(|i| event("partner-a", 100 + i, &[("1", "1")]) + "\n")
        .collect();
    assert_eq!(post_events(daemon.intake_addr, body).await.0, 202);
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = m.snapshot();
            s.delivered_users + s.dead_lettered_users == n
        })
        .await
    );
    let s = m.snapshot();
    daemon.shutdown(Duration::from_secs(5)).await;
    (s.delivered_users, s.dead_lettered_users)
}

fn signing(alg: Algorithm, keys: &[&str]) -> Option<MockSigning> {
    Some(MockSigning {
        algorithm: alg,
        header: "X-Signature".into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
    })
}

#[tokio::test]
async fn signed_gzip_posts_are_verified_by_the_partner() {
    let env = mock(|c| c.signing = signing(Algorithm::Sha256, &["k-2026"])).await;
    let config = signed_config(&env, "linger_ms = 5", Some(("sha256", "k-2026")));
    assert_eq!(deliver(&config, 12).await, (12, 0));
    let journal = env.mock.state.journal();
    let publish = journal.iter().find(|j| j.path == "/segments/aam").unwrap();
    assert!(publish.headers.iter().any(|(k, _)| k == "x-signature"));
}

#[tokio::test]
async fn during_a_key_rotation_both_keys_are_accepted() {
    let env = mock(|c| c.signing = signing(Algorithm::Sha1, &["old-key", "new-key"])).await;
    let old = signed_config(&env, "linger_ms = 5", Some(("sha1", "old-key")));
    assert_eq!(deliver(&old, 3).await, (3, 0));
    let new = signed_config(&env, "linger_ms = 5", Some(("sha1", "new-key")));
    assert_eq!(deliver(&new, 3).await, (3, 0));
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_rejected_403_with_the_reason() {
    let env = mock(|c| c.signing = signing(Algorithm::Sha256, &["right"])).await;
    let wrong = signed_config(&env, "linger_ms = 5", Some(("sha256", "wrong")));
    assert_eq!(
        deliver(&wrong, 2).await,
        (0, 2),
        "dead-lettered: a 403 is permanent"
    );
    let unsigned = signed_config(&env, "linger_ms = 5", None);
    assert_eq!(deliver(&unsigned, 2).await, (0, 2));
    let stats = env.mock.state.stats();
    assert_eq!(stats.publish_rejections.get("bad_signature"), Some(&1));
    assert_eq!(stats.publish_rejections.get("missing_signature"), Some(&1));
    let verdicts: Vec<String> = env
        .mock
        .state
        .journal()
        .into_iter()
        .map(|j| j.verdict)
        .collect();
    assert!(
        verdicts.contains(&"bad_signature".to_string()),
        "{verdicts:?}"
    );
}

#[tokio::test]
async fn get_requests_sign_the_path_and_query_with_md5() {
    let env = mock(|c| c.signing = signing(Algorithm::Md5, &["m"])).await;
    let config = signed_config(&env, "linger_ms = 5\nmethod = \"GET\"", Some(("md5", "m")));
    assert_eq!(deliver(&config, 4).await, (4, 0));
    assert!(env.mock.state.received().iter().all(|r| r.method == "GET"));
}
