//! The `irisd` subcommands that do more than call one library function. Each takes typed
//! options (`main.rs` parses the command line), prints for a person or a pipe, and says how it
//! ended as an exit code; an error that stops a command is a [`CommandError`], which `main.rs`
//! prints and maps to exit code 2.

pub mod batch;
pub mod dlq;
pub mod mock_partner;
pub mod run;
pub mod status;
pub mod verify;

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Start(#[from] crate::daemon::StartError),
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    /// Options that do not go together, or a value the command cannot use.
    #[error("{0}")]
    Usage(String),
    /// A file, a socket or a signal handler failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CommandError {
        let what = what.into();
        move |source| CommandError::Io { what, source }
    }
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a person.
    Text,
    /// One JSON object per line (or one document), for a pipe.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("{other:?}: expected text or json")),
        }
    }
}
