//! The crate's error type.

/// What went wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An event out of sequence for its stream.
    #[error("stream {stream:?}: expected sequence {expected}, got {got}")]
    Sequence {
        /// The stream.
        stream: String,
        /// The sequence after the stream's head as stored (not as a refused batch moved it).
        expected: u64,
        /// What the event carried.
        got: u64,
    },
    /// One event of an append that no resend can make acceptable: it does not decode or does
    /// not pass the gateway's checks. Its place in its stream names it, so that its runtime
    /// can set it aside.
    #[error("event at sequence {sequence} refused: {reason}")]
    EventRefused {
        /// Its stream.
        stream: String,
        /// Its sequence in the stream.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// A request with a missing or malformed field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A caller that could not prove who it is: bad challenge answer, or a missing, foreign,
    /// expired or superseded token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// No such thing (an approval id nobody created).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request does not fit the current state: an approval already decided, used, or
    /// asked for another action.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A policy document that does not validate.
    #[error("invalid policy: {0}")]
    Policy(String),
    /// The gateway cannot take the request now (too many pending registrations).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The database failed or holds something unreadable.
    #[error("storage: {0}")]
    Storage(String),
    /// Setting up the gateway failed (keys, listeners).
    #[error("setup: {0}")]
    Setup(String),
}

impl From<rusqlite::Error> for GatewayError {
    fn from(e: rusqlite::Error) -> Self {
        GatewayError::Storage(e.to_string())
    }
}
