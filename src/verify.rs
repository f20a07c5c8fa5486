//! `irisd verify`: checks a partner's real endpoints the way IRIS will use them, one line per
//! check with pass / fail / warn, the evidence and the latency: HTTPS with a valid
//! certificate, the IRIS token request accepted, a well-formed token response, wrong
//! credentials refused, a gzip'd publish with the token accepted in time, publishes without or
//! with a garbage token refused. Output as a table, JSON, or JUnit XML for CI.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::delivery::request::RequestBuilder;
use crate::oauth::client::{parse_token_response, token_request, TokenResponse};
use crate::oauth::{Credentials, Token};
use crate::payload::{render_user_entry, PayloadHeader, UserRecord};
use crate::transport::{ClientOptions, HttpClient};

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub token_url: Uri,
    pub publish_url: Uri,
    pub credentials: Credentials,
    pub scope: Option<String>,
    pub method: Method,
    pub ca_file: Option<std::path::PathBuf>,
    /// IRIS expects an answer within this time.
    pub timeout: Duration,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
    pub latency_ms: Option<u64>,
}

fn check(
    name: &'static str,
    verdict: Verdict,
    evidence: impl Into<String>,
    latency: Option<Duration>,
) -> Check {
    Check {
        name,
        verdict,
        evidence: evidence.into(),
        latency_ms: latency.map(|d| d.as_millis() as u64),
    }
}

/// A sample user for the publish checks.
fn sample_user() -> UserRecord {
    let mut seg = Vec::new();
    crate::payload::render_segment("14356", "1", None, jiff::Timestamp::now(), None, &mut seg)
        .expect("a valid sample segment");
    render_user_entry(
        "19393572368547369350319949416899715727",
        "4250948725049857",
        &seg,
    )
}

