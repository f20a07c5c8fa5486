//! `irisd verify`: checks a partner's real endpoints the way IRIS will use them, and prints
//! the result as a table, JSON or JUnit. The credentials are loaded the way the configuration
//! loads them (same rules for secret files).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::CommandError;
use crate::config::secrets::{CredentialSources, Source};
use crate::config::PublishMethod;

/// How `irisd verify` prints its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyFormat {
    Table,
    Json,
    Junit,
}

impl std::str::FromStr for VerifyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(VerifyFormat::Table),
            "json" => Ok(VerifyFormat::Json),
            "junit" => Ok(VerifyFormat::Junit),
            other => Err(format!("{other:?}: expected table, json or junit")),
        }
    }
}

/// What `irisd verify` was asked to check.
#[derive(Debug)]
pub struct VerifyArgs {
    pub token_url: http::Uri,
    pub publish_url: http::Uri,
    pub credentials: CredentialSources,
    pub scope: Option<String>,
    pub method: PublishMethod,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub format: VerifyFormat,
}

/// Runs the checks; the exit code is non-zero when any fails.
pub async fn run(args: VerifyArgs) -> Result<ExitCode, CommandError> {
    let flag = |s: Source| match s {
        Source::ClientId => "--client-id",
        Source::ClientSecretEnv => "--client-secret-env",
        Source::ClientSecretFile => "--client-secret-file",
        Source::BasicEnv => "--basic-env",
        Source::BasicFile => "--basic-file",
    };
    let credentials = args
        .credentials
        .load(flag, false)
        .map_err(|e| match e.key {
            Some(s) => CommandError::Usage(format!("{}: {}", flag(s), e.message)),
            None => CommandError::Usage(e.message),
        })?;
    let checks = crate::verify::run(&crate::verify::VerifyOptions {
        token_url: args.token_url,
        publish_url: args.publish_url,
        credentials,
        scope: args.scope,
        method: args.method.as_method(),
        ca_file: args.ca_file,
        timeout: args.timeout,
    })
    .await;
    match args.format {
        VerifyFormat::Table => print!("{}", crate::verify::table(&checks)),
        VerifyFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&checks)
                .map_err(|e| CommandError::Failed(e.to_string()))?
        ),
        VerifyFormat::Junit => print!("{}", crate::verify::junit(&checks)),
    }
    Ok(if crate::verify::passed(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
