//! Secret loading: client secrets, Basic values, signing keys, listener tokens and TLS keys come
//! from environment variables or files, never from the TOML itself. A file's trailing newline
//! is dropped (an artefact of `echo secret > file`), an empty secret is refused, and a file that
//! group or others can read is a warning (an error with `strict_permissions = true`). Messages
//! name the variable or file, never the value. `irisd verify` loads its secrets through the same
//! functions, so the same rules apply there.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use toml::Spanned;

use super::schema::RawAuth;
use super::validate::Ctx;
use super::ConfigError;
use crate::oauth::Credentials;

/// Reads a secret from the environment variable `var`.
pub fn from_env(var: &str) -> Result<SecretString, String> {
    match std::env::var(var) {
        Ok(s) if !s.is_empty() => Ok(SecretString::from(s)),
        Ok(_) => Err(format!("environment variable {var} is empty")),
        Err(_) => Err(format!("environment variable {var} is not set")),
    }
}

/// Reads a secret file. A file group or others can read is refused with `strict_permissions`,
/// and logged as a warning otherwise.
pub fn from_file(path: &Path, strict_permissions: bool) -> Result<SecretString, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                if strict_permissions {
                    return Err(format!(
                        "{} can be read by group or others (mode {mode:o}); chmod 600 it (strict_permissions = true)",
                        path.display()
                    ));
                }
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{mode:o}"),
                    "a secret file can be read by group or others; chmod 600 it (strict_permissions = true refuses this)"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = strict_permissions;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // A trailing newline is an artefact of `echo secret > file`, never part of a secret.
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// Where the credentials for a token endpoint come from: a client id with its secret, or an
/// opaque partner-issued Basic value; each secret from an environment variable or a file.
#[derive(Debug, Default)]
pub struct CredentialSources {
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub basic_env: Option<String>,
    pub basic_file: Option<PathBuf>,
}

/// The sources, in the order of [`CredentialSources`]' fields (for naming them in messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ClientId,
    ClientSecretEnv,
    ClientSecretFile,
    BasicEnv,
    BasicFile,
}

/// Why credentials could not be loaded.
#[derive(Debug)]
pub struct CredentialError {
    /// The source the message is about (`None`: the credentials as a whole).
    pub key: Option<Source>,
    /// The source whose line shows the problem (`None`: none does, e.g. one is missing).
    pub line_of: Option<Source>,
    pub message: String,
}

impl CredentialSources {
    /// Loads the credentials: exactly one secret source, a client id with a client secret and
    /// only then. `name` says what the caller calls each source (a key, a flag) in messages.
    pub fn load(
        &self,
        name: impl Fn(Source) -> &'static str,
        strict_permissions: bool,
    ) -> Result<Credentials, CredentialError> {
        use Source::*;
        let fail = |key, line_of, message| {
            Err(CredentialError {
                key,
                line_of,
                message,
            })
        };
        let set: Vec<Source> = [
            (ClientSecretEnv, self.client_secret_env.is_some()),
            (ClientSecretFile, self.client_secret_file.is_some()),
            (BasicEnv, self.basic_env.is_some()),
            (BasicFile, self.basic_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(s, on)| on.then_some(s))
        .collect();
        let all = [ClientSecretEnv, ClientSecretFile, BasicEnv, BasicFile]
            .map(&name)
            .join(", ");
        match set.as_slice() {
            [] => return fail(None, None, format!("no credentials: set one of {all}")),
            [_] => {}
            [_, second, ..] => return fail(None, Some(*second), format!("set only one of {all}")),
        }
        let source = set[0];
        let basic = matches!(source, BasicEnv | BasicFile);
        // What goes together is checked before any secret is read.
        match (basic, &self.client_id) {
            (true, Some(_)) => {
                return fail(
                    Some(ClientId),
                    Some(ClientId),
                    format!(
                        "{} is not used with {}: the partner-issued value is sent as is",
                        name(ClientId),
                        name(source)
                    ),
                )
            }
            (false, None) => {
                return fail(
                    Some(ClientId),
                    None,
                    format!(
                        "{} is required with {} / {}",
                        name(ClientId),
                        name(ClientSecretEnv),
                        name(ClientSecretFile)
                    ),
                )
            }
            (false, Some(id)) if id.is_empty() => {
                return fail(Some(ClientId), Some(ClientId), "must not be empty".into())
            }
            _ => {}
        }
        let secret = match source {
            ClientSecretEnv | BasicEnv => from_env(
                self.client_secret_env
                    .as_deref()
                    .or(self.basic_env.as_deref())
                    .expect("set"),
            ),
            _ => from_file(
                self.client_secret_file
                    .as_deref()
                    .or(self.basic_file.as_deref())
                    .expect("set"),
                strict_permissions,
            ),
        }
        .map_err(|message| CredentialError {
            key: Some(source),
            line_of: Some(source),
            message,
        })?;
        Ok(match &self.client_id {
            Some(id) => Credentials::ClientSecret {
                client_id: id.clone(),
                secret,
            },
            None => Credentials::Basic(secret),
        })
    }
}

impl Ctx<'_> {
    pub(super) fn secret_env(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<SecretString, ConfigError> {
        from_env(v.get_ref()).map_err(|e| self.invalid(v.span(), key, &e))
    }

    pub(super) fn secret_file(
        &self,
        v: &Spanned<PathBuf>,
        key: &str,
    ) -> Result<SecretString, ConfigError> {
        from_file(&self.relative(v.get_ref()), self.strict_permissions)
            .map_err(|e| self.invalid(v.span(), key, &e))
    }

    /// `[destination.auth]`'s credentials; an error names the key at fault, at its line.
    pub(super) fn credentials(&self, key: &str, a: &RawAuth) -> Result<Credentials, ConfigError> {
        let sources = CredentialSources {
            client_id: a.client_id.as_ref().map(|v| v.get_ref().clone()),
            client_secret_env: a.client_secret_env.as_ref().map(|v| v.get_ref().clone()),
            client_secret_file: a
                .client_secret_file
                .as_ref()
                .map(|v| self.relative(v.get_ref())),
            basic_env: a
                .basic_credentials_env
                .as_ref()
                .map(|v| v.get_ref().clone()),
            basic_file: a
                .basic_credentials_file
                .as_ref()
                .map(|v| self.relative(v.get_ref())),
        };
        let name = |s: Source| match s {
            Source::ClientId => "client_id",
            Source::ClientSecretEnv => "client_secret_env",
            Source::ClientSecretFile => "client_secret_file",
            Source::BasicEnv => "basic_credentials_env",
            Source::BasicFile => "basic_credentials_file",
        };
        let span = |s: Source| match s {
            Source::ClientId => a.client_id.as_ref().map(|v| v.span()),
            Source::ClientSecretEnv => a.client_secret_env.as_ref().map(|v| v.span()),
            Source::ClientSecretFile => a.client_secret_file.as_ref().map(|v| v.span()),
            Source::BasicEnv => a.basic_credentials_env.as_ref().map(|v| v.span()),
            Source::BasicFile => a.basic_credentials_file.as_ref().map(|v| v.span()),
        };
        sources.load(name, self.strict_permissions).map_err(|e| {
            let auth_key = format!("{key}.auth");
            let key = match e.key {
                Some(s) => format!("{auth_key}.{}", name(s)),
                None => auth_key,
            };
            let span = e
                .line_of
                .and_then(span)
                .unwrap_or_else(|| a.token_url.span());
            self.invalid(span, &key, &e.message)
        })
    }
}
