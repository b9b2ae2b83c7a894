//! The agent registry as operators see it: agents with the suspension that stops them, the
//! topology (lineage from registration plus the edges agents report), and the kill switch.
//!
//! A suspension stops one agent, or with `subtree` the agent and everything below it —
//! including agents spawned later. Runtimes enforce it: they follow the set on the
//! `WatchSuspensions` stream, which moves on every change. The gateway refuses what it decides
//! itself for a stopped agent: spawning a child, asking for or redeeming an approval.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use aa_core::{
    Action, AuditEvent, Decision, EventKind, Mode, RedactionReceipt, Suspension, Suspensions,
    TopologyEdge, Verdict, suspension_of,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::approvals::GATEWAY_STREAM;
use crate::error::GatewayError;
use crate::gateway::{Gateway, now_ms};
use crate::store::{AgentRecord, Store};

/// An agent as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentView {
    /// The registry's record.
    #[serde(flatten)]
    pub agent: AgentRecord,
    /// The suspension that stops it (its own, or an ancestor's covering its subtree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<Suspension>,
}

/// A part of the agent graph: agents (parents before children) and the edges among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Topology {
    /// The agents, each after its parent.
    pub agents: Vec<AgentView>,
    /// Every edge that starts at one of them: `spawned` from registration, and the
    /// `delegated`, `called`, `messaged` (and `spawned`) edges agents reported.
    pub edges: Vec<TopologyEdge>,
}

/// What a suspend or resume changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuspensionChange {
    /// `suspended` or `resumed`.
    pub step: String,
    /// The agents stopped (or released) by it, the named one first.
    pub agent_ids: Vec<String>,
}

/// The registry read at once, to walk.
struct Snapshot {
    agents: HashMap<String, AgentRecord>,
    children: HashMap<String, Vec<String>>,
    suspensions: Suspensions,
}

impl Snapshot {
    /// The ancestors' ids, the parent first. A cycle (which registration cannot make, but a
    /// damaged database could hold) ends the walk rather than looping.
    fn ancestors(&self, agent_id: &str) -> Vec<String> {
        let mut seen = HashSet::from([agent_id.to_owned()]);
        let mut chain = Vec::new();
        let mut next = self
            .agents
            .get(agent_id)
            .and_then(|a| a.parent_agent_id.clone());
        while let Some(id) = next.filter(|id| seen.insert(id.clone())) {
            next = self.agents.get(&id).and_then(|a| a.parent_agent_id.clone());
            chain.push(id);
        }
        chain
    }

    /// The agent and its descendants, each after its parent.
    fn subtree(&self, root: &str) -> Vec<String> {
        let mut seen = HashSet::from([root.to_owned()]);
        let mut order = vec![root.to_owned()];
        let mut at = 0;
        while let Some(id) = order.get(at).cloned() {
            at += 1;
            for child in self.children.get(&id).into_iter().flatten() {
                if seen.insert(child.clone()) {
                    order.push(child.clone());
                }
            }
        }
        order
    }

    /// The named agent, and the ids a suspend or resume of it reaches: itself, and with
    /// `subtree` everything below it.
    fn reach(
        &self,
        agent_id: &str,
        subtree: bool,
    ) -> Result<(&AgentRecord, Vec<String>), GatewayError> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| not_found(agent_id))?;
        let ids = if subtree {
            self.subtree(agent_id)
        } else {
            vec![agent_id.to_owned()]
        };
        Ok((agent, ids))
    }

    fn suspension(&self, agent_id: &str) -> Option<Suspension> {
        let ancestors = self.ancestors(agent_id);
        suspension_of(
            &self.suspensions,
            agent_id,
            ancestors.iter().map(String::as_str),
        )
        .cloned()
    }

    fn view(&self, agent_id: &str) -> Option<AgentView> {
        self.agents.get(agent_id).map(|agent| AgentView {
            agent: agent.clone(),
            suspension: self.suspension(agent_id),
        })
    }

    fn views(&self, ids: &[String]) -> Vec<AgentView> {
        ids.iter().filter_map(|id| self.view(id)).collect()
    }
}

fn not_found(agent_id: &str) -> GatewayError {
    GatewayError::NotFound(format!("no agent {agent_id:?}"))
}

