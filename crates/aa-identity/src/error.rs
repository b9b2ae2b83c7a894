//! The crate's error type.

/// Why a key, identifier, signature or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Key bytes of the wrong length or not a valid Ed25519 point.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A `did:key` that is not an Ed25519 key in multibase base58btc.
    #[error("invalid did:key {did:?}: {reason}")]
    InvalidDid {
        /// The identifier as given (public by nature).
        did: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A token that cannot be parsed.
    #[error("malformed token: {0}")]
    MalformedToken(&'static str),
    /// A token signed by another key (another gateway).
    #[error("token not issued by this gateway")]
    ForeignToken,
    /// A token past its expiry.
    #[error("token expired")]
    ExpiredToken,
    /// A spawn grant signed for longer than [`MAX_GRANT_SECS`](crate::token::MAX_GRANT_SECS),
    /// for none, or dated ahead of the clock.
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// A key file that cannot be read, written or trusted.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The OS could not supply random bytes.
    #[error("no randomness: {0}")]
    Random(String),
}
