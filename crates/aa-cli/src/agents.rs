//! `aasm agents list | show | suspend | resume` and `aasm topology tree`: the registry, the
//! agent graph and the kill switch, through the gateway's operator API with the admin token.
//! A suspension goes through the gateway because the gateway is what tells every runtime.
//! `aasm agents grant` signs a parent's consent to a child on another host, offline.

use std::collections::HashMap;
use std::process::ExitCode;

use aa_gateway::{AgentView, SuspensionChange, Topology};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::api::{ApiArgs, segment};
use crate::approvals::operator;

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// Every registered agent with its lineage and whether it is suspended.
    List {
        #[command(flatten)]
        gateway: ApiArgs,
        /// Only the agents of this team.
        #[arg(long)]
        team: Option<String>,
        /// One JSON document (an array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One agent in full, with its lineage up to the root.
    Show {
        #[command(flatten)]
        gateway: ApiArgs,
        /// The agent id.
        id: String,
        /// One JSON document (`{"agent": …, "lineage": […]}`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop an agent: every check it makes is denied, on every runtime, until it is resumed.
    Suspend(Change),
    /// Lift a suspension.
    Resume(Change),
    /// Print a grant for a child of PARENT started on another host: signed with PARENT's key
    /// from the state directory (where it registered), for the child to pass in
    /// AASM_SPAWN_GRANT. Anyone holding it can register that child until it expires.
    Grant(GrantArgs),
}

/// `aasm agents grant`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// The parent agent's id.
    #[arg(long)]
    parent: String,
    /// The child agent's id.
    #[arg(long)]
    child: String,
    /// Seconds the grant holds, 1 to 86400 (a day).
    #[arg(long, default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=aa_identity::MAX_GRANT_SECS))]
    ttl_secs: u64,
    /// Where the parent's key is kept (its SDK's state directory).
    #[arg(long, default_value = aa_sdk_client::DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: std::path::PathBuf,
}

/// What a suspend or resume names.
#[derive(Debug, Args)]
pub(crate) struct Change {
    #[command(flatten)]
    gateway: ApiArgs,
    /// The agent id.
    id: String,
    /// Everything below the agent too (for a suspend, also agents it spawns later).
    #[arg(long)]
    subtree: bool,
    #[command(flatten)]
    note: Note,
}

