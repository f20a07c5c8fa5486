//! The mock partner's RFC points, one test each: client authentication in the body (only when
//! enabled, never together with Basic), unknown parameters, scopes, RFC 6750 insufficient_scope,
//! RFC 7662 introspection, RFC 7009 revocation with the validation interval, the client
//! lifecycle (inactive, activate, reauthorize, delete), and the token audit journal.

use std::time::Duration;

use crate::common::*;
use http::Method;
use irisd::mock::ClientSpec;

const FORM: &str = "application/x-www-form-urlencoded";

async fn form(
    env: &Env,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value, http::HeaderMap) {
    let mut headers = vec![("content-type", FORM)];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let (resp, json) = send(
        env,
        Method::POST,
        env.mock.url(path),
        &headers,
        body.as_bytes(),
    )
    .await;
    (resp.status.as_u16(), json, resp.headers)
}

fn me() -> String {
    basic(CLIENT_ID, CLIENT_SECRET)
}

async fn token(env: &Env) -> String {
    let (s, json, _) = form(
        env,
        "/oauth2/token",
        Some(&me()),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 200, "{json}");
    json["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn credentials_in_the_body_only_when_enabled_and_never_with_basic() {
    let body = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={}",
        form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
    );
    let off = mock(|_| {}).await;
    let (s, json, h) = form(&off, "/oauth2/token", None, &body).await;
    assert_eq!((s, json["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["pragma"], "no-cache");

    let on = mock(|c| c.allow_body_credentials = true).await;
    let (s, _, _) = form(&on, "/oauth2/token", None, &body).await;
    assert_eq!(s, 200);
    let (s, json, _) = form(&on, "/oauth2/token", Some(&me()), &body).await;
    assert_eq!(
        (s, json["error"].as_str()),
        (400, Some("invalid_request")),
        "two methods at once"
    );
}

#[tokio::test]
async fn ids_and_secrets_with_reserved_and_non_ascii_characters_authenticate() {
    let id = "üser: @!%+ x";
    let secret = "pässwörd: @!%+ ÿ";
    let env = mock(|c| {
        c.clients.push(ClientSpec {
            client_id: Some(id.into()),
            client_secret: Some(secret.into()),
            basic: None,
            scopes: vec![],
            active: true,
        })
    })
    .await;
    let (s, _, _) = form(
        &env,
        "/oauth2/token",
        Some(&basic(id, secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = form(
        &env,
        "/oauth2/token",
        Some(&basic(id, "pässwörd")),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn unknown_parameters_are_ignored() {
    let env = mock(|_| {}).await;
    let (s, _, _) = form(
        &env,
        "/oauth2/token",
        Some(&me()),
        "grant_type=client_credentials&foo=bar&audience=x",
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn scopes_are_checked_against_the_client_and_the_publish_scope() {
    let env = mock(|c| {
        c.clients[0].scopes = vec!["segments".into(), "read".into()];
        c.publish_scope = Some("segments".into());
    })
    .await;
    let (s, json, _) = form(
        &env,
        "/oauth2/token",
        Some(&me()),
        "grant_type=client_credentials&scope=admin",
    )
    .await;
    assert_eq!((s, json["error"].as_str()), (400, Some("invalid_scope")));
    let (s, json, _) = form(
        &env,
        "/oauth2/token",
        Some(&me()),
        "grant_type=client_credentials&scope=read",
    )
    .await;
    assert_eq!((s, json["scope"].as_str()), (200, Some("read")));
    let read_only = json["access_token"].as_str().unwrap().to_string();
    let (resp, json) = send(
        &env,
        Method::POST,
        env.mock.publish_url(),
        &[
            ("authorization", &format!("Bearer {read_only}")),
            ("content-type", "application/json"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(resp.status, 403);
    assert_eq!(json["error"], "insufficient_scope");
    assert!(resp.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
}

#[tokio::test]
async fn introspection_reports_active_tokens_and_nothing_about_others() {
    let env = mock(|_| {}).await;
    let t = token(&env).await;
    let (s, json, h) = form(
        &env,
        "/oauth2/introspect",
        Some(&me()),
        &format!("token={t}"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(json["active"], true);
    assert_eq!(json["client_id"], CLIENT_ID);
    assert!(json["exp"].as_i64().unwrap() > json["iat"].as_i64().unwrap());
    let (_, json, _) = form(
        &env,
        "/oauth2/introspect",
        Some(&me()),
        "token=never-issued",
    )
    .await;
    assert_eq!(json, serde_json::json!({"active": false}));
    let (s, _, _) = form(&env, "/oauth2/introspect", None, &format!("token={t}")).await;
    assert_eq!(s, 401, "introspection needs client authentication");
}

#[tokio::test]
async fn revocation_is_200_for_unknown_tokens_and_takes_effect_within_the_validation_interval() {
    let env = mock(|c| c.validation_interval_secs = 1).await;
    let (s, _, _) = form(&env, "/oauth2/revoke", Some(&me()), "token=never-issued").await;
    assert_eq!(s, 200);
    let t = token(&env).await;
    let (s, _, _) = form(
        &env,
        "/oauth2/revoke",
        Some(&me()),
        &format!("token={t}&token_type_hint=access_token"),
    )
    .await;
    assert_eq!(s, 200);
    let (_, json, _) = form(
        &env,
        "/oauth2/introspect",
        Some(&me()),
        &format!("token={t}"),
    )
    .await;
    assert_eq!(
        json["active"], false,
        "introspection sees the revocation at once"
    );
    let payload = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"1","Client_ID":"2","AAM_Destination_Id":"3","User_count":"1","Users":[{"AAM_UUID":"1","DataPartner_UUID":"","Segments":[{"Segment_ID":"1","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;
    // Within the interval, the cached validation still holds (as with IMS); after it, 401.
    assert_eq!(publish(&env, &t, payload).await, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(publish(&env, &t, payload).await, 401);
    let events: Vec<String> = env
        .mock
        .state
        .audit_journal()
        .into_iter()
        .map(|a| a.event)
        .collect();
    assert!(
        events.contains(&"revoked".to_string()) && events.contains(&"invalidated".to_string()),
        "{events:?}"
    );
}

async fn publish(env: &Env, t: &str, payload: &str) -> u16 {
    let auth = format!("Bearer {t}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    send(
        env,
        Method::POST,
        env.mock.publish_url(),
        &headers,
        payload.as_bytes(),
    )
    .await
    .0
    .status
    .as_u16()
}

#[tokio::test]
async fn client_lifecycle_inactive_activate_reauthorize_delete() {
    let env = mock(|_| {}).await;
    let admin = |path: &str| env.mock.url(path);
    let (resp, json) = send(
        &env,
        Method::POST,
        admin("/_mock/clients"),
        &[],
        br#"{"client_id":"new-partner-app"}"#,
    )
    .await;
    assert_eq!(resp.status, 201);
    assert_eq!(json["active"], false, "saved inactive");
    let secret = json["client_secret"].as_str().unwrap().to_string();
    let creds = basic("new-partner-app", &secret);
    let (s, json, _) = form(
        &env,
        "/oauth2/token",
        Some(&creds),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(
        (s, json["error_description"].as_str()),
        (401, Some("the client is inactive"))
    );

    let (resp, _) = send(
        &env,
        Method::POST,
        admin("/_mock/clients/new-partner-app/activate"),
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let (s, json, _) = form(
        &env,
        "/oauth2/token",
        Some(&creds),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 200);
    let old_token = json["access_token"].as_str().unwrap().to_string();

    let (resp, json) = send(
        &env,
        Method::POST,
        admin("/_mock/clients/new-partner-app/reauthorize"),
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let new_secret = json["client_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let (s, _, _) = form(
        &env,
        "/oauth2/token",
        Some(&creds),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 401, "the old secret stops working");
    let (_, json, _) = form(
        &env,
        "/oauth2/introspect",
        Some(&me()),
        &format!("token={old_token}"),
    )
    .await;
    assert_eq!(json["active"], false, "tokens issued before are revoked");
    let new_creds = basic("new-partner-app", &new_secret);
    let (s, _, _) = form(
        &env,
        "/oauth2/token",
        Some(&new_creds),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 200);

    let (resp, _) = send(
        &env,
        Method::DELETE,
        admin("/_mock/clients/new-partner-app"),
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let (s, _, _) = form(
        &env,
        "/oauth2/token",
        Some(&new_creds),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(s, 401);
    let (_, list) = send(&env, Method::GET, admin("/_mock/clients"), &[], b"").await;
    assert!(!list.to_string().contains("new-partner-app"));
    assert!(
        !list.to_string().contains(CLIENT_SECRET),
        "no secrets in the client list"
    );
}

#[tokio::test]
async fn the_audit_journal_records_token_events_without_token_values() {
    let env = mock(|c| c.validation_interval_secs = 0).await;
    let t = token(&env).await;
    let _ = form(
        &env,
        "/oauth2/token",
        Some(&basic(CLIENT_ID, "Not-The-Secret-9f3")),
        "grant_type=client_credentials",
    )
    .await;
    let payload = b"{}";
    let _ = send(
        &env,
        Method::POST,
        env.mock.publish_url(),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("content-type", "application/json"),
        ],
        payload,
    )
    .await;
    let (_, journal) = send(&env, Method::GET, env.mock.url("/_mock/audit"), &[], b"").await;
    let entries = journal.as_array().unwrap();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        events.starts_with(&["issued", "rejected", "validated"]),
        "{events:?}"
    );
    assert_eq!(entries[0]["client"], CLIENT_ID);
    assert_eq!(entries[0]["token_hash"], irisd::mock::token_hash(&t));
    assert_eq!(entries[0]["token_hash"].as_str().unwrap().len(), 12);
    assert!(!journal.to_string().contains(&t), "never the token itself");
    assert!(
        !journal.to_string().contains("Not-The-Secret-9f3"),
        "never a presented secret"
    );
    assert!(
        !journal.to_string().contains(CLIENT_SECRET),
        "never a secret"
    );
}

#[tokio::test]
async fn the_request_journal_can_be_filtered() {
    let env = mock(|_| {}).await;
    let _ = token(&env).await;
    let _ = form(
        &env,
        "/oauth2/token",
        Some(&basic(CLIENT_ID, "nope-123")),
        "grant_type=client_credentials",
    )
    .await;
    let _ = form(&env, "/oauth2/token", Some(&me()), "grant_type=password").await;
    let (_, all) = send(&env, Method::GET, env.mock.url("/_mock/requests"), &[], b"").await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (_, rejected) = send(
        &env,
        Method::GET,
        env.mock.url("/_mock/requests?verdict=invalid_client"),
        &[],
        b"",
    )
    .await;
    assert_eq!(rejected.as_array().unwrap().len(), 1);
    assert_eq!(rejected[0]["status"], 401);
    let (_, last) = send(
        &env,
        Method::GET,
        env.mock.url("/_mock/requests?path=/oauth2/token&limit=1"),
        &[],
        b"",
    )
    .await;
    assert_eq!(last[0]["verdict"], "unsupported_grant_type");
    let (resp, _) = send(
        &env,
        Method::GET,
        env.mock.url("/_mock/requests?verdikt=x"),
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 400, "a misspelt filter is an error");
}

#[tokio::test]
async fn a_scenario_file_replays_fault_phases_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:0"
tls_dir = "{}"
token_ttl_secs = 120

[[client]]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[[phase]]
requests = 2

[[phase]]
requests = 3
faults = {{ error_rate = 1.0, error_status = 503 }}

[[phase]]
seconds = 0.5
faults = {{ error_rate = 1.0, error_status = 429, retry_after_secs = 5 }}

[[phase]]
"#,
            dir.path().join("tls").display()
        ),
    )
    .unwrap();
    let cfg = irisd::mock::MockConfig::load(&path).unwrap();
    assert_eq!(cfg.phases.len(), 4);
    let env = Env {
        mock: irisd::mock::MockPartner::start(cfg).await.unwrap(),
        dir,
    };
    let t = token(&env).await;
    let payload = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"1","Client_ID":"2","AAM_Destination_Id":"3","User_count":"1","Users":[{"AAM_UUID":"1","DataPartner_UUID":"","Segments":[{"Segment_ID":"1","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(publish(&env, &t, payload).await);
    }
    assert_eq!(statuses, [200, 200, 503, 503, 503, 429]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        publish(&env, &t, payload).await,
        200,
        "the last phase lasts"
    );
    let (_, pos) = send(&env, Method::GET, env.mock.url("/_mock/scenario"), &[], b"").await;
    assert_eq!(
        (pos["phase"].as_u64(), pos["phases"].as_u64()),
        (Some(3), Some(4))
    );
}
