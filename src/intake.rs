//! The intake: `POST /v1/events`, NDJSON, one user per line.
//!
//! A request is all or nothing. Every line is parsed, validated and rendered before anything is
//! stored; the first bad line answers 400 naming its line number and field, and nothing of the
//! request is accepted. Then spool room is reserved for every destination the request touches;
//! if a bound would be passed the answer is 503 with `Retry-After` and, again, nothing is
//! stored. The events of all destinations are then appended to the spool in one transaction,
//! and only after the fsync that covers them does the intake answer 202 and wake the lanes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::clock::now_ms;
use crate::delivery::lane::LaneHandle;
use crate::payload::{render_user_into, IntakeEvent};
use crate::server::{error_response, json_response};
use crate::spool::{EventBlock, Spool, SpoolError};

/// Seconds a producer is asked to wait when the spool is full.
const RETRY_AFTER_SECS: &str = "1";

/// The intake's routing state.
pub struct Intake {
    /// The lanes by destination name; `None` once the daemon is shutting down.
    lanes: ArcSwapOption<HashMap<String, LaneHandle>>,
    spool: Arc<Spool>,
    max_body: usize,
    /// Bearer token producers must present, when configured.
    auth: Option<secrecy::SecretString>,
}

impl Intake {
    pub fn new(lanes: HashMap<String, LaneHandle>, spool: Arc<Spool>, max_body: usize) -> Self {
        Self {
            lanes: ArcSwapOption::from_pointee(lanes),
            spool,
            max_body,
            auth: None,
        }
    }

    /// Requires `Authorization: Bearer <token>` on `POST /v1/events`.
    pub fn with_auth(mut self, token: Option<secrecy::SecretString>) -> Self {
        self.auth = token;
        self
    }

    /// Routes to a new set of lanes (a configuration reload).
    pub fn replace_lanes(&self, lanes: HashMap<String, LaneHandle>) {
        if self.lanes.load().is_some() {
            self.lanes.store(Some(Arc::new(lanes)));
        }
    }

    /// Stops accepting events (503) and releases the lanes so they can drain.
    pub fn close(&self) {
        self.lanes.store(None);
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        // `/v1/destinations/NAME/events`: the events of one destination only, so a producer can
        // keep one partner's traffic from waiting on another's full spool quota.
        let only = path
            .strip_prefix("/v1/destinations/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .map(|name| {
                percent_encoding::percent_decode_str(name)
                    .decode_utf8_lossy()
                    .into_owned()
            });
        if path == "/v1/events" || only.is_some() {
            if req.method() != Method::POST {
                let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
            if let Some(token) = &self.auth {
                if let Err(refused) = crate::server::check_bearer(req.headers(), token) {
                    return *refused;
                }
            }
            return self.events(req, only.as_deref()).await;
        }
        match (req.method(), path) {
            (&Method::GET, "/healthz") => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (_, path) => error_response(
                StatusCode::NOT_FOUND,
                format!("no such endpoint {path}; events go to POST /v1/events or POST /v1/destinations/NAME/events"),
            ),
        }
    }

