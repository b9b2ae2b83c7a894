//! The gateway: the source of truth for agents, their credentials, policy bundles and the
//! audit log.
//!
//! - [`audit`]: the hash chain of each runtime stream, signed checkpoints of the stream heads,
//!   and [`audit::verify`], which names the first tampered record.
//! - [`store`]: the [`Store`] trait the gateway keeps its state behind.
//! - [`sqlite`]: [`SqliteStore`], the embedded default (WAL, migrations, an append-only audit
//!   table).
//! - [`error`]: the crate's error type, [`GatewayError`].
//!
//! The audit log is append-only: nothing here updates or deletes a record.

pub mod audit;
pub mod error;
pub mod sqlite;
pub mod store;

pub use error::GatewayError;
pub use sqlite::SqliteStore;
pub use store::{AgentRecord, Appended, NewEvent, Store};
