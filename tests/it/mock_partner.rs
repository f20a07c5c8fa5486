//! The mock partner's rejections, each checked on the wire: RFC 6749 §5.2 errors on the token
//! endpoint, RFC 6750 challenges on the publish endpoint, and the strict payload parser.

use std::time::Duration;

use crate::common::*;
use http::Method;
use irisd::transport::Response;

async fn token_request(
    env: &Env,
    authorization: &str,
    content_type: &str,
    body: &str,
) -> (Response, serde_json::Value) {
    send(
        env,
        Method::POST,
        env.mock.token_url(),
        &[
            ("authorization", authorization),
            ("content-type", content_type),
            ("accept-encoding", "gzip"),
        ],
        body.as_bytes(),
    )
    .await
}

const FORM: &str = "application/x-www-form-urlencoded;charset=UTF-8";

#[tokio::test]
async fn token_endpoint_issues_a_gzip_token_with_no_store() {
    let env = mock(|_| {}).await;
    let (resp, json) = token_request(
        &env,
        &basic(CLIENT_ID, CLIENT_SECRET),
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["content-encoding"], "gzip");
    assert_eq!(resp.headers["cache-control"], "no-store");
    assert_eq!(resp.headers["pragma"], "no-cache");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    let token = json["access_token"].as_str().unwrap();
    assert!(token.len() >= 22, "at least 128 bits: {token}");
}

