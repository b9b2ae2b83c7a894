//! The runtime: the trusted sidecar every agent's SDK talks to over a Unix socket.
//!
//! - [`server`]: [`bind`] (owner-only socket) and [`run`] — peer uid checks, frames with
//!   request ids, concurrent calls per connection, a clean drain on shutdown.
//! - [`runtime`]: [`Runtime`], the logic — sessions bound to a token and a uid, the
//!   suspensions in force, local decisions from the bundle (bounded by the agent's ancestors)
//!   with modes and rate limits, lifecycle calls forwarded to the gateway, and SDK reports
//!   turned into trusted events.
//! - [`outbox`]: the local SQLite database (WAL): numbered, redacted events waiting for the
//!   gateway, sessions, the last bundle and suspensions.
//! - `approvals`: pending decisions — the approval created at the gateway in the background,
//!   and the wait that ends when a human decides, the approval expires or the SDK's timeout
//!   passes. `memory`: the byte budgets of what agents sent that is held for a while.
//! - `pipeline`: the writer that redacts and group-commits events; `link`: the gateway
//!   link, the bundle and suspension watches and the forwarder; both run on an
//!   `aa_background::Background`, below the socket's threads; [`bundle`], [`limits`],
//!   [`config`], [`error`].
//!
//! The runtime trusts nothing the SDK says about itself: an event's agent, origin, decision
//! and redactions are the runtime's own, and every string is scanned before it is written.
//! Under `enforce` every failure is a deny.

mod approvals;
pub mod bundle;
pub mod config;
pub mod error;
pub mod limits;
mod link;
mod memory;
pub mod outbox;
mod pipeline;
pub mod runtime;
pub mod server;

pub use aa_background::BackgroundPriority;
pub use config::RuntimeConfig;
pub use error::RuntimeError;
pub use link::GatewayLink;
pub use runtime::{Peer, Runtime};
pub use server::{bind, run};
