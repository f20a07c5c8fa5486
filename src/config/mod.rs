//! The operator's TOML configuration.
//!
//! Parsing happens in two steps. First the file is deserialized into the raw [`schema`], which
//! mirrors the TOML exactly (`deny_unknown_fields` everywhere, so a typo is an error, not a
//! silently ignored key); `serde_path_to_error` tells us the dotted key of any error and the
//! TOML span gives the line. Then [`validate`] checks what serde cannot and produces the
//! [`model`] the daemon runs on, loading [`secrets`] once into [`SecretString`]s that are never
//! printed ([`Config`]'s `Debug` shows `[REDACTED]`). Every error names the file, the line and
//! the key (`irisd.toml:14: destination[0].auth.token_url: ...`). Before any of this, `${VAR}`
//! and `${VAR:-default}` in string values are taken from the environment ([`interpolate`]).
//!
//! [`SecretString`]: secrecy::SecretString

mod interpolate;
mod model;
mod schema;
pub mod secrets;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
use schema::RawConfig;
use validate::{line_col, Ctx};

use crate::oauth::Credentials;

/// A configuration problem, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. (The OS error is part of the message, not a `source`:
    /// printed as a chain it would say the same thing twice.)
    #[error("{path}: cannot read config file: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema (unknown key, wrong type, missing key).
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// The TOML parsed but a value is not acceptable.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::from_toml(path, &text)
    }

    /// Only the `[spool]` section of a configuration file (the rest is checked for syntax and
    /// schema but secrets are not loaded): what `irisd dlq` needs.
    pub fn load_spool(path: &Path) -> Result<SpoolConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let text = interpolated(path, &text)?;
        let raw = parse_raw(path, &text)?;
        let ctx = Ctx {
            path,
            text: &text,
            strict_permissions: false,
        };
        ctx.spool(&raw.spool)
    }

    /// Parses and validates configuration text; `path` is used in messages and to resolve
    /// relative file paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let text = &interpolated(path, text)?;
        let raw = parse_raw(path, text)?;
        let ctx = Ctx {
            path,
            text,
            strict_permissions: raw.strict_permissions,
        };
        ctx.config(raw)
    }
}

/// The text with `${VAR}` / `${VAR:-default}` references in its strings replaced from the
/// environment (see [`interpolate`]).
fn interpolated(path: &Path, text: &str) -> Result<String, ConfigError> {
    interpolate::interpolate(text, |name| std::env::var(name).ok()).map_err(|e| {
        ConfigError::Invalid {
            path: path.to_owned(),
            line: e.line,
            key: e.key.unwrap_or_else(|| "(value)".into()),
            message: e.message,
        }
    })
}

fn parse_raw(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = dotted_key(err.path());
        let inner = err.into_inner();
        let (line, column) = inner
            .span()
            .map(|s| line_col(text, s.start))
            .unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            key: if key.is_empty() {
                "(top level)".into()
            } else {
                key
            },
            message: inner.message().to_string(),
        }
    })
}

/// The key as the operator wrote it (`destination[0].publish.max_users`), without the
/// internal field toml's `Spanned` values add to the path.
fn dotted_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        let name = match segment {
            Segment::Seq { index } => {
                key.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } if key.starts_with("$__serde_spanned_private") => continue,
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            Segment::Unknown => "?",
        };
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(name);
    }
    key
}

impl Config {
    /// A human-readable summary for `irisd check-config`: every destination, secrets as `***`.
    pub fn summary(&self) -> String {
        use fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: OK, intake on {}",
            self.path.display(),
            self.intake.listen
        );
        for d in &self.destinations {
            let cred = match &d.auth.credentials {
                Credentials::ClientSecret { client_id, .. } => {
                    format!("client_id={client_id} client_secret=***")
                }
                Credentials::Basic(_) => "basic_credentials=***".to_string(),
            };
            let _ = writeln!(
                out,
                "destination {:?} (profile {:?}): AAM_Destination_Id={} User_DPID={} ({}) Client_ID={}\n  token  POST {} ({cred}{})\n  publish {} {} gzip={} max_users={} max_bytes={} linger={}ms timeout={}ms max_in_flight={}{}",
                d.name,
                d.profile,
                d.destination_id,
                d.user_dpid,
                crate::payload::device_id_type(&d.user_dpid),
                d.aam_client_id,
                d.auth.token_url,
                d.auth.scope.as_ref().map(|s| format!(" scope={s:?}")).unwrap_or_default(),
                d.publish.method,
                d.publish.url,
                d.publish.gzip,
                d.publish.max_users,
                d.publish.max_bytes,
                d.publish.linger.as_millis(),
                d.publish.timeout.as_millis(),
                d.publish.max_in_flight,
                if d.allow_insecure_http { "\n  WARNING: allow_insecure_http = true" } else { "" },
            );
        }
        out
    }
}
