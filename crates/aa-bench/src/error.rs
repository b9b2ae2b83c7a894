//! The load generator's error type.

use std::path::PathBuf;

/// What went wrong while setting up or running a load.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A child `aasm` process could not be started or did not come up.
    #[error("starting {what}: {detail}")]
    Start {
        /// Which service.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Reading or writing a file or socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The SDK client failed where the load cannot go on (registration, set-up).
    #[error("client: {0}")]
    Client(#[from] aa_sdk_client::ClientError),
    /// The runtime never allowed the benchmark's action: the bundle did not arrive, or the
    /// policy denies it.
    #[error("the runtime did not allow the benchmark action within {seconds} s: {reason}")]
    NotReady {
        /// How long it was given.
        seconds: u64,
        /// The last answer's reason.
        reason: String,
    },
    /// The gateway did not store every event in time.
    #[error("the gateway stored {stored} of {expected} events within {seconds} s")]
    Undelivered {
        /// Stored so far.
        stored: u64,
        /// Sent.
        expected: u64,
        /// How long it was given.
        seconds: u64,
    },
    /// The `aasm` binary is not where it was looked for.
    #[error(
        "no aasm binary at {0} (build it with `cargo build --release -p aa-cli`, or pass --aasm)"
    )]
    NoBinary(PathBuf),
    /// A parameter is out of range.
    #[error("invalid load: {0}")]
    Invalid(String),
}

impl BenchError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let context = context.into();
        move |source| BenchError::Io { context, source }
    }
}
