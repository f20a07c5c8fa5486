//! The intake: `POST /v1/events`, NDJSON, one user per line.
//!
//! A request is all or nothing. Every line is parsed, validated and rendered before anything is
//! queued; the first bad line answers 400 naming its line number and field, and nothing of the
//! request is accepted. Then queue room is reserved for every event of every destination the
//! request touches; if any queue lacks room the answer is 503 with `Retry-After` and, again,
//! nothing is queued. Only then are the events handed to the lanes and 202 returned.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc::error::TrySendError;

use crate::delivery::lane::LaneHandle;
use crate::payload::{render_user, IntakeEvent, UserRecord};
use crate::server::{error_response, json_response};

/// Seconds a producer is asked to wait when a queue is full.
const RETRY_AFTER_SECS: &str = "1";

/// The intake's routing state.
pub struct Intake {
    /// The lanes by destination name; `None` once the daemon is shutting down.
    lanes: ArcSwapOption<HashMap<String, LaneHandle>>,
    max_body: usize,
}

impl Intake {
    pub fn new(lanes: HashMap<String, LaneHandle>, max_body: usize) -> Self {
        Self {
            lanes: ArcSwapOption::from_pointee(lanes),
            max_body,
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
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/events") => self.events(req).await,
            (_, "/v1/events") => {
                let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }
            (&Method::GET, "/healthz") => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (_, path) => error_response(
                StatusCode::NOT_FOUND,
                format!("no such endpoint {path}; events go to POST /v1/events"),
            ),
        }
    }

    async fn events(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(lanes) = self.lanes.load_full() else {
            return unavailable("irisd is shutting down");
        };
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
        let batches = match parse_ndjson(&body, &lanes, jiff::Timestamp::now()) {
            Ok(b) => b,
            Err((status, msg)) => return error_response(status, msg),
        };
        enqueue(&lanes, batches)
    }
}

/// Parses and renders every line, grouped by destination.
fn parse_ndjson(
    body: &[u8],
    lanes: &HashMap<String, LaneHandle>,
    now: jiff::Timestamp,
) -> Result<HashMap<String, Vec<UserRecord>>, (StatusCode, String)> {
    let mut out: HashMap<String, Vec<UserRecord>> = HashMap::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let ev: IntakeEvent<'_> = serde_json::from_slice(line)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("line {n}: {e}")))?;
        let Some(lane) = lanes.get(ev.destination.as_ref()) else {
            let mut known: Vec<_> = lanes.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "line {n}: field `destination`: unknown destination {:?} (configured: {})",
                    ev.destination,
                    known.join(", ")
                ),
            ));
        };
        let record = render_user(&ev, now)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("line {n}: {e}")))?;
        if record.json.len() > lane.max_record_bytes {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "line {n}: field `segments`: the user's record is {} bytes, more than one request to {:?} may carry ({} bytes, publish.max_bytes)",
                    record.json.len(),
                    ev.destination,
                    lane.max_record_bytes
                ),
            ));
        }
        match out.get_mut(ev.destination.as_ref()) {
            Some(v) => v.push(record),
            None => {
                out.insert(ev.destination.into_owned(), vec![record]);
            }
        }
    }
    Ok(out)
}

/// Queues all batches or none.
fn enqueue(
    lanes: &HashMap<String, LaneHandle>,
    batches: HashMap<String, Vec<UserRecord>>,
) -> Response<Full<Bytes>> {
    let mut reserved = Vec::with_capacity(batches.len());
    for (name, records) in &batches {
        let lane = &lanes[name];
        match lane.tx.try_reserve_many(records.len()) {
            Ok(permits) => reserved.push((lane, permits)),
            Err(TrySendError::Full(())) => {
                return if records.len() > lane.tx.max_capacity() {
                    error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "{} events for {name:?} in one request, more than its queue holds ({}, publish.queue_capacity); split the request",
                            records.len(),
                            lane.tx.max_capacity()
                        ),
                    )
                } else {
                    unavailable(&format!(
                        "the queue of destination {name:?} is full; retry later"
                    ))
                };
            }
            Err(TrySendError::Closed(())) => return unavailable("irisd is shutting down"),
        }
    }
    let mut total = 0u64;
    let mut batches = batches;
    for (lane, permits) in reserved {
        let records = batches.remove(lane.name.as_ref()).unwrap_or_default();
        let n = records.len() as u64;
        for (permit, record) in permits.zip(records) {
            permit.send(record);
        }
        lane.metrics
            .accepted_users
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        total += n;
    }
    json_response(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "accepted": total }),
    )
}

fn unavailable(msg: &str) -> Response<Full<Bytes>> {
    let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    r
}
