//! The error type of `aa-proto`.

/// A wire message that cannot become a domain value, or a frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field holds a value the domain does not allow.
    #[error("invalid {field}: {message}")]
    InvalidField {
        /// Which field, e.g. `action.tool_call.args_json`.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A frame announced more bytes than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame's bytes are not a valid `Frame` message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
}
