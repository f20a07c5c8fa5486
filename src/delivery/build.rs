//! From a destination's configuration to the parts that deliver to it: its HTTPS client (pool,
//! TLS settings), token cache, request builder and sender. Used by the daemon for each lane and
//! by `irisd batch run` for a one-off run, so both talk to the partner the same way.

use std::sync::Arc;

use http::HeaderValue;

use super::request::RequestBuilder;
use super::retry::SuccessPolicy;
use super::sender::Sender;
use crate::config::Destination;
use crate::metrics::DestinationMetrics;
use crate::oauth::{TokenCache, TokenClient};
use crate::payload::PayloadHeader;
use crate::transport::{ClientOptions, HttpClient, TlsSetupError};

/// Why a destination's delivery parts could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("destination {destination:?}: [destination.tls] {source}")]
    Tls {
        destination: String,
        source: TlsSetupError,
    },
    #[error("destination {destination:?}: user_agent is not a valid header value")]
    UserAgent { destination: String },
}

/// The HTTPS client, token cache and sender of one destination.
pub fn build_sender(
    d: &Destination,
    metrics: Arc<DestinationMetrics>,
) -> Result<(Arc<Sender>, Arc<TokenCache>), BuildError> {
    let http = HttpClient::new_with(
        &ClientOptions {
            ca_file: d.tls.ca_file.as_deref(),
            connect_timeout: d.publish.connect_timeout,
            pool_idle_timeout: d.publish.pool_idle_timeout,
            http2: d.publish.http2,
        },
        crate::transport::TlsOptions {
            client_cert: d
                .tls
                .client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            insecure_skip_verify: d.tls.insecure_skip_verify,
        },
    )
    .map_err(|source| BuildError::Tls {
        destination: d.name.clone(),
        source,
    })?;
    let user_agent = HeaderValue::from_str(&d.user_agent).map_err(|_| BuildError::UserAgent {
        destination: d.name.clone(),
    })?;
    let token_client = TokenClient::new(
        http.clone(),
        d.auth.token_url.clone(),
        d.auth.credentials.clone(),
        d.auth.scope.clone(),
        user_agent.clone(),
        d.auth.timeout,
    );
    let tokens = Arc::new(TokenCache::new(
        d.name.clone(),
        token_client,
        d.auth.refresh_skew,
        metrics.clone(),
    ));
    let builder = RequestBuilder::new(
        d.publish.url.clone(),
        d.publish.method.as_method(),
        user_agent,
        d.publish
            .gzip
            .then(|| flate2::Compression::new(d.publish.gzip_level)),
        PayloadHeader {
            user_dpid: d.user_dpid.clone(),
            client_id: d.aam_client_id.clone(),
            destination_id: d.destination_id.clone(),
        },
    )
    .with_signing(d.signing.clone());
    let sender = Arc::new(Sender::new(
        d.name.clone(),
        http,
        builder,
        tokens.clone(),
        d.publish.timeout,
        SuccessPolicy {
            statuses: d.publish.success_status.clone(),
        },
        metrics,
    ));
    Ok((sender, tokens))
}
