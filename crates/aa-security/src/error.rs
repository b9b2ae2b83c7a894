//! The error type of `aa-security`.

/// What can go wrong building a scanner, or putting a redacted event back together. Scanning
/// itself never fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// A custom pattern does not compile or has a bad name.
    #[error("invalid pattern \"{name}\": {message}")]
    InvalidPattern {
        /// The pattern's name.
        name: String,
        /// Why.
        message: String,
    },
    /// A redacted audit event no longer has the shape of one (a redaction hit structure).
    #[error("redacted event is unreadable: {0}")]
    Event(String),
    /// A built-in rule failed to compile: a bug, reported rather than panicking.
    #[error("internal error: {0}")]
    Internal(String),
}
