//! The crate's error type.

use aa_proto::pb::ErrorCode;

/// What went wrong talking to the runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the runtime at {path}: {reason}")]
    Connect {
        /// The socket path tried.
        path: String,
        /// Why.
        reason: String,
    },
    /// The runtime did not answer in time.
    #[error("the runtime did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection closed before the answer came.
    #[error("the connection to the runtime closed")]
    Disconnected,
    /// The runtime refused the call.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The wire code, e.g. `ERROR_CODE_UNAUTHENTICATED`.
        code: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// A value given to the client is wrong.
    #[error("invalid argument {field}: {message}")]
    InvalidArgument {
        /// Which.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The agent key could not be loaded or created.
    #[error("agent identity: {0}")]
    Identity(String),
    /// The caller gave up waiting (its interrupt check said so); the call may still be
    /// carried out.
    #[error("the wait for the runtime was interrupted")]
    Interrupted,
    /// The client was closed (or its last clone dropped) before the call was answered, or
    /// the call was made after.
    #[error("the client is closed")]
    Closed,
    /// The client was made in another process, which then forked this one: the threads it
    /// runs on did not come along, and its connections are that process's, whose answers this
    /// one could read as its own. A forked process makes a client of its own.
    #[error(
        "this client was made in process {made_in} and cannot be used in process {used_in}, \
         a fork of it: make a new client there"
    )]
    Forked {
        /// The process that made the client.
        made_in: u32,
        /// The process it was used in.
        used_in: u32,
    },
    /// The runtime answered with something that is not the expected answer.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client itself failed (its background runtime, or a blocking call made from inside
    /// an async runtime).
    #[error("client: {0}")]
    Internal(String),
}

impl ClientError {
    pub(crate) fn refused(code: i32, message: String) -> ClientError {
        ClientError::Refused {
            code: ErrorCode::try_from(code).map_or("ERROR_CODE_UNSPECIFIED", |c| c.as_str_name()),
            message,
        }
    }

    /// Whether the runtime refused for want of a valid credential (register again).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, ClientError::Refused { code, .. } if *code == ErrorCode::Unauthenticated.as_str_name())
    }
}
