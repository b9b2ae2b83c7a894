//! The client every SDK wraps: it connects to the runtime's socket, registers agents (their
//! keys kept under a state directory), checks actions, reports events and keeps credentials
//! renewed.
//!
//! - [`client`]: [`Client`] and its calls; each returns a [`Call`] to `.await` from any
//!   executor or to [`Call::wait`] for from a plain thread — the IO runs on the client's own
//!   background runtime, so bindings need none.
//! - `connection`: one socket connection carrying concurrent calls by request id.
//! - [`error`]: the crate's error type, [`ClientError`].
//!
//! The client holds no policy logic and never asks anything but the runtime for a decision.
//! Under `enforce` every failure is a deny; under `observe` and `disabled`, an allow. It
//! must not be used from a fork of the process that made it: there it does no IO at all
//! ([`ClientError::Forked`]).

pub mod client;
mod connection;
pub mod error;

pub use client::{
    Agent, AgentSpec, Call, CheckOutcome, Client, ClientConfig, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
    Report, SOCKET_ENV, SPAWN_GRANT_ENV, STATE_DIR_ENV, grant_spawn, resolve_socket,
    resolve_socket_or, resolve_state_dir,
};
pub use error::ClientError;
