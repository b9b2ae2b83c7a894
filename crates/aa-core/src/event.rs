//! What gets recorded: audit events, redaction receipts, approvals and topology edges.

use serde::{Deserialize, Serialize};

use crate::{Action, AgentContext, Verdict};

/// One entry of the audit log: an action, the decision on it, and what was redacted from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id; appends are idempotent by it.
    pub event_id: String,
    /// When the event happened, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// The acting agent and its lineage.
    pub agent: AgentContext,
    /// The session or run the event belongs to, if the SDK names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The action, after redaction.
    pub action: Action,
    /// The decision on it, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// One receipt per redacted span.
    #[serde(default)]
    pub redactions: Vec<RedactionReceipt>,
    /// What happened.
    #[serde(default)]
    pub kind: EventKind,
    /// What the SDK reported beyond the action: a tool's result or error, its duration, an
    /// LLM call's token counts. Scanned and redacted like everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// Where the event entered the trusted side. Set by the runtime; anything the SDK puts
    /// here is discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl AuditEvent {
    /// The event as a JSON value, its detail (often the bulk of it) moved in rather than
    /// copied.
    pub fn into_value(mut self) -> Result<serde_json::Value, serde_json::Error> {
        let detail = self.detail.take();
        let mut value = serde_json::to_value(&self)?;
        if let (serde_json::Value::Object(fields), Some(detail)) = (&mut value, detail) {
            fields.insert("detail".into(), detail);
        }
        Ok(value)
    }
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A policy decision on an action.
    #[default]
    Decision,
    /// A tool started.
    ToolStart,
    /// A tool finished; `detail` holds its result summary and duration.
    ToolEnd,
    /// An LLM call's usage: model, tokens, cost.
    LlmUsage,
    /// An error the agent hit.
    Error,
    /// An edge between agents (spawn, delegation, call).
    Edge,
    /// A step of an approval (requested, approved, denied, expired, used); only the gateway
    /// records these.
    Approval,
    /// An operator suspended or resumed an agent; only the gateway records these.
    Suspension,
    /// An LLM call's cost as the gateway priced it, charged to every budget over the agent;
    /// only the gateway records these.
    Spend,
    /// A connection or frame the runtime refused at its socket, before any agent's call: a
    /// uid it does not serve, a malformed, oversized or unfinished frame, a connection past
    /// its limit. `verdict` says why; only the runtime records these.
    Refusal,
}

impl EventKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Decision => "decision",
            EventKind::ToolStart => "tool_start",
            EventKind::ToolEnd => "tool_end",
            EventKind::LlmUsage => "llm_usage",
            EventKind::Error => "error",
            EventKind::Edge => "edge",
            EventKind::Approval => "approval",
            EventKind::Suspension => "suspension",
            EventKind::Spend => "spend",
            EventKind::Refusal => "refusal",
        }
    }

    /// True for the kinds only the gateway records; a runtime refuses them from an SDK.
    pub fn gateway_only(self) -> bool {
        matches!(
            self,
            EventKind::Approval | EventKind::Suspension | EventKind::Spend
        )
    }

    /// True for the kinds only the runtime records; it refuses them from an SDK: its
    /// decisions, its refusals, and the edges it checked (an SDK reports edges as edges, not
    /// as events, so that the runtime can check each starts at the agent reporting it).
    pub fn runtime_only(self) -> bool {
        matches!(
            self,
            EventKind::Decision | EventKind::Refusal | EventKind::Edge
        )
    }
}

/// How an event reached the runtime: facts the runtime observed itself, never taken from the
/// SDK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The runtime stream (one hash chain per stream).
    pub stream_id: String,
    /// Gapless position in that stream, from 1.
    pub sequence: u64,
    /// When the runtime received the event, ms since the epoch.
    pub received_at_ms: i64,
    /// The peer's uid, from `SO_PEERCRED`.
    pub peer_uid: u32,
    /// The peer's pid, from `SO_PEERCRED` (0 when the kernel did not say).
    pub peer_pid: i32,
}