impl<S: Store> Gateway<S> {
    async fn snapshot(&self) -> Result<Snapshot, GatewayError> {
        let mut agents = HashMap::new();
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for agent in self.store.agents().await? {
            if let Some(parent) = &agent.parent_agent_id {
                children
                    .entry(parent.clone())
                    .or_default()
                    .push(agent.agent_id.clone());
            }
            agents.insert(agent.agent_id.clone(), agent);
        }
        Ok(Snapshot {
            agents,
            children,
            suspensions: self.suspensions().await?,
        })
    }

    /// Every suspension in force.
    pub async fn suspensions(&self) -> Result<Suspensions, GatewayError> {
        Ok(self
            .store
            .suspensions()
            .await?
            .into_iter()
            .map(|s| (s.agent_id.clone(), s))
            .collect())
    }

    /// Follows suspension changes: the value moves on every change.
    pub fn suspension_changes(&self) -> watch::Receiver<u64> {
        self.suspension_epoch.subscribe()
    }

    /// The registry's chain above `agent`: the root first, the parent last.
    pub(crate) async fn ancestors(
        &self,
        agent: &AgentRecord,
    ) -> Result<Vec<AgentRecord>, GatewayError> {
        let mut seen = HashSet::from([agent.agent_id.clone()]);
        let mut chain = Vec::new();
        let mut next = agent.parent_agent_id.clone();
        while let Some(id) = next.filter(|id| seen.insert(id.clone())) {
            let Some(parent) = self.store.agent(&id).await? else {
                break;
            };
            next = parent.parent_agent_id.clone();
            chain.push(parent);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Refuses, naming the suspension, when `agent` is stopped.
    pub(crate) async fn ensure_running(&self, agent: &AgentRecord) -> Result<(), GatewayError> {
        let suspensions = self.suspensions().await?;
        if suspensions.is_empty() {
            return Ok(());
        }
        let ancestors = self.ancestors(agent).await?;
        let found = suspension_of(
            &suspensions,
            &agent.agent_id,
            ancestors.iter().rev().map(|a| a.agent_id.as_str()),
        );
        match found {
            Some(s) => Err(GatewayError::Conflict(s.reason_for(&agent.agent_id))),
            None => Ok(()),
        }
    }

    /// Stops `agent_id` (and with `subtree` everything below it): runtimes deny its checks
    /// from the moment they hear of it. Suspending again replaces the earlier suspension.
    pub async fn suspend(
        &self,
        agent_id: &str,
        subtree: bool,
        suspended_by: &str,
        reason: &str,
    ) -> Result<SuspensionChange, GatewayError> {
        let snapshot = self.snapshot().await?;
        let (agent, agent_ids) = snapshot.reach(agent_id, subtree)?;
        // Kept, shown to operators, streamed to runtimes and quoted to the agents it stops:
        // what reads as a secret in them is redacted first.
        let (suspended_by, mut receipts) = self.redacted_text(suspended_by, "detail.by");
        let (reason, reason_receipts) = self.redacted_text(reason, "detail.reason");
        receipts.extend(reason_receipts);
        let change = SuspensionChange {
            step: "suspended".into(),
            agent_ids,
        };
        let event = suspension_event(agent, &change, subtree, &suspended_by, &reason, receipts);
        let suspension = Suspension {
            agent_id: agent_id.to_owned(),
            subtree,
            suspended_by,
            reason,
            suspended_at_ms: now_ms(),
        };
        let (turn, step) = self.own_event(event).await?;
        self.store.put_suspension(suspension, step).await?;
        drop(turn);
        self.own_written();
        self.suspensions_changed();
        Ok(change)
    }

    /// Lifts the suspension of `agent_id` (and with `subtree`, those of everything below it).
    /// An agent stopped only through an ancestor's subtree suspension is resumed by resuming
    /// that ancestor; the error says which.
    pub async fn resume(
        &self,
        agent_id: &str,
        subtree: bool,
        resumed_by: &str,
        reason: &str,
    ) -> Result<SuspensionChange, GatewayError> {
        let snapshot = self.snapshot().await?;
        let (agent, targets) = snapshot.reach(agent_id, subtree)?;
        let lifted: Vec<String> = targets
            .into_iter()
            .filter(|id| snapshot.suspensions.contains_key(id))
            .collect();
        if lifted.is_empty() {
            return Err(GatewayError::Conflict(
                match snapshot.suspension(agent_id) {
                    Some(s) => format!(
                        "agent {agent_id:?} has no suspension of its own; it is stopped with the subtree of {:?}, so resume that one",
                        s.agent_id
                    ),
                    None => format!("agent {agent_id:?} is not suspended"),
                },
            ));
        }
        let change = SuspensionChange {
            step: "resumed".into(),
            agent_ids: lifted,
        };
        // Only the event keeps these, and the backstop redacts it.
        let event = suspension_event(agent, &change, subtree, resumed_by, reason, Vec::new());
        let (turn, step) = self.own_event(event).await?;
        // One lifted meanwhile by another resume is a conflict, and changes nothing.
        self.store
            .remove_suspensions(change.agent_ids.clone(), step)
            .await?;
        drop(turn);
        self.own_written();
        self.suspensions_changed();
        Ok(change)
    }

    fn suspensions_changed(&self) {
        self.suspension_epoch
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// Every agent (of `team`, when given), by id.
    pub async fn agent_views(&self, team: Option<&str>) -> Result<Vec<AgentView>, GatewayError> {
        let snapshot = self.snapshot().await?;
        let mut ids: Vec<String> = snapshot
            .agents
            .values()
            .filter(|a| team.is_none() || a.team_id.as_deref() == team)
            .map(|a| a.agent_id.clone())
            .collect();
        ids.sort();
        Ok(snapshot.views(&ids))
    }

    /// One agent.
    pub async fn agent_view(&self, agent_id: &str) -> Result<AgentView, GatewayError> {
        self.snapshot()
            .await?
            .view(agent_id)
            .ok_or_else(|| not_found(agent_id))
    }

    /// The agent's lineage: the root first, the agent itself last.
    pub async fn lineage(&self, agent_id: &str) -> Result<Vec<AgentView>, GatewayError> {
        let snapshot = self.snapshot().await?;
        if !snapshot.agents.contains_key(agent_id) {
            return Err(not_found(agent_id));
        }
        let mut chain = snapshot.ancestors(agent_id);
        chain.reverse();
        chain.push(agent_id.to_owned());
        Ok(snapshot.views(&chain))
    }

    /// The tree under `root` (or every tree, roots by id), with the edges that start in it.
    pub async fn topology(&self, root: Option<&str>) -> Result<Topology, GatewayError> {
        let snapshot = self.snapshot().await?;
        let ids = match root {
            Some(root) if !snapshot.agents.contains_key(root) => return Err(not_found(root)),
            Some(root) => snapshot.subtree(root),
            None => {
                let mut roots: Vec<&AgentRecord> = snapshot
                    .agents
                    .values()
                    .filter(|a| {
                        a.parent_agent_id
                            .as_ref()
                            .is_none_or(|p| !snapshot.agents.contains_key(p))
                    })
                    .collect();
                roots.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
                roots
                    .into_iter()
                    .flat_map(|r| snapshot.subtree(&r.agent_id))
                    .collect()
            }
        };
        let members: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let edges = self
            .store
            .edges()
            .await?
            .into_iter()
            .filter(|e| members.contains(e.from_agent_id.as_str()))
            .collect();
        Ok(Topology {
            agents: snapshot.views(&ids),
            edges,
        })
    }
}

/// A suspend or resume, as the gateway's own stream records it.
fn suspension_event(
    agent: &AgentRecord,
    change: &SuspensionChange,
    subtree: bool,
    by: &str,
    reason: &str,
    redactions: Vec<RedactionReceipt>,
) -> AuditEvent {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let (decision, rule) = match change.step.as_str() {
        "suspended" => (Decision::Deny, "suspension"),
        _ => (Decision::Allow, "resumption"),
    };
    AuditEvent {
        event_id: format!(
            "{GATEWAY_STREAM}/suspension/{}/{}/{now}-{serial}",
            agent.agent_id, change.step
        ),
        timestamp_ms: now,
        agent: agent.context(),
        session_id: None,
        // The operator's command, as the action this event records.
        action: Action::ToolCall {
            tool: format!("agents.{}", if subtree { "subtree" } else { "agent" }),
            args: json!({ "step": change.step, "subtree": subtree }),
        },
        verdict: Some(Verdict {
            decision,
            rule: rule.into(),
            reason: reason.to_owned(),
            policy: String::new(),
            mode: Mode::Enforce,
        }),
        redactions,
        kind: EventKind::Suspension,
        detail: Some(json!({
            "step": change.step,
            "subtree": subtree,
            "by": by,
            "reason": reason,
            "agent_ids": change.agent_ids,
        })),
        origin: None,
    }
}
