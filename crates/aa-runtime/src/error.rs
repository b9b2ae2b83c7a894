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
    /// SQLite failed: `fault` says how in words for a client, `detail` is SQLite's own
    /// message, for the runtime's log.
    #[error("outbox: {detail}")]
    Storage {
        /// How, in a few words.
        fault: &'static str,
        /// SQLite's message.
        detail: String,
    },
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

impl RuntimeError {
    /// What a client may be told of this: no path, no SQL, no library's words.
    pub fn fault(&self) -> &'static str {
        match self {
            RuntimeError::Storage { fault, .. } => fault,
            _ => "the outbox failed",
        }
    }
}

impl From<rusqlite::Error> for RuntimeError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let fault = match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => "the disk is full",
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                "the database is locked by another process"
            }
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
                "the database cannot be written here"
            }
            Some(ErrorCode::SystemIoFailure) => "the disk failed",
            _ => "the outbox failed",
        };
        RuntimeError::Storage {
            fault,
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client is told how the database failed, the log what SQLite said.
    #[test]
    fn sqlite_failures_tell_a_client_how_and_the_log_what() {
        let failure = |code, message: &str| {
            RuntimeError::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                Some(message.to_owned()),
            ))
        };
        let full = failure(rusqlite::ffi::SQLITE_FULL, "database or disk is full");
        assert_eq!(full.fault(), "the disk is full");
        assert_eq!(full.to_string(), "outbox: database or disk is full");
        let locked = failure(rusqlite::ffi::SQLITE_BUSY, "database is locked");
        assert_eq!(locked.fault(), "the database is locked by another process");
        let other = failure(rusqlite::ffi::SQLITE_CORRUPT, "file is not a database");
        assert_eq!(other.fault(), "the outbox failed");
        assert_eq!(
            RuntimeError::from(rusqlite::Error::InvalidQuery).fault(),
            "the outbox failed"
        );
    }
}
