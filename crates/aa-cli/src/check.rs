//! `aasm check`: register as an agent through the runtime socket and print one decision.

use std::path::PathBuf;
use std::process::ExitCode;

use aa_core::{Action, Mode};
use aa_runtime::config::SOCKET_FILE;
use aa_sdk_client::{AgentSpec, Client, ClientConfig, resolve_socket_or};
use anyhow::{Context as _, Result};
use clap::Args;

use crate::serve::DEFAULT_STATE_DIR;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The runtime socket (else AASM_SOCKET, else runtime.sock in the state directory, as
    /// `aasm up --state-dir` puts it).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The agent to act as; registered (its key kept in the state directory) if needed.
    #[arg(long)]
    agent: String,
    /// The agent's team.
    #[arg(long)]
    team: Option<String>,
    /// The action as JSON, e.g. '{"type":"tool_call","tool":"shell","args":{"command":"ls"}}'.
    #[arg(long)]
    action: String,
    /// Where agent keys are kept, and the runtime socket unless named.
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
}

pub(crate) fn run(args: CheckArgs) -> Result<ExitCode> {
    let action = Action::from_json(&args.action).context("--action")?;
    let socket = resolve_socket_or(args.socket.as_deref(), &args.state_dir.join(SOCKET_FILE));
    let client = Client::new(ClientConfig {
        socket_path: Some(socket),
        state_dir: args.state_dir,
        mode: Mode::Enforce,
        ..ClientConfig::default()
    })?;
    let socket = client.socket_path().display().to_string();
    let agent = client
        .register(AgentSpec {
            agent_id: args.agent,
            team_id: args.team,
            framework: Some("aasm-check".into()),
            ..AgentSpec::default()
        })
        .wait()
        .with_context(|| format!("registering through {socket}"))?;
    let outcome = client.check_blocking(&agent, action, None)?;
    out!("{}", serde_json::to_string(&outcome.verdict)?);
    Ok(ExitCode::SUCCESS)
}
