//! Wiring: from a validated [`Config`] to running lanes and an intake listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::task::JoinHandle;

use crate::config::{Config, Destination};
use crate::delivery::lane::{self, LaneOptions};
use crate::delivery::request::RequestBuilder;
use crate::delivery::sender::Sender;
use crate::intake::Intake;
use crate::metrics::{DestinationMetrics, Snapshot};
use crate::oauth::{TokenCache, TokenClient};
use crate::payload::PayloadHeader;
use crate::server::{serve, ServerHandle};
use crate::transport::{ClientOptions, HttpClient, TlsSetupError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (intake.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("destination {destination:?}: tls.ca_file {source}")]
    Tls {
        destination: String,
        source: TlsSetupError,
    },
    #[error("destination {destination:?}: user_agent is not a valid header value")]
    UserAgent { destination: String },
}

/// One destination's live parts, for status and tests.
pub struct DestinationRuntime {
    pub name: String,
    pub metrics: Arc<DestinationMetrics>,
    pub tokens: Arc<TokenCache>,
}

/// A running daemon.
pub struct Daemon {
    pub intake_addr: SocketAddr,
    pub destinations: Vec<DestinationRuntime>,
    intake: Arc<Intake>,
    server: ServerHandle,
    lanes: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Starts every destination's lane and the intake listener.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        let mut handles = HashMap::new();
        let mut destinations = Vec::new();
        let mut lanes = Vec::new();
        for d in &config.destinations {
            if d.allow_insecure_http {
                tracing::warn!(
                    destination = %d.name,
                    "allow_insecure_http = true: tokens and credentials may travel in clear text; never use this outside local tests"
                );
            }
            let (handle, task, runtime) = start_destination(d)?;
            handles.insert(d.name.clone(), handle);
            destinations.push(runtime);
            lanes.push(task);
        }
        let listener = tokio::net::TcpListener::bind(config.intake.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.intake.listen,
                source,
            })?;
        let intake = Arc::new(Intake::new(handles, config.intake.max_body_bytes));
        let for_server = intake.clone();
        let server = serve(listener, None, move |req, peer| {
            for_server.clone().handle(req, peer)
        });
        tracing::info!(
            intake = %server.addr,
            destinations = config.destinations.len(),
            "irisd is running"
        );
        Ok(Daemon {
            intake_addr: server.addr,
            destinations,
            intake,
            server,
            lanes,
        })
    }

    /// Metrics of the destination called `name`.
    pub fn snapshot(&self, name: &str) -> Option<Snapshot> {
        self.destinations
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.metrics.snapshot())
    }

    /// Stops the intake, sends what is queued, and waits up to `grace` for the lanes.
    /// Returns false if the lanes did not finish in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.intake.close();
        self.server.shutdown(grace).await;
        let lanes = futures_join_all(self.lanes);
        tokio::time::timeout(grace, lanes).await.is_ok()
    }
}

async fn futures_join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

fn start_destination(
    d: &Destination,
) -> Result<(lane::LaneHandle, JoinHandle<()>, DestinationRuntime), StartError> {
    let http = HttpClient::new(&ClientOptions {
        ca_file: d.tls.ca_file.as_deref(),
        connect_timeout: d.publish.connect_timeout,
        pool_idle_timeout: Duration::from_secs(90),
    })
    .map_err(|source| StartError::Tls {
        destination: d.name.clone(),
        source,
    })?;
    let user_agent = HeaderValue::from_str(&d.user_agent).map_err(|_| StartError::UserAgent {
        destination: d.name.clone(),
    })?;
    let metrics = Arc::new(DestinationMetrics::default());
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
        d.publish.gzip.then(flate2::Compression::default),
        PayloadHeader {
            user_dpid: d.user_dpid.clone(),
            client_id: d.aam_client_id.clone(),
            destination_id: d.destination_id.clone(),
        },
    );
    let sender = Arc::new(Sender::new(
        d.name.clone(),
        http,
        builder,
        tokens.clone(),
        d.publish.timeout,
        metrics.clone(),
    ));
    let (handle, task) = lane::spawn(
        sender,
        LaneOptions {
            max_users: d.publish.max_users,
            max_bytes: d.publish.max_bytes,
            linger: d.publish.linger,
            max_in_flight: d.publish.max_in_flight,
            queue_capacity: d.publish.queue_capacity,
        },
        metrics.clone(),
    );
    Ok((
        handle,
        task,
        DestinationRuntime {
            name: d.name.clone(),
            metrics,
            tokens,
        },
    ))
}
