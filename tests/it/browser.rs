//! The mock's `/_mock/` page in a real headless browser (Debian's chromium driven over the
//! W3C WebDriver protocol by chromedriver): live counters, the request journal with each
//! rejection's reason, a click through to a received payload decoded, and a screenshot.
//!
//! It needs `chromium` and `chromium-driver` (`.ci/run` installs them). Where they are missing
//! it fails under CI (`CI` set) and otherwise says so and returns, so `cargo test` still works
//! on a machine with nothing but the Rust toolchain.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

struct Driver {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    base: String,
}

impl Driver {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        // Null until chromedriver listens (the start-up poll relies on it).
        let Ok(resp) = self.client.request(req).await else {
            return Value::Null;
        };
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)["value"].clone()
    }

    async fn find(&self, session: &str, css: &str) -> Option<String> {
        let v = self
            .call(
                Method::POST,
                &format!("/session/{session}/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.get(ELEMENT).and_then(Value::as_str).map(str::to_string)
    }

    /// Waits for the element to appear (the page renders when its fetches come back, which
    /// on a loaded machine takes its time); the bound only ends a test that would hang.
    async fn wait_for(&self, session: &str, css: &str) -> String {
        for _ in 0..600 {
            if let Some(e) = self.find(session, css).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no element {css} on the page after a minute");
    }

    /// The element's text once it contains `needle`; waits for that, not for a time.
    async fn wait_text(&self, session: &str, element: &str, needle: &str) -> String {
        let mut text = String::new();
        for _ in 0..600 {
            text = self.text(session, element).await;
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{needle:?} never showed in the element after a minute; it shows: {text}");
    }

    async fn text(&self, session: &str, element: &str) -> String {
        self.call(
            Method::GET,
            &format!("/session/{session}/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_page_shows_counters_the_journal_and_a_decoded_payload() {
    let (Some(chromium), Some(chromedriver)) = (
        find_program(&["chromium", "chromium-browser"]),
        find_program(&["chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium and chromium-driver (.ci/run installs them)"
        );
        eprintln!(
            "\n*** SKIPPED the_inspector_page_shows_counters_the_journal_and_a_decoded_payload: chromium and chromium-driver are not installed (apt-get install chromium chromium-driver). Under CI this is a failure. ***\n"
        );
        return;
    };
    let env = mock(|_| {}).await;
    // One accepted publish and one rejected, so the journal has both.
    let (_, tok) = send(
        &env,
        Method::POST,
        env.mock.token_url(),
        &[
            ("authorization", &basic(CLIENT_ID, CLIENT_SECRET)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        b"grant_type=client_credentials",
    )
    .await;
    let bearer = format!("Bearer {}", tok["access_token"].as_str().unwrap());
    let good = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"12345","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"1","Users":[{"AAM_UUID":"19393572368547369350319949416899715727","DataPartner_UUID":"4250948725049857","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    assert_eq!(
        send(
            &env,
            Method::POST,
            env.mock.publish_url(),
            &headers,
            good.as_bytes()
        )
        .await
        .0
        .status,
        200
    );
    let bad = good.replace(r#""User_count":"1""#, r#""User_count":"2""#);
    assert_eq!(
        send(
            &env,
            Method::POST,
            env.mock.publish_url(),
            &headers,
            bad.as_bytes()
        )
        .await
        .0
        .status,
        400
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _driver = Proc(
        std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let driver = Driver {
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
        base: format!("http://127.0.0.1:{port}"),
    };
    assert!(
        wait_until_async(|| async {
            driver.call(Method::GET, "/status", None).await["ready"] == true
        })
        .await,
        "chromedriver did not start"
    );
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let session = driver
        .call(
            Method::POST,
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium, "args": args}}}})),
        )
        .await;
    let session = session["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_string();
    driver
        .call(
            Method::POST,
            &format!("/session/{session}/url"),
            Some(json!({"url": env.mock.url("/_mock/")})),
        )
        .await;

    // Live counters.
    let users = driver.wait_for(&session, "#counter-users_accepted").await;
    assert!(
        driver.text(&session, &users).await.starts_with('1'),
        "one user accepted"
    );
    // The rejected request shows its reason.
    let rejected = driver
        .wait_for(&session, "tr[data-verdict=user_count_mismatch]")
        .await;
    driver
        .call(
            Method::POST,
            &format!("/session/{session}/element/{rejected}/click"),
            Some(json!({})),
        )
        .await;
    let viewer = driver.wait_for(&session, "#viewer").await;
    let shown = driver.wait_text(&session, &viewer, "reason:").await;
    assert!(
        shown.contains("reason: User_count is 2 but Users has 1 entries"),
        "{shown}"
    );
    assert!(
        shown.contains("authorization: Bearer [redacted]"),
        "{shown}"
    );
    // A click on the accepted one shows its payload decoded.
    let accepted = driver
        .wait_for(&session, "tr[data-verdict=accepted][data-seq]")
        .await;
    driver
        .call(
            Method::POST,
            &format!("/session/{session}/element/{accepted}/click"),
            Some(json!({})),
        )
        .await;
    let shown = driver.wait_text(&session, &viewer, "decoded payload").await;
    assert!(shown.contains("decoded payload"), "{shown}");
    assert!(
        shown.contains("\"AAM_UUID\": \"19393572368547369350319949416899715727\""),
        "{shown}"
    );
    // And a screenshot of it.
    let png = driver
        .call(Method::GET, &format!("/session/{session}/screenshot"), None)
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mock-inspector.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    driver
        .call(Method::DELETE, &format!("/session/{session}"), None)
        .await;
}

async fn wait_until_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
