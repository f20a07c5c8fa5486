//! The sender: the only code that sends publish requests to a partner. It takes the token from
//! the cache, sends over the pooled HTTPS client with the request timeout, and on a 401
//! invalidates that token (if still current), gets a new one and replays the request once.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::request::{PreparedRequest, RequestBuilder};
use super::retry::{classify, parse_retry_after, Class, SuccessPolicy};
use crate::metrics::DestinationMetrics;
use crate::oauth::client::snippet;
use crate::oauth::{Token, TokenCache};
use crate::transport::HttpClient;

/// How much of a partner's response body we keep as evidence.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The result of sending one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    Failed {
        class: Class,
        status: Option<u16>,
        /// What went wrong, with the first bytes of the partner's answer.
        detail: String,
        /// The partner's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

/// Sends one destination's requests.
pub struct Sender {
    pub destination: String,
    http: HttpClient,
    builder: RequestBuilder,
    tokens: Arc<TokenCache>,
    timeout: Duration,
    success: SuccessPolicy,
    metrics: Arc<DestinationMetrics>,
}

impl Sender {
    pub fn new(
        destination: String,
        http: HttpClient,
        builder: RequestBuilder,
        tokens: Arc<TokenCache>,
        timeout: Duration,
        success: SuccessPolicy,
        metrics: Arc<DestinationMetrics>,
    ) -> Self {
        Self {
            destination,
            http,
            builder,
            tokens,
            timeout,
            success,
            metrics,
        }
    }

    pub fn builder(&self) -> &RequestBuilder {
        &self.builder
    }

    pub fn tokens(&self) -> &Arc<TokenCache> {
        &self.tokens
    }

    /// Sends `req`, replaying it once with a fresh token if the partner answers 401.
    pub async fn send(&self, req: &PreparedRequest) -> Outcome {
        let token = match self.tokens.get().await {
            Ok(t) => t,
            Err(e) => return self.no_token(req, e),
        };
        let first = self.attempt(req, &token).await;
        if !matches!(
            first,
            Outcome::Failed {
                class: Class::Unauthorized,
                ..
            }
        ) {
            return first;
        }
        self.metrics.unauthorized.fetch_add(1, Relaxed);
        tracing::info!(
            destination = %self.destination,
            request_id = %req.request_id,
            generation = token.generation,
            "partner rejected the token (401); refreshing it and replaying the request once"
        );
        self.tokens.invalidate(&token);
        let token = match self.tokens.get().await {
            Ok(t) => t,
            Err(e) => return self.no_token(req, e),
        };
        match self.attempt(req, &token).await {
            // A second 401 with a brand-new token: the partner's side is confused (or the
            // credentials were just rotated); retry later with backoff rather than give up.
            Outcome::Failed {
                class: Class::Unauthorized,
                status,
                detail,
                retry_after,
            } => {
                self.metrics.unauthorized.fetch_add(1, Relaxed);
                Outcome::Failed {
                    class: Class::Retryable,
                    status,
                    detail: format!("401 again with a fresh token: {detail}"),
                    retry_after,
                }
            }
            other => other,
        }
    }

    fn no_token(&self, req: &PreparedRequest, e: crate::oauth::TokenError) -> Outcome {
        tracing::warn!(destination = %self.destination, request_id = %req.request_id, error = %e, "no token, request not sent");
        Outcome::Failed {
            class: Class::Retryable,
            status: None,
            detail: format!("no token: {e}"),
            retry_after: match e {
                crate::oauth::TokenError::BackingOff { retry_in, .. } => Some(retry_in),
                _ => None,
            },
        }
    }

    async fn attempt(&self, req: &PreparedRequest, token: &Token) -> Outcome {
        let started = Instant::now();
        let http_req = self.builder.http_request(req, token);
        let result = self
            .http
            .send(http_req, self.timeout, MAX_RESPONSE_BODY)
            .await;
        let elapsed = started.elapsed();
        self.metrics
            .record_attempt(result.as_ref().ok().map(|r| r.status.as_u16()));
        match result {
            Ok(resp) => {
                let class = classify(resp.status, &self.success);
                let status = resp.status.as_u16();
                tracing::debug!(
                    destination = %self.destination,
                    request_id = %req.request_id,
                    status,
                    users = req.users,
                    took_ms = elapsed.as_millis() as u64,
                    "publish answered"
                );
                if class == Class::Delivered {
                    self.metrics.record_latency(elapsed);
                    Outcome::Delivered { status }
                } else {
                    let body =
                        crate::transport::decode_body(&resp.headers, &resp.body, MAX_RESPONSE_BODY)
                            .unwrap_or_else(|_| resp.body.clone());
                    Outcome::Failed {
                        class,
                        status: Some(status),
                        detail: format!("partner answered {status}: {}", snippet(&body, &[])),
                        retry_after: parse_retry_after(&resp.headers, jiff::Timestamp::now()),
                    }
                }
            }
            Err(e) => Outcome::Failed {
                class: Class::Retryable,
                status: None,
                detail: e.to_string(),
                retry_after: None,
            },
        }
    }
}
