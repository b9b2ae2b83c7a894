//! The gateway: the source of truth for agents, their credentials, policy bundles and the
//! audit log.
//!
//! - [`gateway`]: [`Gateway`], the logic — registration with a challenge, credential tokens
//!   and their renewal, bundle publication, audit appends with a backstop scan, checkpoints.
//!   `challenges` holds the challenges open, the oldest forgotten past 10,000.
//! - [`approvals`]: pending decisions as durable approvals — created by runtimes, decided by
//!   operators, bound to the action's digest, released once; each step audited.
//! - [`registry`]: agents as operators see them, the topology (lineage and reported edges),
//!   and suspensions — the kill switch runtimes follow.
//! - [`rates`]: team-wide call-rate limits, counted across every runtime.
//! - [`budgets`]: LLM calls reserve their estimated cost against the agent's, its ancestors'
//!   and its team's budgets, and their reported usage settles it at the price table's cost.
//! - [`bundle`]: policy bundles named by a content hash.
//! - [`grpc`]: the gRPC services runtimes call; [`http`]: the operator API; [`server`]:
//!   [`run`], serving both on listeners the caller bound.
//! - [`audit`]: the hash chain of each runtime stream, signed checkpoints of the stream heads,
//!   and [`audit::verify`], which names the first tampered record.
//! - [`store`]: the [`Store`] trait the gateway keeps its state behind.
//! - [`sqlite`]: [`SqliteStore`], the embedded default (WAL, migrations, an append-only audit
//!   table).
//! - [`error`]: the crate's error type, [`GatewayError`].
//!
//! The audit log is append-only: nothing here updates or deletes a record. Nothing an agent
//! supplied is stored before the backstop scan has redacted it.

pub mod approvals;
pub mod audit;
pub mod budgets;
pub mod bundle;
mod challenges;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod rates;
pub mod registry;
pub mod server;
pub mod sqlite;
pub mod store;

pub use aa_background::BackgroundPriority;
pub use approvals::{GATEWAY_STREAM, NewApproval};
pub use budgets::{
    BudgetReport, Exceeded, ModelSpendView, Reservation, ReserveRequest, WindowSpend,
};
pub use bundle::{Bundle, PolicyDocument};
pub use error::GatewayError;
pub use gateway::{ChallengeAnswer, Credential, Gateway, GatewayConfig, Registered};
pub use rates::{TeamLimit, TeamRate};
pub use registry::{AgentView, SuspensionChange, Topology};
pub use server::run;
pub use sqlite::SqliteStore;
pub use store::{
    AgentRecord, Appended, CapCheck, ModelSpend, NewEvent, NewReservation, ReserveOutcome,
    RevokedToken, Settled, Store, Usage,
};
