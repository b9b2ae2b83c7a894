//! The error type of `aa-core`.

/// What went wrong turning outside input into domain types.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The input was not valid JSON for the named shape.
    #[error("invalid {what}: {message}")]
    InvalidJson {
        /// Which shape was expected, e.g. `action`.
        what: &'static str,
        /// serde's description, including line and column.
        message: String,
    },
    /// A field held a value the domain does not allow.
    #[error("invalid {field}: {message}")]
    InvalidField {
        /// The field's name, e.g. `agent.id`.
        field: &'static str,
        /// Why the value is not allowed.
        message: String,
    },
}

impl CoreError {
    pub(crate) fn json(what: &'static str, err: &serde_json::Error) -> Self {
        CoreError::InvalidJson {
            what,
            message: err.to_string(),
        }
    }
}
