//! `irisd status`: a running daemon's per-destination summary, fetched from its admin listener
//! (`GET /status`) and printed as a table.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use super::CommandError;

/// Fetches `/status` from the admin listener at `admin` and prints it.
pub async fn run(admin: SocketAddr, token_file: Option<&Path>) -> Result<ExitCode, CommandError> {
    let status = fetch(admin, token_file).await?;
    print!("{}", render(&status));
    Ok(ExitCode::SUCCESS)
}

async fn fetch(
    admin: SocketAddr,
    token_file: Option<&Path>,
) -> Result<serde_json::Value, CommandError> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::get(format!("http://{admin}/status"));
    if let Some(f) = token_file {
        let token = std::fs::read_to_string(f).map_err(CommandError::io(format!(
            "reading the admin token from {}",
            f.display()
        )))?;
        let mut v =
            http::HeaderValue::try_from(format!("Bearer {}", token.trim_end())).map_err(|_| {
                CommandError::Usage(
                    "the admin token file holds characters a header cannot carry".into(),
                )
            })?;
        v.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, v);
    }
    let req = req
        .body(http_body_util::Full::default())
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let resp = client.request(req).await.map_err(|e| {
        CommandError::Failed(format!(
            "cannot reach the admin listener at {admin} (is [admin] listen set?): {e}"
        ))
    })?;
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        return Err(CommandError::Usage(format!(
            "the admin listener at {admin} wants a bearer token: pass --token-file"
        )));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CommandError::Failed(format!("reading the answer of {admin}: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|_| {
        CommandError::Failed(format!(
            "the admin listener at {admin} answered something else than status JSON"
        ))
    })
}

/// The status as a table.
fn render(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "ready: {}", v["ready"]);
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8}  token",
        "destination",
        "accepted",
        "delivered",
        "dead",
        "retries",
        "in flight",
        "spooled",
        "p50 ms",
        "p99 ms"
    );
    for d in v["destinations"].as_array().into_iter().flatten() {
        let token = match &d["token"] {
            serde_json::Value::Null => "none".to_string(),
            t => match t["expires_in_s"].as_u64() {
                Some(e) => format!("age {}s, expires in {e}s", t["age_s"]),
                None => format!("age {}s, no expiry", t["age_s"]),
            },
        };
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>8.1} {:>8.1}  {token}",
            d["destination"].as_str().unwrap_or("?"),
            d["accepted"],
            d["delivered"],
            d["dead_lettered"],
            d["retries"],
            d["in_flight"],
            d["spooled_events"],
            d["latency_p50_ms"].as_f64().unwrap_or(0.0),
            d["latency_p99_ms"].as_f64().unwrap_or(0.0),
        );
    }
    out
}