/// Runs every check; later checks that need a token are skipped (failed) without one.
pub async fn run(opts: &VerifyOptions) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, url) in [
        ("token_url_https", &opts.token_url),
        ("publish_url_https", &opts.publish_url),
    ] {
        out.push(if url.scheme_str() == Some("https") {
            check(name, Verdict::Pass, format!("{url}"), None)
        } else {
            check(
                name,
                Verdict::Fail,
                format!("{url} is not https: tokens would travel in clear"),
                None,
            )
        });
    }
    let http = match HttpClient::new(&ClientOptions {
        ca_file: opts.ca_file.as_deref(),
        connect_timeout: opts.timeout,
        pool_idle_timeout: Duration::from_secs(30),
        http2: false,
    }) {
        Ok(h) => h,
        Err(e) => {
            out.push(check("tls_setup", Verdict::Fail, e.to_string(), None));
            return out;
        }
    };
    let ua = HeaderValue::from_static(crate::config::IRIS_USER_AGENT);
    let max = crate::oauth::client::MAX_TOKEN_RESPONSE;

    // The token request IRIS sends.
    let started = Instant::now();
    let req = token_request(
        &opts.token_url,
        &opts.credentials,
        opts.scope.as_deref(),
        &ua,
    );
    let resp = http
        .send(req, opts.timeout.max(Duration::from_secs(10)), max)
        .await;
    let took = started.elapsed();
    let mut token: Option<TokenResponse> = None;
    match resp {
        Err(e) => {
            let cert = e.to_string().to_ascii_lowercase().contains("certificate");
            out.push(check(
                "tls_certificate",
                if cert { Verdict::Fail } else { Verdict::Warn },
                if cert {
                    format!("the certificate was not accepted: {e}")
                } else {
                    format!("no answer, certificate not checked: {e}")
                },
                Some(took),
            ));
            out.push(check(
                "token_request_accepted",
                Verdict::Fail,
                e.to_string(),
                Some(took),
            ));
        }
        Ok(resp) => {
            out.push(check(
                "tls_certificate",
                Verdict::Pass,
                "verified against the trust roots",
                Some(took),
            ));
            let no_store = resp
                .headers
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("no-store"));
            match parse_token_response(resp.status, &resp.headers, &resp.body, &[]) {
                Ok(t) => {
                    out.push(check(
                        "token_request_accepted",
                        Verdict::Pass,
                        format!("{} with a Bearer token", resp.status),
                        Some(took),
                    ));
                    out.push(match t.expires_in {
                        Some(e) => check(
                            "token_expires_in",
                            Verdict::Pass,
                            format!("expires_in {} s", e.as_secs()),
                            None,
                        ),
                        None => check(
                            "token_expires_in",
                            Verdict::Warn,
                            "no expires_in: the token is kept until a publish answers 401",
                            None,
                        ),
                    });
                    out.push(if no_store {
                        check(
                            "token_no_store",
                            Verdict::Pass,
                            "Cache-Control: no-store",
                            None,
                        )
                    } else {
                        check(
                            "token_no_store",
                            Verdict::Warn,
                            "no Cache-Control: no-store (RFC 6749 §5.1 requires it)",
                            None,
                        )
                    });
                    token = Some(t);
                }
                Err(e) => out.push(check(
                    "token_request_accepted",
                    Verdict::Fail,
                    e.to_string(),
                    Some(took),
                )),
            }
        }
    }

    // Wrong credentials must be refused.
    let wrong = match &opts.credentials {
        Credentials::ClientSecret { client_id, .. } => Credentials::ClientSecret {
            client_id: client_id.clone(),
            secret: SecretString::from(format!("irisd-verify-wrong-{:08x}", fastrand::u32(..))),
        },
        Credentials::Basic(_) => Credentials::Basic(SecretString::from(format!(
            "aXJpc2Qtd3Jvbmc6{:08x}",
            fastrand::u32(..)
        ))),
    };
    let started = Instant::now();
    let req = token_request(&opts.token_url, &wrong, opts.scope.as_deref(), &ua);
    out.push(
        match http
            .send(req, opts.timeout.max(Duration::from_secs(10)), max)
            .await
        {
            Ok(r) if r.status == 401 => check(
                "wrong_credentials_rejected",
                Verdict::Pass,
                "401",
                Some(started.elapsed()),
            ),
            Ok(r) if r.status.is_client_error() => check(
                "wrong_credentials_rejected",
                Verdict::Warn,
                format!(
                    "{} (RFC 6749 §5.2 says 401 invalid_client for failed Basic authentication)",
                    r.status
                ),
                Some(started.elapsed()),
            ),
            Ok(r) => check(
                "wrong_credentials_rejected",
                Verdict::Fail,
                format!("answered {} to wrong credentials", r.status),
                Some(started.elapsed()),
            ),
            Err(e) => check(
                "wrong_credentials_rejected",
                Verdict::Fail,
                e.to_string(),
                Some(started.elapsed()),
            ),
        },
    );

    // Publish: with the token (gzip), without, with garbage.
    let builder = RequestBuilder::new(
        opts.publish_url.clone(),
        opts.method.clone(),
        ua.clone(),
        Some(flate2::Compression::default()),
        PayloadHeader {
            user_dpid: "12345".into(),
            client_id: "74323".into(),
            destination_id: "423".into(),
        },
    );
    let prepared = builder.build(
        &[sample_user()],
        jiff::Timestamp::now(),
        format!("verify{:024x}", fastrand::u128(..) >> 32),
    );
    let send = |req: Request<Full<Bytes>>| http.send(req, opts.timeout, 64 * 1024);
    match &token {
        Some(t) => {
            let tok = Token {
                value: t.access_token.clone(),
                generation: 1,
                obtained_at: Instant::now(),
                expires_at: None,
                refresh_at: None,
            };
            let started = Instant::now();
            let r = send(builder.http_request(&prepared, &tok)).await;
            let took = started.elapsed();
            out.push(match r {
                Ok(r) if r.status == 200 => check(
                    "publish_accepted",
                    Verdict::Pass,
                    format!(
                        "{} {} with gzip JSON: 200",
                        opts.method,
                        opts.publish_url.path()
                    ),
                    Some(took),
                ),
                Ok(r) if r.status.is_success() => check(
                    "publish_accepted",
                    Verdict::Warn,
                    format!("{}: IRIS counts only 200 as success", r.status),
                    Some(took),
                ),
                Ok(r) => check(
                    "publish_accepted",
                    Verdict::Fail,
                    format!(
                        "{}: {}",
                        r.status,
                        crate::oauth::client::snippet(&r.body, &[])
                    ),
                    Some(took),
                ),
                Err(e) => check("publish_accepted", Verdict::Fail, e.to_string(), Some(took)),
            });
            out.push(if took <= opts.timeout {
                check(
                    "publish_latency",
                    Verdict::Pass,
                    format!("{} ms", took.as_millis()),
                    Some(took),
                )
            } else {
                check(
                    "publish_latency",
                    Verdict::Fail,
                    format!(
                        "{} ms: IRIS expects an answer within {} ms",
                        took.as_millis(),
                        opts.timeout.as_millis()
                    ),
                    Some(took),
                )
            });
        }
        None => out.push(check(
            "publish_accepted",
            Verdict::Fail,
            "not tried: no token",
            None,
        )),
    }
    let garbage = Token {
        value: SecretString::from(format!("irisd-verify-garbage-{:016x}", fastrand::u64(..))),
        generation: 0,
        obtained_at: Instant::now(),
        expires_at: None,
        refresh_at: None,
    };
    for (name, req) in [
        ("publish_without_token_rejected", {
            let mut r = builder.http_request(&prepared, &garbage);
            r.headers_mut().remove(http::header::AUTHORIZATION);
            r
        }),
        (
            "publish_with_garbage_token_rejected",
            builder.http_request(&prepared, &garbage),
        ),
    ] {
        let started = Instant::now();
        out.push(match send(req).await {
            Ok(r) if r.status == 401 => check(name, Verdict::Pass, "401", Some(started.elapsed())),
            Ok(r) if r.status == 403 => check(
                name,
                Verdict::Warn,
                "403 (RFC 6750 says 401 for a missing or invalid token)",
                Some(started.elapsed()),
            ),
            Ok(r) => check(
                name,
                Verdict::Fail,
                format!("answered {}", r.status),
                Some(started.elapsed()),
            ),
            Err(e) => check(name, Verdict::Fail, e.to_string(), Some(started.elapsed())),
        });
    }
    out
}

/// True when no check failed.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}

/// A table for a terminal.
pub fn table(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let v = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        let lat = c.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default();
        s.push_str(&format!("{v}  {:<38} {:>8}  {}\n", c.name, lat, c.evidence));
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML for CI systems (warnings are passing test cases with a system-out note).
pub fn junit(checks: &[Check]) -> String {
    let failures = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"irisd verify\" tests=\"{}\" failures=\"{failures}\">\n",
        checks.len()
    );
    for c in checks {
        let time = c.latency_ms.map(|l| l as f64 / 1000.0).unwrap_or(0.0);
        s.push_str(&format!(
            "  <testcase classname=\"irisd.verify\" name=\"{}\" time=\"{time:.3}\">",
            c.name
        ));
        match c.verdict {
            Verdict::Fail => s.push_str(&format!(
                "<failure message=\"{}\"/>",
                xml_escape(&c.evidence)
            )),
            Verdict::Warn => s.push_str(&format!(
                "<system-out>WARN: {}</system-out>",
                xml_escape(&c.evidence)
            )),
            Verdict::Pass => {}
        }
        s.push_str("</testcase>\n");
    }
    s.push_str("</testsuite>\n");
    s
}
