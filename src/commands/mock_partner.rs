//! `irisd mock-partner`: runs the mock partner until SIGTERM or SIGINT, from its config file
//! and command-line overrides, and prints where its endpoints and CA are.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::CommandError;
use crate::mock::{ClientSpec, MockConfig, MockPartner};

/// The mock's settings from the command line; each overrides the config file's.
#[derive(Debug, Default)]
pub struct MockPartnerArgs {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub tls_dir: Option<PathBuf>,
    /// `ID:SECRET` each.
    pub clients: Vec<String>,
    /// Seconds, or `none`.
    pub token_ttl: Option<String>,
    pub strict: bool,
    pub require_client_cert: bool,
    /// `KEY=VALUE` each.
    pub faults: Vec<String>,
}

/// The mock's configuration: the file's, with the command line's overrides.
fn configure(args: MockPartnerArgs) -> Result<MockConfig, CommandError> {
    let mut cfg = match &args.config {
        Some(path) => MockConfig::load(path).map_err(CommandError::Usage)?,
        None => MockConfig::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.tls_dir {
        cfg.tls_dir = d;
    }
    if let Some(ttl) = args.token_ttl {
        cfg.token_ttl_secs = match ttl.as_str() {
            "none" => None,
            n => Some(n.parse().map_err(|_| {
                CommandError::Usage(format!("--token-ttl {n:?}: expected seconds or `none`"))
            })?),
        };
    }
    cfg.strict_content_type |= args.strict;
    cfg.require_client_cert |= args.require_client_cert;
    if !args.faults.is_empty() {
        let json = |e: serde_json::Error| CommandError::Usage(format!("--fault: {e}"));
        let mut current = serde_json::to_value(&cfg.faults).map_err(json)?;
        for f in &args.faults {
            let (key, value) = f
                .split_once('=')
                .ok_or_else(|| CommandError::Usage(format!("--fault {f:?}: expected KEY=VALUE")))?;
            let parsed: toml::Table = format!("v = {value}").parse().map_err(|_| {
                CommandError::Usage(format!(
                    "--fault {f:?}: {value:?} is not a number, boolean or quoted string"
                ))
            })?;
            current[key.trim()] = serde_json::to_value(&parsed["v"]).map_err(json)?;
        }
        cfg.faults = serde_json::from_value(current).map_err(json)?;
    }
    for c in args.clients {
        let Some((id, secret)) = c.split_once(':') else {
            return Err(CommandError::Usage("--client must be ID:SECRET".into()));
        };
        cfg.clients.push(ClientSpec::with_secret(id, secret));
    }
    if cfg.clients.is_empty() {
        let secret = format!("{:032x}", fastrand::u128(..));
        // Printed on purpose: this is a throwaway credential the operator needs to configure a client.
        eprintln!(
            "no --client given; accepting client_id \"iris\" with client_secret \"{secret}\""
        );
        cfg.clients.push(ClientSpec::with_secret("iris", &secret));
    }
    Ok(cfg)
}

/// Runs the mock partner until SIGTERM or SIGINT.
pub async fn run(args: MockPartnerArgs) -> Result<ExitCode, CommandError> {
    let mut signals = super::run::Signals::install()?;
    let mock = MockPartner::start(configure(args)?)
        .await
        .map_err(CommandError::Failed)?;
    eprintln!(
        "mock partner listening on https://{}\n  token endpoint:   {}\n  publish endpoint: {}\n  trust this CA:    {}\n  stats:            {}",
        mock.addr,
        mock.token_url(),
        mock.publish_url(),
        mock.ca_file.display(),
        mock.url("/_mock/stats"),
    );
    if mock.state.config().require_client_cert {
        let dir = mock.ca_file.parent().unwrap_or(std::path::Path::new("."));
        eprintln!(
            "  client certificate required; irisd's [destination.tls]:\n    client_cert_file = \"{}\"\n    client_key_file = \"{}\"",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        );
    }
    signals.stop().await;
    mock.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