    /// `only`: the destination the endpoint is for, when it is for one.
    async fn events(&self, req: Request<Incoming>, only: Option<&str>) -> Response<Full<Bytes>> {
        let Some(lanes) = self.lanes.load_full() else {
            return unavailable("irisd is shutting down", &[]);
        };
        if let Some(name) = only {
            if !lanes.contains_key(name) {
                return error_response(
                    StatusCode::NOT_FOUND,
                    format!(
                        "unknown destination {name:?} (configured: {})",
                        known(&lanes)
                    ),
                );
            }
        }
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body over {} bytes (intake.max_body_bytes); split it",
                    self.max_body
                ),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return too_large();
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return too_large()
            }
            Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
        };
        let body = match crate::transport::decode_body(&parts.headers, &body, self.max_body) {
            Ok(b) => b,
            Err(crate::transport::DecodeError::TooLarge(_)) => return too_large(),
            Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
        };
        // A full spool refuses before parsing: under overload, a refusal must cost far less
        // than an acceptance (the body's size stands in for the rendered events' until then).
        let candidates: Vec<&str> = match only {
            Some(name) => vec![name],
            None => lanes.keys().map(String::as_str).collect(),
        };
        if let Err(SpoolError::Full {
            destination, which, ..
        }) = self.spool.precheck(candidates, body.len() as u64)
        {
            let full: &[&str] = if which == "spool.max_bytes" {
                &[]
            } else {
                &[destination.as_str()]
            };
            return unavailable(
                &format!(
                    "spool full ({which}); nothing of this request was accepted, retry later{}",
                    if full.is_empty() {
                        ""
                    } else {
                        ", or send each destination's events to POST /v1/destinations/NAME/events so one full partner does not hold up the others"
                    }
                ),
                full,
            );
        }
        let batches = match parse_ndjson(&body, &lanes, only, jiff::Timestamp::now()) {
            Ok(b) => b,
            Err((status, msg)) => return error_response(status, msg),
        };
        self.store(lanes, batches).await
    }

    /// Spools all batches or none, then wakes their lanes.
    async fn store(
        &self,
        lanes: Arc<HashMap<String, LaneHandle>>,
        batches: HashMap<String, EventBlock>,
    ) -> Response<Full<Bytes>> {
        let mut reservations = Vec::with_capacity(batches.len());
        let mut items = Vec::with_capacity(batches.len());
        let mut full = Vec::new();
        let mut total = 0u64;
        for (name, block) in batches {
            match self.spool.reserve(&name, block.event_bytes()) {
                Ok(r) => reservations.push(r),
                Err(SpoolError::Full {
                    destination, which, ..
                }) => full.push((destination, which)),
                Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
            total += block.len() as u64;
            items.push((lanes[&name].name.clone(), block));
        }
        if !full.is_empty() {
            // All or nothing: the reservations taken are given back as they drop.
            full.sort();
            let names: Vec<String> = full.iter().map(|(d, _)| format!("{d:?}")).collect();
            let bounds: Vec<&str> = full.iter().map(|(_, w)| *w).collect();
            return unavailable(
                &format!(
                    "spool full for destination {} ({}); nothing of this request was accepted, retry later, or send each destination's events to POST /v1/destinations/NAME/events so one full partner does not hold up the others",
                    names.join(", "),
                    bounds.join(", ")
                ),
                &full.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
            );
        }
        if items.is_empty() {
            return json_response(StatusCode::ACCEPTED, &serde_json::json!({ "accepted": 0 }));
        }
        // The append, its counting and the lanes' wake-up run to the end even if the producer
        // hangs up meanwhile (hyper then drops this future): every event spooled counts as
        // accepted, and its lane hears of it at once.
        let spool = self.spool.clone();
        let stored = tokio::spawn(async move {
            let counts: Vec<(Arc<str>, u64)> = items
                .iter()
                .map(|(n, b)| (n.clone(), b.len() as u64))
                .collect();
            spool.append(items, now_ms(), reservations).await?;
            for (name, n) in counts {
                let lane = &lanes[name.as_ref()];
                lane.metrics
                    .accepted_users
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                lane.notify.notify_one();
            }
            Ok::<_, SpoolError>(())
        });
        match stored.await {
            Ok(Ok(())) => json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "accepted": total }),
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "spool append failed; the request was not accepted");
                unavailable(
                    &format!("cannot store the events ({e}); nothing was accepted"),
                    &[],
                )
            }
            Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The configured destinations, for messages.
fn known(lanes: &HashMap<String, LaneHandle>) -> String {
    let mut known: Vec<_> = lanes.keys().map(String::as_str).collect();
    known.sort_unstable();
    known.join(", ")
}

/// Parses and renders every line, grouped by destination.
fn parse_ndjson(
    body: &[u8],
    lanes: &HashMap<String, LaneHandle>,
    only: Option<&str>,
    now: jiff::Timestamp,
) -> Result<HashMap<String, EventBlock>, (StatusCode, String)> {
    let mut out: HashMap<String, EventBlock> = HashMap::new();
    // UTF-8 is checked once for the whole body (serde_json then need not check every string).
    let body = std::str::from_utf8(body).map_err(|e| {
        let at = e.valid_up_to();
        let line = body[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at
            - body[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        (
            StatusCode::BAD_REQUEST,
            format!("line {line}: not UTF-8 at column {column}"),
        )
    })?;
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let ev: IntakeEvent<'_> = serde_json::from_str(line)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("line {n}: {e}")))?;
        let mut ev = ev;
        match only {
            Some(name) if ev.destination.is_empty() => ev.destination = name.to_owned().into(),
            Some(name) if ev.destination != name => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "line {n}: field `destination`: {:?}, but this endpoint takes events for {name:?} only",
                        ev.destination
                    ),
                ))
            }
            _ => {}
        }
        if ev.destination.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("line {n}: missing field `destination`"),
            ));
        }
        let Some(lane) = lanes.get(ev.destination.as_ref()) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "line {n}: field `destination`: unknown destination {:?} (configured: {})",
                    ev.destination,
                    known(lanes)
                ),
            ));
        };
        // Rendered straight into the destination's block: the spool stores it as it is.
        let block = match out.get_mut(ev.destination.as_ref()) {
            Some(b) => b,
            None => out.entry(ev.destination.to_string()).or_default(),
        };
        let record_len = block
            .push_with(|buf| render_user_into(&ev, now, buf))
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("line {n}: {e}")))?
            .len();
        if record_len > lane.max_record_bytes {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "line {n}: field `segments`: the user's record is {} bytes, more than one request to {:?} may carry ({} bytes, publish.max_bytes)",
                    record_len,
                    ev.destination,
                    lane.max_record_bytes
                ),
            ));
        }
    }
    Ok(out)
}

/// 503 with `Retry-After`; `full` names the destinations whose spool quota is full.
fn unavailable(msg: &str, full: &[&str]) -> Response<Full<Bytes>> {
    let mut r = if full.is_empty() {
        error_response(StatusCode::SERVICE_UNAVAILABLE, msg)
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": msg, "full_destinations": full }),
        )
    };
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    r
}
