//! The crate's error type.

/// What went wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An event out of sequence for its stream.
    #[error("stream {stream:?}: expected sequence {expected}, got {got}")]
    Sequence {
        /// The stream.
        stream: String,
        /// The sequence the stream's head calls for.
        expected: u64,
        /// What the event carried.
        got: u64,
    },
    /// The database failed or holds something unreadable.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for GatewayError {
    fn from(e: rusqlite::Error) -> Self {
        GatewayError::Storage(e.to_string())
    }
}
