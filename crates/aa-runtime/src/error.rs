//! The crate's error type.

/// What went wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A configuration value that cannot work, named.
    #[error("invalid configuration: {field}: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The local state database failed.
    #[error("outbox: {0}")]
    Outbox(String),
    /// An event the outbox holds but cannot read back to send (a row stored as something else
    /// than an event): named by its sequence, so that the forwarder can set it aside.
    #[error("outbox: event {sequence}: {reason}")]
    UnreadableEvent {
        /// Its sequence.
        sequence: u64,
        /// What the row holds instead.
        reason: String,
    },
    /// The socket could not be set up.
    #[error("socket {path}: {message}")]
    Socket {
        /// The socket path.
        path: String,
        /// What failed.
        message: String,
    },
    /// A policy bundle that does not compile.
    #[error("policy bundle {version}: {message}")]
    Bundle {
        /// The bundle's version.
        version: String,
        /// Why it was refused.
        message: String,
    },
    /// Setting up a component failed.
    #[error("setup: {0}")]
    Setup(String),
}

impl From<rusqlite::Error> for RuntimeError {
    fn from(e: rusqlite::Error) -> Self {
        RuntimeError::Outbox(e.to_string())
    }
}
