//! The one place client errors become Python exceptions.
//!
//! Every native exception derives from `NativeError`; the `agent_assembly` package turns them
//! into its public exceptions, so these names stay private to the package.

use aa_sdk_client::ClientError;
use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};

create_exception!(
    _native,
    NativeError,
    PyException,
    "Any failure of the native client."
);
create_exception!(
    _native,
    RuntimeUnavailable,
    NativeError,
    "The runtime could not be reached, did not answer in time, or closed the connection."
);
create_exception!(
    _native,
    RuntimeRefused,
    NativeError,
    "The runtime refused the call (for example an expired credential)."
);
create_exception!(
    _native,
    IdentityError,
    NativeError,
    "The agent's key could not be loaded or created."
);
create_exception!(_native, ClientClosed, NativeError, "The client was closed.");

/// The exception for a client error.
pub(crate) fn to_py(error: ClientError) -> PyErr {
    let message = error.to_string();
    match error {
        ClientError::Connect { .. } | ClientError::Timeout(_) | ClientError::Disconnected => {
            RuntimeUnavailable::new_err(message)
        }
        ClientError::Refused { .. } => RuntimeRefused::new_err(message),
        ClientError::InvalidArgument { .. } => PyValueError::new_err(message),
        ClientError::Identity(_) => IdentityError::new_err(message),
        ClientError::Closed => closed(),
        ClientError::Protocol(_)
        | ClientError::Internal(_)
        | ClientError::Interrupted
        | ClientError::Forked { .. } => NativeError::new_err(message),
    }
}

/// A value from Python that is not what the call takes; `what` names the argument.
pub(crate) fn invalid(what: &str, problem: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{what}: {problem}"))
}

pub(crate) fn closed() -> PyErr {
    ClientClosed::new_err("the client is closed")
}