/// Proof that something was redacted, without the secret: which rule, where, and a truncated
/// hash that lets an operator match a known leaked value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionReceipt {
    /// The scanner rule that matched, e.g. `aws-access-key-id`.
    pub rule_id: String,
    /// The kind of secret or PII, e.g. `aws_access_key`.
    pub kind: String,
    /// The JSON path of the field it was found in, e.g. `action.args.command`.
    pub field: String,
    /// Byte range of the secret within that field, before redaction.
    pub start: u64,
    /// End of the byte range (exclusive).
    pub end: u64,
    /// Hex of the first bytes of SHA-256 over the secret, keyed (HMAC-SHA-256) where the
    /// scanner that made it has a receipt key, as the runtime's and the gateway's do.
    pub sha256_prefix: String,
}

/// Where an approval stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for a human.
    Pending,
    /// A human approved.
    Approved,
    /// A human refused.
    Denied,
    /// Nobody decided in time; counts as denied.
    Expired,
}

/// A request for a human to approve a pending action.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Unique id, returned with the `pending` decision.
    pub approval_id: String,
    /// The agent that asked.
    pub agent: AgentContext,
    /// The action waiting for approval (redacted).
    pub action: Action,
    /// HMAC-SHA-256 hex of the canonical action, keyed by the runtime (its key is derived from
    /// the runtime token), so an approval cannot be replayed for another action and the digest
    /// gives away nothing the redacted action hides.
    pub action_digest: String,
    /// The rule that asked for approval.
    pub rule: String,
    /// Why approval is needed.
    pub reason: String,
    /// Current status.
    pub status: ApprovalStatus,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// When the request expires, ms since the epoch.
    pub expires_at_ms: i64,
    /// Who decided, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The decider's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When it was decided (or found expired), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<i64>,
    /// When the approved action was released, ms since the epoch: an approval is used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at_ms: Option<i64>,
    /// The policy that asked, as `name@version`.
    #[serde(default)]
    pub policy: String,
}

impl ApprovalStatus {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
        }
    }
}

impl Approval {
    /// The status at `now_ms`: a pending approval past its expiry is expired, whether or not
    /// anyone has recorded that yet.
    pub fn status_at(&self, now_ms: i64) -> ApprovalStatus {
        if self.status == ApprovalStatus::Pending && now_ms >= self.expires_at_ms {
            ApprovalStatus::Expired
        } else {
            self.status
        }
    }
}

/// The kinds of edges in the agent topology.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// The source agent spawned the target agent.
    #[serde(alias = "spawns")]
    Spawned,
    /// The source agent delegated a task to the target agent.
    #[serde(alias = "delegates_to")]
    Delegated,
    /// The source agent called the target agent as a tool.
    #[serde(alias = "calls")]
    Called,
    /// The source agent sent the target agent a message.
    #[serde(alias = "messages")]
    Messaged,
}

impl EdgeKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Spawned => "spawned",
            EdgeKind::Delegated => "delegated",
            EdgeKind::Called => "called",
            EdgeKind::Messaged => "messaged",
        }
    }
}

/// One edge of who-spawned-or-called-whom.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyEdge {
    /// The acting (parent) agent.
    pub from_agent_id: String,
    /// The spawned or called agent.
    pub to_agent_id: String,
    /// What kind of edge.
    pub kind: EdgeKind,
    /// The tool that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// When it was first seen, ms since the epoch.
    pub created_at_ms: i64,
    /// What the agent said about it: free-form JSON, scanned like every event field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::AuditEvent;

    #[test]
    fn into_value_is_the_serialised_event() {
        let base = json!({
            "event_id": "e1", "timestamp_ms": 5, "agent": {"id": "bot", "team": "t"},
            "action": {"type": "tool_call", "tool": "http", "args": {"url": "https://x"}},
            "kind": "tool_end", "detail": {"result": ["a", 1]}
        });
        let event: AuditEvent = serde_json::from_value(base).unwrap();
        for detail in [Some(json!({"result": ["a", 1]})), Some(Value::Null), None] {
            let event = AuditEvent {
                detail,
                ..event.clone()
            };
            let want = serde_json::to_value(&event).unwrap();
            assert_eq!(event.into_value().unwrap(), want);
        }
    }
}
