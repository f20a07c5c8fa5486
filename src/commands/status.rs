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

/// The status as a table. Every cell is made a string first: `serde_json::Value`'s `Display`
/// ignores widths, which misaligned the columns.
fn render(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let ms = |v: &serde_json::Value| format!("{:.1}", v.as_f64().unwrap_or(0.0));
    let mut out = String::new();
    let _ = writeln!(out, "ready: {}", cell(&v["ready"]));
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
                Some(e) => format!("age {}s, expires in {e}s", cell(&t["age_s"])),
                None => format!("age {}s, no expiry", cell(&t["age_s"])),
            },
        };
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8}  {token}",
            cell(&d["destination"]),
            cell(&d["accepted"]),
            cell(&d["delivered"]),
            cell(&d["dead_lettered"]),
            cell(&d["retries"]),
            cell(&d["in_flight"]),
            cell(&d["spooled_events"]),
            ms(&d["latency_p50_ms"]),
            ms(&d["latency_p99_ms"]),
        );
    }
    for d in v["destinations"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{}: User_DPID {} ({})",
            cell(&d["destination"]),
            cell(&d["user_dpid"]),
            cell(&d["device_id_type"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_numbers() {
        let v = serde_json::json!({
            "ready": true,
            "destinations": [
                {"destination": "partner-a", "accepted": 1234567, "delivered": 1234500,
                 "dead_lettered": 0, "retries": 12, "in_flight": 3, "spooled_events": 67,
                 "latency_p50_ms": 1.25, "latency_p99_ms": 12.5,
                 "token": {"age_s": 30, "expires_in_s": 3570}},
                {"destination": "b", "accepted": 1, "delivered": 1, "dead_lettered": 0,
                 "retries": 0, "in_flight": 0, "spooled_events": 0,
                 "latency_p50_ms": 0.5, "latency_p99_ms": 0.5, "token": null}
            ]
        });
        let table = render(&v);
        let lines: Vec<&str> = table.lines().take(4).collect();
        assert_eq!(lines[0], "ready: true");
        // Every right-aligned column ends at the same place on every row, the header's
        // included: a cell's last character, then a space.
        for line in &lines[1..] {
            let b = line.as_bytes();
            for end in [31, 42, 51, 60, 70, 81, 90, 99] {
                assert!(
                    b[end - 1] != b' ' && b[end] == b' ',
                    "column ending at {end} misaligned:\n{}",
                    lines[1..].join("\n")
                );
            }
        }
        assert!(lines[2].starts_with("partner-a "));
        assert!(lines[2].contains("age 30s, expires in 3570s"));
        assert!(lines[3].ends_with("  none"));
    }
}
