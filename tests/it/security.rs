//! Listener authentication and secret hygiene: the intake and the admin listener demand their
//! bearer token when configured (RFC 6750 answers), an open non-loopback listener is refused
//! at configuration time, secret files readable by others are flagged (or refused), and after
//! a run with known secret values no admin endpoint shows any of them or any user id.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use irisd::config::Config;
use irisd::daemon::Daemon;

const INTAKE_TOKEN: &str = "intake-token-5b9f0c2e7d";
const ADMIN_TOKEN: &str = "admin-token-8e1a44c0b3";

fn private(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The test's standard config plus intake/admin lines.
fn config(env: &Env, intake_extra: &str, admin: &str, top: &str) -> Result<Config, String> {
    env.config_file()
        .top(top)
        .intake(intake_extra)
        .admin(admin)
        .try_load()
}

async fn request(
    method: &str,
    url: String,
    bearer: Option<&str>,
    body: String,
) -> (u16, http::HeaderMap, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_and_admin_demand_their_tokens_and_expose_no_secret() {
    let env = mock(|_| {}).await;
    private(
        &env.dir.path().join("intake.token"),
        &format!("{INTAKE_TOKEN}\n"),
    );
    private(&env.dir.path().join("admin.token"), ADMIN_TOKEN);
    let cfg = config(
        &env,
        "auth_token_file = \"intake.token\"",
        "listen = \"127.0.0.1:0\"\nauth_token_file = \"admin.token\"",
        "",
    )
    .unwrap();
    let daemon = Daemon::start(&cfg).await.unwrap();
    let events = format!("http://{}/v1/events", daemon.intake_addr);
    let line = event("partner-a", 424242, &[("5", "1")]);

    let (s, h, body) = request("POST", events.clone(), None, line.clone()).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"irisd\"");
    let (s, h, body) = request("POST", events.clone(), Some("guess"), line.clone()).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(
        h["www-authenticate"],
        "Bearer realm=\"irisd\", error=\"invalid_token\""
    );
    assert!(!body.contains("guess"), "the presented token is not echoed");
    let (s, _, body) = request("POST", events.clone(), Some(INTAKE_TOKEN), line).await;
    assert_eq!(s, 202, "{body}");
    let m = daemon.destinations[0].metrics.clone();
    assert!(
        wait_until(Duration::from_secs(10), || m.snapshot().delivered_users
            == 1)
        .await
    );
    assert_eq!(
        m.snapshot().accepted_users,
        1,
        "refused requests stored nothing"
    );

    let admin: SocketAddr = daemon.admin_addr.unwrap();
    for path in ["/metrics", "/status"] {
        let (s, h, _) = request("GET", format!("http://{admin}{path}"), None, String::new()).await;
        assert_eq!(s, 401, "{path}");
        assert!(h.contains_key("www-authenticate"));
    }
    for path in ["/healthz", "/readyz"] {
        let (s, _, _) = request("GET", format!("http://{admin}{path}"), None, String::new()).await;
        assert_eq!(s, 200, "probes stay open: {path}");
    }
    // Scan every admin endpoint for the secrets in play and the user id.
    let mut secrets = vec![
        CLIENT_SECRET.to_string(),
        INTAKE_TOKEN.to_string(),
        ADMIN_TOKEN.to_string(),
        "424242".to_string(),
    ];
    secrets.extend(env.mock.state.issued_token_values());
    assert!(secrets.len() >= 5, "a partner token was issued");
    for path in ["/metrics", "/status", "/healthz", "/readyz", "/nope"] {
        let (s, h, body) = request(
            "GET",
            format!("http://{admin}{path}"),
            Some(ADMIN_TOKEN),
            String::new(),
        )
        .await;
        assert!(path == "/nope" || s == 200, "{path}: {s}");
        let all = format!("{h:?}{body}");
        for secret in &secrets {
            assert!(
                !all.contains(secret.as_str()),
                "{path} shows a secret or user id"
            );
        }
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn open_listeners_on_other_interfaces_are_refused_unless_allowed() {
    let env = mock(|_| {}).await;
    let with = |listen: &str, intake: &str, admin: &str| {
        env.config_file()
            .listen(listen)
            .intake(intake)
            .admin(admin)
            .try_load()
    };
    let e = with("0.0.0.0:0", "", "").unwrap_err();
    assert!(
        e.contains("irisd.toml:1: intake.listen: 0.0.0.0:0 is reachable from other machines"),
        "{e}"
    );
    assert!(e.contains("auth_token_file"), "{e}");
    let e = with("127.0.0.1:0", "", "listen = \"[::]:0\"").unwrap_err();
    assert!(e.contains("admin.listen: [::]:0 is reachable"), "{e}");
    with(
        "0.0.0.0:0",
        "allow_unauthenticated = true",
        "listen = \"0.0.0.0:0\"\nallow_unauthenticated = true",
    )
    .unwrap();
    std::env::set_var("IRISD_TEST_INTAKE_TOKEN", "t0k3n");
    let c = with(
        "0.0.0.0:0",
        "auth_token_env = \"IRISD_TEST_INTAKE_TOKEN\"",
        "",
    )
    .unwrap();
    assert!(c.intake.auth_token.is_some());
    assert!(!format!("{c:?}").contains("t0k3n"), "Debug hides the token");
    let e = with(
        "127.0.0.1:0",
        "auth_token_env = \"IRISD_TEST_INTAKE_TOKEN\"\nauth_token_file = \"x\"",
        "",
    )
    .unwrap_err();
    assert!(e.contains("not both"), "{e}");
}

#[tokio::test]
async fn secret_files_readable_by_others_are_refused_with_strict_permissions() {
    let env = mock(|_| {}).await;
    let path = env.config_file().write();
    let secret = env.dir.path().join("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Default: accepted (with a warning).
    Config::load(&path).unwrap();
    let path = env.config_file().top("strict_permissions = true").write();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("client_secret_file"), "{e}");
    assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    Config::load(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_over_mutual_tls_serves_certified_clients_only() {
    use irisd::transport::{ClientOptions, HttpClient, TlsOptions};
    // The mock's generated certificates serve as the intake's: server.pem for localhost, and
    // its client CA for the producers.
    let env = mock(|c| c.require_client_cert = true).await;
    let tls = env.mock.ca_file.parent().unwrap().to_owned();
    let intake = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"",
        tls.join("server.pem").display(),
        tls.join("server.key").display(),
        tls.join("client-ca.pem").display()
    );
    // Mutual TLS counts as authentication: a non-loopback address needs no token then.
    let cfg = config(&env, &intake, "", "").unwrap();
    env.config_file()
        .listen("0.0.0.0:0")
        .intake(&intake)
        .try_load()
        .expect("mTLS is the non-loopback listener's authentication");
    let daemon = Daemon::start(&cfg).await.unwrap();
    let url = format!("https://localhost:{}/v1/events", daemon.intake_addr.port());
    let opts = ClientOptions {
        ca_file: Some(&env.mock.ca_file),
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(5),
        http2: false,
    };
    let (cert, key) = (tls.join("client.pem"), tls.join("client.key"));
    let certified = HttpClient::new_with(
        &opts,
        TlsOptions {
            client_cert: Some((&cert, &key)),
            insecure_skip_verify: false,
        },
    )
    .unwrap();
    let post = |uuid: u64| {
        http::Request::post(url.as_str())
            .body(Full::new(Bytes::from(event(
                "partner-a",
                uuid,
                &[("5", "1")],
            ))))
            .unwrap()
    };
    let r = certified
        .send(post(1), Duration::from_secs(5), 1 << 16)
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let anonymous = HttpClient::new(&opts).unwrap();
    // TLS 1.3: the server refuses the certificate-less client after the client's half of the
    // handshake, so the client sees its connection dropped, never an answer.
    let refused = anonymous
        .send(post(2), Duration::from_secs(5), 1 << 16)
        .await;
    assert!(refused.is_err(), "{:?}", refused.map(|r| r.status));
    assert_eq!(daemon.destinations[0].metrics.snapshot().accepted_users, 1);
    daemon.shutdown(Duration::from_secs(2)).await;
}