#[derive(Debug, Args)]
pub(crate) struct Note {
    /// Why (a suspension's reason is told to the agent with every denied check).
    #[arg(long)]
    reason: Option<String>,
    /// Who acts, as recorded (default: $USER).
    #[arg(long = "by")]
    by: Option<String>,
    /// Print what changed as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// The delegation tree under ROOT (every tree without one), with the edges agents reported.
    Tree {
        #[command(flatten)]
        gateway: ApiArgs,
        /// The agent at the top.
        root: Option<String>,
        /// One JSON document (`{"agents": […], "edges": […]}`) instead of a tree.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn agents(command: AgentsCommand) -> Result<ExitCode> {
    crate::block_on(async {
        match command {
            AgentsCommand::Grant(args) => {
                let grant = aa_sdk_client::grant_spawn(
                    &args.state_dir,
                    &args.parent,
                    &args.child,
                    std::time::Duration::from_secs(args.ttl_secs),
                )?;
                out!("{grant}");
            }
            AgentsCommand::List {
                gateway,
                team,
                json,
            } => {
                let path = match &team {
                    Some(team) => format!("/api/v1/agents?team={}", segment(team)),
                    None => "/api/v1/agents".to_owned(),
                };
                let agents: Vec<AgentView> = gateway.api()?.get(&path).await?;
                if json {
                    out!("{}", serde_json::to_string_pretty(&agents)?);
                } else {
                    print_table(&agents)?;
                }
            }
            AgentsCommand::Show { gateway, id, json } => {
                let api = gateway.api()?;
                let lineage: Vec<AgentView> = api
                    .get(&format!("/api/v1/agents/{}/lineage", segment(&id)))
                    .await?;
                if json {
                    let agent = lineage.last();
                    let doc = json!({ "agent": agent, "lineage": lineage });
                    out!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    print_details(&lineage)?;
                }
            }
            AgentsCommand::Suspend(c) => change("suspend", &c).await?,
            AgentsCommand::Resume(c) => change("resume", &c).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn change(verb: &str, c: &Change) -> Result<()> {
    let (id, note) = (&c.id, &c.note);
    let changed: SuspensionChange = c
        .gateway
        .api()?
        .post(
            &format!("/api/v1/agents/{}/{verb}", segment(id)),
            &json!({ "subtree": c.subtree, "by": operator(note.by.as_deref()), "reason": note.reason }),
        )
        .await?;
    if note.json {
        out!("{}", serde_json::to_string_pretty(&changed)?);
    } else {
        let others = changed.agent_ids.len().saturating_sub(1);
        let also = match others {
            0 => String::new(),
            1 => " and 1 agent below it".to_owned(),
            n => format!(" and {n} agents below it"),
        };
        say!(
            "{} {id}{also}: {}",
            changed.step,
            changed.agent_ids.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn topology(command: TopologyCommand) -> Result<ExitCode> {
    let TopologyCommand::Tree {
        gateway,
        root,
        json,
    } = command;
    crate::block_on(async {
        let path = match &root {
            Some(root) => format!("/api/v1/topology?root={}", segment(root)),
            None => "/api/v1/topology".to_owned(),
        };
        let topology: Topology = gateway.api()?.get(&path).await?;
        if json {
            out!("{}", serde_json::to_string_pretty(&topology)?);
        } else {
            for line in tree(&topology).lines() {
                say!("{line}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// What marks an agent in a listing: `suspended`, `suspended via X` (X's subtree),
/// `deregistered` or `active`.
fn state(view: &AgentView) -> String {
    match &view.suspension {
        Some(s) if s.agent_id == view.agent.agent_id => "suspended".to_owned(),
        Some(s) => format!("suspended via {}", s.agent_id),
        None if view.agent.token_id.is_empty() => "deregistered".to_owned(),
        None => "active".to_owned(),
    }
}

fn print_table(agents: &[AgentView]) -> Result<()> {
    if agents.is_empty() {
        say!("no agents");
        return Ok(());
    }
    say!(
        "{:<24}  {:<14}  {:<24}  {:>5}  STATE",
        "ID",
        "TEAM",
        "PARENT",
        "DEPTH"
    );
    for view in agents {
        let a = &view.agent;
        say!(
            "{:<24}  {:<14}  {:<24}  {:>5}  {}",
            a.agent_id,
            a.team_id.as_deref().unwrap_or("-"),
            a.parent_agent_id.as_deref().unwrap_or("-"),
            a.depth,
            state(view)
        );
    }
    Ok(())
}

fn print_details(lineage: &[AgentView]) -> Result<()> {
    let Some(view) = lineage.last() else {
        return Ok(());
    };
    let a = &view.agent;
    say!("agent      {}", a.agent_id);
    say!("name       {}", a.name);
    say!("framework  {}", a.framework);
    say!("key        {}", a.did);
    say!("team       {}", a.team_id.as_deref().unwrap_or("-"));
    say!("depth      {}", a.depth);
    let chain: Vec<&str> = lineage.iter().map(|v| v.agent.agent_id.as_str()).collect();
    say!("lineage    {}", chain.join(" > "));
    if let Some(reason) = &a.delegation_reason {
        say!("delegated  {reason}");
    }
    say!("state      {}", state(view));
    if let Some(s) = &view.suspension {
        let why = if s.reason.is_empty() { "-" } else { &s.reason };
        say!(
            "           by {} at {}: {why}",
            s.suspended_by,
            crate::approvals::time(s.suspended_at_ms)
        );
    }
    say!("registered {}", crate::approvals::time(a.registered_at_ms));
    say!("last seen  {}", crate::approvals::time(a.last_seen_ms));
    Ok(())
}

/// The topology as an indented tree: children under their parent, then each agent's reported
/// edges (other than the spawns the tree already shows).
fn tree(topology: &Topology) -> String {
    let mut children: HashMap<&str, Vec<&AgentView>> = HashMap::new();
    let present: std::collections::HashSet<&str> = topology
        .agents
        .iter()
        .map(|v| v.agent.agent_id.as_str())
        .collect();
    let mut roots = Vec::new();
    for view in &topology.agents {
        match view.agent.parent_agent_id.as_deref() {
            Some(parent) if present.contains(parent) => {
                children.entry(parent).or_default().push(view);
            }
            _ => roots.push(view),
        }
    }
    let mut out = String::new();
    if roots.is_empty() {
        out.push_str("no agents\n");
    }
    for root in roots {
        write_node(&mut out, topology, &children, root, "", "");
    }
    out
}

fn write_node(
    out: &mut String,
    topology: &Topology,
    children: &HashMap<&str, Vec<&AgentView>>,
    view: &AgentView,
    lead: &str,
    indent: &str,
) {
    let a = &view.agent;
    let team = a
        .team_id
        .as_deref()
        .map(|t| format!(" [team {t}]"))
        .unwrap_or_default();
    let marker = match state(view).as_str() {
        "active" => String::new(),
        other => format!(" [{other}]"),
    };
    out.push_str(&format!("{lead}{}{team}{marker}\n", a.agent_id));
    let edges: Vec<_> = topology
        .edges
        .iter()
        .filter(|e| {
            e.from_agent_id == a.agent_id
                && !(e.kind == aa_core::EdgeKind::Spawned
                    && children
                        .get(a.agent_id.as_str())
                        .is_some_and(|c| c.iter().any(|v| v.agent.agent_id == e.to_agent_id)))
        })
        .collect();
    let kids = children
        .get(a.agent_id.as_str())
        .cloned()
        .unwrap_or_default();
    let total = edges.len() + kids.len();
    let mut at = 0;
    for edge in edges {
        at += 1;
        let (branch, _) = branches(at == total);
        let tool = edge
            .tool
            .as_deref()
            .map(|t| format!(" via {t}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{indent}{branch}{} -> {}{tool}\n",
            edge.kind.as_str(),
            edge.to_agent_id
        ));
    }
    for kid in kids {
        at += 1;
        let (branch, rest) = branches(at == total);
        write_node(
            out,
            topology,
            children,
            kid,
            &format!("{indent}{branch}"),
            &format!("{indent}{rest}"),
        );
    }
}

fn branches(last: bool) -> (&'static str, &'static str) {
    if last {
        ("└── ", "    ")
    } else {
        ("├── ", "│   ")
    }
}
