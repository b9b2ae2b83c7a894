//! Agents: identity, team and lineage (who spawned whom), and operators' suspensions.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// The agent on whose behalf an action is checked, as policy conditions see it (`agent.*`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentContext {
    /// Stable agent id.
    pub id: String,
    /// The team the agent belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Delegation depth: 0 for a root agent, parent's depth + 1 for a spawned one.
    #[serde(default)]
    pub depth: u32,
    /// The id of the agent that spawned this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl AgentContext {
    /// A root agent with no team.
    pub fn new(id: impl Into<String>) -> Self {
        AgentContext {
            id: id.into(),
            team: None,
            depth: 0,
            parent: None,
        }
    }

    /// Parses the JSON shape `{"id":"bot","team":"support","depth":1,"parent":"lead"}`.
    pub fn from_json(text: &str) -> Result<Self, CoreError> {
        let agent: AgentContext =
            serde_json::from_str(text).map_err(|e| CoreError::json("agent", &e))?;
        agent.validate()?;
        Ok(agent)
    }

    /// Checks the invariants serde cannot express.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.id.trim().is_empty() {
            return Err(CoreError::InvalidField {
                field: "agent.id",
                message: "must not be empty".to_owned(),
            });
        }
        Ok(())
    }
}

/// Where an agent sits in the delegation tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The agent that spawned this one; `None` for a root agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_agent_id: Option<String>,
    /// The team the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Why the parent delegated to this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_reason: Option<String>,
    /// The parent's tool that spawned this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_by_tool: Option<String>,
    /// Delegation depth (0 for a root agent).
    #[serde(default)]
    pub depth: u32,
}

/// What an agent presents when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegistration {
    /// Stable agent id.
    pub agent_id: String,
    /// Human-readable name.
    pub name: String,
    /// The framework the agent runs in, e.g. `langchain`.
    #[serde(default)]
    pub framework: String,
    /// The agent's Ed25519 public key as a `did:key` identifier.
    pub public_key: String,
    /// Who spawned the agent and why.
    #[serde(default)]
    pub lineage: Lineage,
}

impl AgentRegistration {
    /// The view of this agent that policy conditions see.
    pub fn context(&self) -> AgentContext {
        AgentContext::from_lineage(self.agent_id.clone(), self.lineage.clone())
    }
}

impl AgentContext {
    /// The policy view of an agent with the given lineage.
    pub fn from_lineage(id: String, lineage: Lineage) -> Self {
        AgentContext {
            id,
            team: lineage.team_id,
            depth: lineage.depth,
            parent: lineage.parent_agent_id,
        }
    }
}

/// An operator's stop on an agent: every check it makes is denied until it is resumed. With
/// `subtree`, every agent below it in the delegation tree is stopped too, including agents
/// spawned after the suspension.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// The suspended agent.
    pub agent_id: String,
    /// Whether its descendants are stopped with it.
    #[serde(default)]
    pub subtree: bool,
    /// Who suspended it.
    pub suspended_by: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// When, ms since the epoch.
    pub suspended_at_ms: i64,
}

/// The suspensions in force, by agent id.
pub type Suspensions = HashMap<String, Suspension>;

/// The suspension that stops `agent_id`: its own, else the nearest ancestor's that covers its
/// subtree. `ancestors` are the agent's ancestors' ids, nearest (the parent) first.
pub fn suspension_of<'a, 's>(
    suspensions: &'s Suspensions,
    agent_id: &str,
    ancestors: impl IntoIterator<Item = &'a str>,
) -> Option<&'s Suspension> {
    if suspensions.is_empty() {
        return None;
    }
    suspensions.get(agent_id).or_else(|| {
        ancestors
            .into_iter()
            .filter_map(|id| suspensions.get(id))
            .find(|s| s.subtree)
    })
}

impl Suspension {
    /// Why a check by `agent_id` is refused, in words for the agent and the audit log.
    pub fn reason_for(&self, agent_id: &str) -> String {
        let by = if self.suspended_by.is_empty() {
            "an operator"
        } else {
            &self.suspended_by
        };
        let whom = if self.agent_id == agent_id {
            format!("agent \"{agent_id}\" is suspended")
        } else {
            format!(
                "agent \"{agent_id}\" is suspended with the subtree of \"{}\"",
                self.agent_id
            )
        };
        if self.reason.is_empty() {
            format!("{whom} by {by}")
        } else {
            format!("{whom} by {by}: {}", self.reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_json_round_trips() {
        let agent = AgentContext::from_json(r#"{"id":"bot","team":"support","depth":1}"#).unwrap();
        assert_eq!(agent.team.as_deref(), Some("support"));
        assert_eq!(agent.depth, 1);
        let back = serde_json::to_string(&agent).unwrap();
        assert_eq!(AgentContext::from_json(&back).unwrap(), agent);
    }

    #[test]
    fn agent_json_rejects_unknown_fields_and_empty_ids() {
        let err = AgentContext::from_json(r#"{"id":"bot","teem":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `teem`"), "{err}");
        let err = AgentContext::from_json(r#"{"id":" "}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid agent.id: must not be empty");
    }

    #[test]
    fn registration_context_carries_lineage() {
        let reg = AgentRegistration {
            agent_id: "child".into(),
            name: "Child".into(),
            framework: "custom".into(),
            public_key: "did:key:z6Mk".into(),
            lineage: Lineage {
                parent_agent_id: Some("lead".into()),
                team_id: Some("ops".into()),
                depth: 2,
                ..Lineage::default()
            },
        };
        let ctx = reg.context();
        assert_eq!(ctx.parent.as_deref(), Some("lead"));
        assert_eq!(ctx.team.as_deref(), Some("ops"));
        assert_eq!(ctx.depth, 2);
    }

    #[test]
    fn a_subtree_suspension_stops_descendants_and_an_own_one_only_the_agent() {
        let stop = |id: &str, subtree| Suspension {
            agent_id: id.into(),
            subtree,
            suspended_by: "alice".into(),
            reason: "runaway".into(),
            suspended_at_ms: 1,
        };
        let mut set = Suspensions::new();
        set.insert("lead".into(), stop("lead", false));
        assert_eq!(
            suspension_of(&set, "lead", []).map(|s| s.agent_id.as_str()),
            Some("lead")
        );
        assert!(
            suspension_of(&set, "child", ["lead"]).is_none(),
            "lead alone"
        );
        set.insert("root".into(), stop("root", true));
        let found = suspension_of(&set, "child", ["lead", "root"]).unwrap();
        assert_eq!(found.agent_id, "root");
        assert_eq!(
            found.reason_for("child"),
            "agent \"child\" is suspended with the subtree of \"root\" by alice: runaway"
        );
        assert_eq!(
            set["lead"].reason_for("lead"),
            "agent \"lead\" is suspended by alice: runaway"
        );
    }
}
