//! The load generator: drives real `aasm gateway` and `aasm runtime` processes through
//! `aa-sdk-client`, the way agents' SDKs do, and measures what they see.
//!
//! - [`stack`]: starts a gateway and a runtime as child processes on a temp state directory
//!   and reads the runtime's memory and the gateway's stored-event count.
//! - [`checks`]: N clients checking at a fixed total rate, each waiting for its answers as an
//!   agent does; latency percentiles, throughput, and how far sends slipped from schedule.
//! - [`floor`]: the check load's clients and schedule against a bare echo server: the
//!   latency the machine adds by itself, the baseline checks are read against.
//! - [`cpu`]: how busy the processors were during a load, and how much time the hypervisor
//!   stole.
//! - [`events`]: N clients reporting event batches as fast as the runtime acknowledges them;
//!   the rate at which they are on disk at the runtime and stored by the gateway.
//! - [`soak`]: checks and events together at fixed rates for minutes, read at every
//!   interval (latency, failures, the gateway's backlog, memory, descriptors), then drained
//!   and counted; what went wrong, if anything.
//! - `pace`: the schedule clients send on.
//! - [`partition`]: a relay between the runtime and the gateway that can cut the link.
//! - [`approvals`]: how soon a waiting call is released after an operator approves it.
//! - [`stats`]: percentiles of recorded latencies.
//! - [`error`]: the error type, [`BenchError`].
//!
//! It measures; it never asserts targets, and it never talks to the runtime by any path an
//! SDK would not use.

pub mod approvals;
pub mod checks;
pub mod cpu;
pub mod error;
pub mod events;
pub mod floor;
mod pace;
pub mod partition;
pub mod soak;
pub mod stack;
pub mod stats;

pub use error::BenchError;

use std::path::Path;
use std::time::Duration;

use aa_core::Mode;
use aa_sdk_client::{Agent, AgentSpec, Client, ClientConfig};

/// A client of its own (its own connection) with one agent registered on it, under `enforce`.
pub(crate) fn registered_client(
    socket: &Path,
    state_dir: &Path,
    agent_id: String,
    timeout: Duration,
) -> Result<(Client, Agent), BenchError> {
    let client = Client::new(ClientConfig {
        socket_path: Some(socket.to_path_buf()),
        state_dir: state_dir.to_path_buf(),
        mode: Mode::Enforce,
        timeout,
    })?;
    let agent = client
        .register(AgentSpec {
            agent_id,
            framework: Some("aa-bench".into()),
            ..AgentSpec::default()
        })
        .wait()?;
    Ok((client, agent))
}