#[tokio::test]
async fn token_endpoint_without_ttl_omits_expires_in() {
    let env = mock(|c| c.token_ttl_secs = None).await;
    let (resp, json) = token_request(
        &env,
        &basic(CLIENT_ID, CLIENT_SECRET),
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(json.get("expires_in").is_none(), "{json}");
}

#[tokio::test]
async fn wrong_basic_credentials_get_401_invalid_client_with_a_basic_challenge() {
    let env = mock(|_| {}).await;
    for auth in [
        basic(CLIENT_ID, "wrong"),
        basic("someone", CLIENT_SECRET),
        "Basic !!!".to_string(),
        "Bearer x".to_string(),
    ] {
        let (resp, json) = token_request(&env, &auth, FORM, "grant_type=client_credentials").await;
        assert_eq!(resp.status, 401, "{auth}");
        assert_eq!(json["error"], "invalid_client");
        assert!(resp.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic "));
        assert_eq!(resp.headers["cache-control"], "no-store");
    }
    assert_eq!(env.mock.state.stats().token_rejections["invalid_client"], 4);
}

#[tokio::test]
async fn opaque_basic_credentials_are_compared_as_is() {
    let env = mock(|c| {
        c.clients.push(irisd::mock::ClientSpec {
            client_id: None,
            client_secret: None,
            basic: Some("zq2LOO1CcYGrODS5nXiNHpEz97eCpVHAoMF8".into()),
            scopes: vec![],
            active: true,
        })
    })
    .await;
    let (resp, _) = token_request(
        &env,
        "Basic zq2LOO1CcYGrODS5nXiNHpEz97eCpVHAoMF8",
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 200);
    let (resp, _) = token_request(
        &env,
        "Basic zq2LOO1CcYGrODS5nXiNHpEz97eCpVHAoMF9",
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 401);
}

#[tokio::test]
async fn wrong_content_type_gets_400_invalid_request() {
    let env = mock(|_| {}).await;
    for ct in [
        "application/json",
        "application/x-www-form-urlencoded; charset=ISO-8859-1",
        "text/plain",
    ] {
        let (resp, json) = token_request(
            &env,
            &basic(CLIENT_ID, CLIENT_SECRET),
            ct,
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(resp.status, 400, "{ct}");
        assert_eq!(json["error"], "invalid_request");
    }
    // Standard clients omit the charset, and case and spacing vary: all accepted.
    for ct in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded ; charset=utf-8",
    ] {
        let (resp, _) = token_request(
            &env,
            &basic(CLIENT_ID, CLIENT_SECRET),
            ct,
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(resp.status, 200, "{ct}");
    }
}

#[tokio::test]
async fn strict_mode_insists_on_the_exact_iris_content_type() {
    let env = mock(|c| c.strict_content_type = true).await;
    let (resp, json) = token_request(
        &env,
        &basic(CLIENT_ID, CLIENT_SECRET),
        "application/x-www-form-urlencoded",
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(json["error"], "invalid_request");
    let (resp, _) = token_request(
        &env,
        &basic(CLIENT_ID, CLIENT_SECRET),
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn wrong_grant_type_gets_400_unsupported_grant_type() {
    let env = mock(|_| {}).await;
    let (resp, json) = token_request(
        &env,
        &basic(CLIENT_ID, CLIENT_SECRET),
        FORM,
        "grant_type=password",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(json["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn malformed_token_bodies_get_400_invalid_request() {
    let env = mock(|_| {}).await;
    for body in [
        "",
        "scope=x",
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=%ZZ",
    ] {
        let (resp, json) = token_request(&env, &basic(CLIENT_ID, CLIENT_SECRET), FORM, body).await;
        assert_eq!(resp.status, 400, "{body:?}");
        assert_eq!(json["error"], "invalid_request", "{body:?}");
    }
    let (resp, _) = send(&env, Method::GET, env.mock.token_url(), &[], b"").await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.headers["allow"], "POST");
}

async fn token(env: &Env) -> String {
    let (_, json) = token_request(
        env,
        &basic(CLIENT_ID, CLIENT_SECRET),
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    json["access_token"].as_str().unwrap().to_string()
}

const PAYLOAD: &str = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"12345","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"1","Users":[{"AAM_UUID":"19393572368547369350319949416899715727","DataPartner_UUID":"4250948725049857","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;

async fn publish(env: &Env, auth: Option<&str>, body: &str) -> (Response, serde_json::Value) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(
        env,
        Method::POST,
        env.mock.publish_url(),
        &headers,
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn publish_accepts_the_iris_example_payload_with_a_valid_token() {
    let env = mock(|_| {}).await;
    let t = token(&env).await;
    // The seed's example uses GET with a body; POST and PUT are accepted too.
    for method in [Method::GET, Method::POST, Method::PUT] {
        let (resp, _) = send(
            &env,
            method.clone(),
            env.mock.publish_url(),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {t}")),
            ],
            PAYLOAD.as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200, "{method}");
    }
    assert_eq!(env.mock.state.stats().users_accepted, 3);
}

#[tokio::test]
async fn publish_without_credentials_gets_a_bearer_challenge_without_error_code() {
    let env = mock(|_| {}).await;
    let (resp, _) = publish(&env, None, PAYLOAD).await;
    assert_eq!(resp.status, 401);
    let challenge = resp.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer ") && !challenge.contains("error="),
        "{challenge}"
    );
}

#[tokio::test]
async fn publish_with_a_bad_bearer_token_gets_401_invalid_token() {
    let env = mock(|_| {}).await;
    let (resp, json) = publish(&env, Some("Bearer not-a-token-we-issued"), PAYLOAD).await;
    assert_eq!(resp.status, 401);
    assert!(resp.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert_eq!(json["error"], "invalid_token");
    let t = token(&env).await;
    env.mock.state.revoke_all_tokens();
    let (resp, _) = publish(&env, Some(&format!("Bearer {t}")), PAYLOAD).await;
    assert_eq!(resp.status, 401, "revoked token");
}

#[tokio::test]
async fn publish_with_an_expired_token_gets_401_invalid_token() {
    let env = mock(|c| c.token_ttl_secs = Some(1)).await;
    let t = token(&env).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (resp, json) = publish(&env, Some(&format!("Bearer {t}")), PAYLOAD).await;
    assert_eq!(resp.status, 401);
    assert_eq!(json["error"], "invalid_token");
}

#[tokio::test]
async fn malformed_payloads_get_400_with_the_reason() {
    let env = mock(|_| {}).await;
    let t = format!("Bearer {}", token(&env).await);
    let cases = [
        (
            PAYLOAD.replace(r#""User_count":"1""#, r#""User_count":"3""#),
            "user_count_mismatch",
        ),
        (
            PAYLOAD.replace(r#""User_count":"1""#, r#""User_count":1"#),
            "invalid_json",
        ),
        (
            PAYLOAD.replace("Wed Jul 27 16:17:22 UTC 2016", "2016-07-27T16:17:22Z"),
            "invalid_date",
        ),
        (
            PAYLOAD.replace(r#""Status":"1""#, r#""Status":"yes""#),
            "invalid_field",
        ),
        ("not json".to_string(), "invalid_json"),
    ];
    for (body, reason) in &cases {
        let (resp, json) = publish(&env, Some(&t), body).await;
        assert_eq!(resp.status, 400, "{reason}");
        assert_eq!(json["error"], *reason);
        assert!(!json["error_description"].as_str().unwrap().is_empty());
    }
    let stats = env.mock.state.stats();
    assert_eq!(stats.publish_rejections["invalid_json"], 2);
    assert_eq!(stats.users_accepted, 0);
    // The journal keeps each rejection's reason, with Authorization redacted.
    let journal = env.mock.state.journal();
    let last = journal.last().unwrap();
    assert_eq!(last.verdict, "invalid_json");
    let auth = last
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    assert_eq!(auth.1, "Bearer [redacted]");
}

#[tokio::test]
async fn publish_with_the_wrong_content_type_or_bad_gzip_is_rejected() {
    let env = mock(|_| {}).await;
    let t = format!("Bearer {}", token(&env).await);
    let (resp, json) = send(
        &env,
        Method::POST,
        env.mock.publish_url(),
        &[("content-type", "text/plain"), ("authorization", &t)],
        PAYLOAD.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 415);
    assert_eq!(json["error"], "wrong_content_type");
    let (resp, json) = send(
        &env,
        Method::POST,
        env.mock.publish_url(),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("authorization", &t),
        ],
        PAYLOAD.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(json["error"], "bad_gzip");
}
