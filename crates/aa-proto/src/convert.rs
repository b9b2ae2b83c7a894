//! Conversions between `aa-core` domain types and the generated wire types.
//!
//! Core → wire is infallible (`From`). Wire → core is fallible (`TryFrom`) because the wire is
//! written by untrusted peers: every missing or malformed field is an error naming the field.
//! An unknown or unspecified decision on the wire reads as `Deny`, so a bad peer fails closed.

use std::time::Duration;

use aa_core::canonical::canonical_string;
use aa_core::{
    Action, AgentContext, AgentRegistration, Approval, ApprovalStatus, AuditEvent, Decision,
    EdgeKind, EventKind, FileOperation, Lineage, Mode, Origin, RedactionReceipt, Suspension,
    TopologyEdge, Verdict,
};

use crate::ProtoError;
use crate::pb;

// ---- enums -------------------------------------------------------------------------------

impl From<Decision> for pb::Decision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Allow => pb::Decision::Allow,
            Decision::Deny => pb::Decision::Deny,
            Decision::Pending => pb::Decision::Pending,
        }
    }
}

/// Reads a wire decision; anything but ALLOW or PENDING is DENY (fail closed).
pub fn decision_from_wire(value: i32) -> Decision {
    match pb::Decision::try_from(value) {
        Ok(pb::Decision::Allow) => Decision::Allow,
        Ok(pb::Decision::Pending) => Decision::Pending,
        _ => Decision::Deny,
    }
}

impl From<Mode> for pb::Mode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Enforce => pb::Mode::Enforce,
            Mode::Observe => pb::Mode::Observe,
            Mode::Disabled => pb::Mode::Disabled,
        }
    }
}

/// Reads a wire mode; unspecified or unknown is ENFORCE (fail closed).
pub fn mode_from_wire(value: i32) -> Mode {
    match pb::Mode::try_from(value) {
        Ok(pb::Mode::Observe) => Mode::Observe,
        Ok(pb::Mode::Disabled) => Mode::Disabled,
        _ => Mode::Enforce,
    }
}

impl From<ApprovalStatus> for pb::ApprovalStatus {
    fn from(s: ApprovalStatus) -> Self {
        match s {
            ApprovalStatus::Pending => pb::ApprovalStatus::Pending,
            ApprovalStatus::Approved => pb::ApprovalStatus::Approved,
            ApprovalStatus::Denied => pb::ApprovalStatus::Denied,
            ApprovalStatus::Expired => pb::ApprovalStatus::Expired,
        }
    }
}

fn approval_status_from_wire(value: i32) -> Result<ApprovalStatus, ProtoError> {
    match pb::ApprovalStatus::try_from(value) {
        Ok(pb::ApprovalStatus::Pending) => Ok(ApprovalStatus::Pending),
        Ok(pb::ApprovalStatus::Approved) => Ok(ApprovalStatus::Approved),
        Ok(pb::ApprovalStatus::Denied) => Ok(ApprovalStatus::Denied),
        Ok(pb::ApprovalStatus::Expired) => Ok(ApprovalStatus::Expired),
        _ => Err(invalid(
            "approval.status",
            format!("unknown status {value}"),
        )),
    }
}

impl From<EdgeKind> for pb::EdgeKind {
    fn from(k: EdgeKind) -> Self {
        match k {
            EdgeKind::Spawned => pb::EdgeKind::Spawned,
            EdgeKind::Delegated => pb::EdgeKind::Delegated,
            EdgeKind::Called => pb::EdgeKind::Called,
            EdgeKind::Messaged => pb::EdgeKind::Messaged,
        }
    }
}

// ---- actions -----------------------------------------------------------------------------

impl From<&Action> for pb::Action {
    fn from(action: &Action) -> Self {
        use pb::action::Kind;
        let kind = match action {
            Action::ToolCall { tool, args } => Kind::ToolCall(pb::ToolCall {
                tool: tool.clone(),
                args_json: canonical_string(args),
            }),
            Action::LlmCall {
                model,
                token_estimate,
            } => Kind::LlmCall(pb::LlmCall {
                model: model.clone(),
                token_estimate: *token_estimate,
            }),
            Action::Network { host, port, method } => Kind::Network(pb::NetworkCall {
                host: host.clone(),
                port: port.map(u32::from),
                method: method.clone().unwrap_or_default(),
            }),
            Action::File { operation, path } => {
                let operation = match operation {
                    FileOperation::Read => pb::FileOperationKind::Read,
                    FileOperation::Write => pb::FileOperationKind::Write,
                    FileOperation::Delete => pb::FileOperationKind::Delete,
                };
                Kind::File(pb::FileOperation {
                    operation: operation.into(),
                    path: path.clone(),
                })
            }
            Action::ProcessExec { command, args } => Kind::ProcessExec(pb::ProcessExec {
                command: command.clone(),
                args: args.clone(),
            }),
            Action::AgentSpawn { child_id, reason } => Kind::AgentSpawn(pb::AgentSpawn {
                child_id: child_id.clone().unwrap_or_default(),
                reason: reason.clone().unwrap_or_default(),
            }),
        };
        pb::Action { kind: Some(kind) }
    }
}

impl TryFrom<pb::Action> for Action {
    type Error = ProtoError;

    fn try_from(action: pb::Action) -> Result<Self, Self::Error> {
        use pb::action::Kind;
        let action = match action.kind.ok_or(ProtoError::MissingField("action.kind"))? {
            Kind::ToolCall(t) => {
                let args = optional_json("action.tool_call.args_json", &t.args_json, MAX_NESTING)?
                    .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
                Action::ToolCall { tool: t.tool, args }
            }
            Kind::LlmCall(l) => Action::LlmCall {
                model: l.model,
                token_estimate: l.token_estimate,
            },
            Kind::Network(n) => Action::Network {
                host: n.host,
                port: n
                    .port
                    .map(|p| {
                        u16::try_from(p).map_err(|_| {
                            invalid("action.network.port", format!("{p} is not a port"))
                        })
                    })
                    .transpose()?,
                method: non_empty(n.method),
            },
            Kind::File(f) => {
                let operation = match pb::FileOperationKind::try_from(f.operation) {
                    Ok(pb::FileOperationKind::Read) => FileOperation::Read,
                    Ok(pb::FileOperationKind::Write) => FileOperation::Write,
                    Ok(pb::FileOperationKind::Delete) => FileOperation::Delete,
                    _ => {
                        return Err(invalid(
                            "action.file.operation",
                            format!("unknown operation {}", f.operation),
                        ));
                    }
                };
                Action::File {
                    operation,
                    path: f.path,
                }
            }
            Kind::ProcessExec(p) => Action::ProcessExec {
                command: p.command,
                args: p.args,
            },
            Kind::AgentSpawn(s) => Action::AgentSpawn {
                child_id: non_empty(s.child_id),
                reason: non_empty(s.reason),
            },
        };
        action
            .validate()
            .map_err(|e| invalid("action", e.to_string()))?;
        Ok(action)
    }
}

// ---- agents ------------------------------------------------------------------------------

impl From<&Lineage> for pb::Lineage {
    fn from(l: &Lineage) -> Self {
        pb::Lineage {
            parent_agent_id: l.parent_agent_id.clone().unwrap_or_default(),
            team_id: l.team_id.clone().unwrap_or_default(),
            delegation_reason: l.delegation_reason.clone().unwrap_or_default(),
            spawned_by_tool: l.spawned_by_tool.clone().unwrap_or_default(),
            depth: l.depth,
        }
    }
}

impl From<pb::Lineage> for Lineage {
    fn from(l: pb::Lineage) -> Self {
        Lineage {
            parent_agent_id: non_empty(l.parent_agent_id),
            team_id: non_empty(l.team_id),
            delegation_reason: non_empty(l.delegation_reason),
            spawned_by_tool: non_empty(l.spawned_by_tool),
            depth: l.depth,
        }
    }
}

impl From<&AgentContext> for pb::AgentRef {
    fn from(a: &AgentContext) -> Self {
        pb::AgentRef {
            agent_id: a.id.clone(),
            lineage: Some(pb::Lineage {
                parent_agent_id: a.parent.clone().unwrap_or_default(),
                team_id: a.team.clone().unwrap_or_default(),
                depth: a.depth,
                ..pb::Lineage::default()
            }),
        }
    }
}

impl TryFrom<pb::AgentRef> for AgentContext {
    type Error = ProtoError;

    fn try_from(a: pb::AgentRef) -> Result<Self, Self::Error> {
        let agent = AgentContext::from_lineage(a.agent_id, a.lineage.unwrap_or_default().into());
        agent
            .validate()
            .map_err(|e| invalid("agent.agent_id", e.to_string()))?;
        Ok(agent)
    }
}

impl From<&AgentRegistration> for pb::RegisterRequest {
    fn from(r: &AgentRegistration) -> Self {
        let l = &r.lineage;
        pb::RegisterRequest {
            agent_id: r.agent_id.clone(),
            name: r.name.clone(),
            framework: r.framework.clone(),
            public_key: Vec::new(),
            did_key: r.public_key.clone(),
            parent_agent_id: l.parent_agent_id.clone().unwrap_or_default(),
            team_id: l.team_id.clone().unwrap_or_default(),
            delegation_reason: l.delegation_reason.clone().unwrap_or_default(),
            spawned_by_tool: l.spawned_by_tool.clone().unwrap_or_default(),
            depth: l.depth,
            challenge_signature: Vec::new(),
            answered_challenge: Vec::new(),
            parent_signature: Vec::new(),
            spawn_grant: String::new(),
        }
    }
}

/// The longest id, name or team a registration may carry.
pub const MAX_NAME_BYTES: usize = 256;
/// The longest delegation reason a registration may carry.
pub const MAX_REASON_BYTES: usize = 4096;

impl TryFrom<pb::RegisterRequest> for AgentRegistration {
    type Error = ProtoError;

    fn try_from(r: pb::RegisterRequest) -> Result<Self, Self::Error> {
        if r.agent_id.is_empty() {
            return Err(ProtoError::MissingField("register.agent_id"));
        }
        if !r.did_key.starts_with("did:key:") {
            return Err(invalid(
                "register.did_key",
                "must be a did:key identifier".to_owned(),
            ));
        }
        // Every registration is kept, and shown to operators: none may be made huge.
        for (field, value, most) in [
            ("register.agent_id", &r.agent_id, MAX_NAME_BYTES),
            ("register.name", &r.name, MAX_NAME_BYTES),
            ("register.framework", &r.framework, MAX_NAME_BYTES),
            ("register.did_key", &r.did_key, MAX_NAME_BYTES),
            (
                "register.parent_agent_id",
                &r.parent_agent_id,
                MAX_NAME_BYTES,
            ),
            ("register.team_id", &r.team_id, MAX_NAME_BYTES),
            (
                "register.spawned_by_tool",
                &r.spawned_by_tool,
                MAX_NAME_BYTES,
            ),
            (
                "register.delegation_reason",
                &r.delegation_reason,
                MAX_REASON_BYTES,
            ),
        ] {
            if value.len() > most {
                return Err(invalid(
                    field,
                    format!("is {} bytes long; at most {most}", value.len()),
                ));
            }
        }
        Ok(AgentRegistration {
            agent_id: r.agent_id,
            name: r.name,
            framework: r.framework,
            public_key: r.did_key,
            lineage: Lineage {
                parent_agent_id: non_empty(r.parent_agent_id),
                team_id: non_empty(r.team_id),
                delegation_reason: non_empty(r.delegation_reason),
                spawned_by_tool: non_empty(r.spawned_by_tool),
                depth: r.depth,
            },
        })
    }
}

// ---- decisions ---------------------------------------------------------------------------

/// The wire form of a verdict, with what only the runtime knows: the approval id of a pending
/// decision and how long evaluation took.
pub fn decision_to_wire(
    v: &Verdict,
    approval_id: Option<&str>,
    latency: Duration,
) -> pb::PolicyDecision {
    pb::PolicyDecision {
        decision: pb::Decision::from(v.decision).into(),
        matched_rule: v.rule.clone(),
        reason: v.reason.clone(),
        policy_version: v.policy.clone(),
        approval_id: approval_id.unwrap_or_default().to_owned(),
        evaluation_latency: prost_types::Duration::try_from(latency).ok(),
        mode: pb::Mode::from(v.mode).into(),
    }
}

impl From<pb::PolicyDecision> for Verdict {
    fn from(d: pb::PolicyDecision) -> Self {
        Verdict {
            decision: decision_from_wire(d.decision),
            rule: d.matched_rule,
            reason: d.reason,
            policy: d.policy_version,
            mode: mode_from_wire(d.mode),
        }
    }
}

// ---- events ------------------------------------------------------------------------------

impl From<&RedactionReceipt> for pb::RedactionReceipt {
    fn from(r: &RedactionReceipt) -> Self {
        pb::RedactionReceipt {
            rule_id: r.rule_id.clone(),
            kind: r.kind.clone(),
            field: r.field.clone(),
            start: r.start,
            end: r.end,
            sha256_prefix: r.sha256_prefix.clone(),
        }
    }
}

impl From<pb::RedactionReceipt> for RedactionReceipt {
    fn from(r: pb::RedactionReceipt) -> Self {
        RedactionReceipt {
            rule_id: r.rule_id,
            kind: r.kind,
            field: r.field,
            start: r.start,
            end: r.end,
            sha256_prefix: r.sha256_prefix,
        }
    }
}

impl From<EventKind> for pb::EventKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Decision => pb::EventKind::Decision,
            EventKind::ToolStart => pb::EventKind::ToolStart,
            EventKind::ToolEnd => pb::EventKind::ToolEnd,
            EventKind::LlmUsage => pb::EventKind::LlmUsage,
            EventKind::Error => pb::EventKind::Error,
            EventKind::Edge => pb::EventKind::Edge,
            EventKind::Approval => pb::EventKind::Approval,
            EventKind::Suspension => pb::EventKind::Suspension,
            EventKind::Spend => pb::EventKind::Spend,
            EventKind::Refusal => pb::EventKind::Refusal,
        }
    }
}

/// Reads an event kind; unknown or unspecified values are `Decision`.
pub fn event_kind_from_wire(value: i32) -> EventKind {
    match pb::EventKind::try_from(value) {
        Ok(pb::EventKind::ToolStart) => EventKind::ToolStart,
        Ok(pb::EventKind::ToolEnd) => EventKind::ToolEnd,
        Ok(pb::EventKind::LlmUsage) => EventKind::LlmUsage,
        Ok(pb::EventKind::Error) => EventKind::Error,
        Ok(pb::EventKind::Edge) => EventKind::Edge,
        Ok(pb::EventKind::Approval) => EventKind::Approval,
        Ok(pb::EventKind::Suspension) => EventKind::Suspension,
        Ok(pb::EventKind::Spend) => EventKind::Spend,
        Ok(pb::EventKind::Refusal) => EventKind::Refusal,
        _ => EventKind::Decision,
    }
}

impl From<&AuditEvent> for pb::AuditEvent {
    fn from(e: &AuditEvent) -> Self {
        pb::AuditEvent {
            event_id: e.event_id.clone(),
            time: Some(timestamp(e.timestamp_ms)),
            agent: Some((&e.agent).into()),
            session_id: e.session_id.clone().unwrap_or_default(),
            action: Some((&e.action).into()),
            decision: e
                .verdict
                .as_ref()
                .map(|v| decision_to_wire(v, None, Duration::ZERO)),
            redactions: e.redactions.iter().map(Into::into).collect(),
            stream_id: e
                .origin
                .as_ref()
                .map(|o| o.stream_id.clone())
                .unwrap_or_default(),
            sequence: e.origin.as_ref().map_or(0, |o| o.sequence),
            kind: pb::EventKind::from(e.kind).into(),
            detail_json: e.detail.as_ref().map(canonical_string).unwrap_or_default(),
            origin: e.origin.as_ref().map(|o| pb::Origin {
                received_at: Some(timestamp(o.received_at_ms)),
                peer_uid: o.peer_uid,
                peer_pid: o.peer_pid,
            }),
        }
    }
}

impl TryFrom<pb::AuditEvent> for AuditEvent {
    type Error = ProtoError;

    fn try_from(e: pb::AuditEvent) -> Result<Self, Self::Error> {
        if e.event_id.is_empty() {
            return Err(ProtoError::MissingField("event.event_id"));
        }
        Ok(AuditEvent {
            event_id: e.event_id,
            timestamp_ms: checked_millis(
                "event.time",
                e.time.ok_or(ProtoError::MissingField("event.time"))?,
            )?,
            agent: e
                .agent
                .ok_or(ProtoError::MissingField("event.agent"))?
                .try_into()?,
            session_id: non_empty(e.session_id),
            action: e
                .action
                .ok_or(ProtoError::MissingField("event.action"))?
                .try_into()?,
            verdict: e.decision.map(Into::into),
            redactions: e.redactions.into_iter().map(Into::into).collect(),
            kind: event_kind_from_wire(e.kind),
            detail: optional_json("event.detail_json", &e.detail_json, MAX_NESTING)?,
            origin: e.origin.map(|o| Origin {
                stream_id: e.stream_id,
                sequence: e.sequence,
                received_at_ms: o.received_at.map_or(0, millis),
                peer_uid: o.peer_uid,
                peer_pid: o.peer_pid,
            }),
        })
    }
}

impl From<&TopologyEdge> for pb::TopologyEdge {
    fn from(e: &TopologyEdge) -> Self {
        pb::TopologyEdge {
            from_agent_id: e.from_agent_id.clone(),
            to_agent_id: e.to_agent_id.clone(),
            kind: pb::EdgeKind::from(e.kind).into(),
            tool: e.tool.clone().unwrap_or_default(),
            created_at: Some(timestamp(e.created_at_ms)),
            metadata_json: e
                .metadata
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::TopologyEdge> for TopologyEdge {
    type Error = ProtoError;

    fn try_from(e: pb::TopologyEdge) -> Result<Self, Self::Error> {
        let kind = match pb::EdgeKind::try_from(e.kind) {
            Ok(pb::EdgeKind::Spawned) => EdgeKind::Spawned,
            Ok(pb::EdgeKind::Delegated) => EdgeKind::Delegated,
            Ok(pb::EdgeKind::Called) => EdgeKind::Called,
            Ok(pb::EdgeKind::Messaged) => EdgeKind::Messaged,
            _ => return Err(invalid("edge.kind", format!("unknown kind {}", e.kind))),
        };
        if e.from_agent_id.is_empty() || e.to_agent_id.is_empty() {
            return Err(ProtoError::MissingField("edge.from_agent_id/to_agent_id"));
        }
        Ok(TopologyEdge {
            from_agent_id: e.from_agent_id,
            to_agent_id: e.to_agent_id,
            kind,
            tool: non_empty(e.tool),
            created_at_ms: e
                .created_at
                .map_or(Ok(0), |t| checked_millis("edge.created_at", t))?,
            // A level less: the runtime records an edge whole as an event's detail, which the
            // gateway reads within MAX_NESTING.
            metadata: optional_json("edge.metadata_json", &e.metadata_json, MAX_NESTING - 1)?,
        })
    }
}

impl From<&Approval> for pb::Approval {
    fn from(a: &Approval) -> Self {
        pb::Approval {
            approval_id: a.approval_id.clone(),
            agent: Some((&a.agent).into()),
            action: Some((&a.action).into()),
            action_digest: a.action_digest.clone(),
            rule: a.rule.clone(),
            reason: a.reason.clone(),
            status: pb::ApprovalStatus::from(a.status).into(),
            created_at: Some(timestamp(a.created_at_ms)),
            expires_at: Some(timestamp(a.expires_at_ms)),
            decided_by: a.decided_by.clone().unwrap_or_default(),
            comment: a.comment.clone().unwrap_or_default(),
            decided_at: a.decided_at_ms.map(timestamp),
            used_at: a.used_at_ms.map(timestamp),
            policy_version: a.policy.clone(),
        }
    }
}

impl TryFrom<pb::Approval> for Approval {
    type Error = ProtoError;

    fn try_from(a: pb::Approval) -> Result<Self, Self::Error> {
        Ok(Approval {
            approval_id: a.approval_id,
            agent: a
                .agent
                .ok_or(ProtoError::MissingField("approval.agent"))?
                .try_into()?,
            action: a
                .action
                .ok_or(ProtoError::MissingField("approval.action"))?
                .try_into()?,
            action_digest: a.action_digest,
            rule: a.rule,
            reason: a.reason,
            status: approval_status_from_wire(a.status)?,
            created_at_ms: a.created_at.map_or(0, millis),
            expires_at_ms: a.expires_at.map_or(0, millis),
            decided_by: non_empty(a.decided_by),
            comment: non_empty(a.comment),
            decided_at_ms: a.decided_at.map(millis),
            used_at_ms: a.used_at.map(millis),
            policy: a.policy_version,
        })
    }
}

impl From<&Suspension> for pb::Suspension {
    fn from(s: &Suspension) -> Self {
        pb::Suspension {
            agent_id: s.agent_id.clone(),
            subtree: s.subtree,
            suspended_by: s.suspended_by.clone(),
            reason: s.reason.clone(),
            suspended_at: Some(timestamp(s.suspended_at_ms)),
        }
    }
}

impl TryFrom<pb::Suspension> for Suspension {
    type Error = ProtoError;

    fn try_from(s: pb::Suspension) -> Result<Self, Self::Error> {
        if s.agent_id.trim().is_empty() {
            return Err(ProtoError::MissingField("suspension.agent_id"));
        }
        Ok(Suspension {
            agent_id: s.agent_id,
            subtree: s.subtree,
            suspended_by: s.suspended_by,
            reason: s.reason,
            suspended_at_ms: s.suspended_at.map_or(0, millis),
        })
    }
}

// ---- helpers -----------------------------------------------------------------------------

/// Milliseconds since the epoch as a wire timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    // rem_euclid keeps nanos non-negative for times before 1970.
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A wire timestamp as milliseconds since the epoch (saturating).
pub fn millis(t: prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

/// The earliest and latest instants a wire timestamp may hold, 0001-01-01T00:00:00Z and
/// 9999-12-31T23:59:59Z, as its definition says: within them every time is a whole number
/// of milliseconds that goes back on the wire as it came.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A wire timestamp a client sent as milliseconds since the epoch; one outside the years
/// 1 to 9999, or with nanoseconds outside a second, is refused, naming `field`.
pub fn checked_millis(field: &'static str, t: prost_types::Timestamp) -> Result<i64, ProtoError> {
    if !TIMESTAMP_SECONDS.contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(
            field,
            format!(
                "{}s {}ns is not a time between the years 1 and 9999",
                t.seconds, t.nanos
            ),
        ));
    }
    Ok(millis(t))
}

/// A std duration on the wire (`None` only past the wire's range).
pub fn duration_to_wire(d: std::time::Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// A wire duration as a std one; `None` when negative or empty (zero).
pub fn duration(d: &prost_types::Duration) -> Option<std::time::Duration> {
    std::time::Duration::try_from(*d)
        .ok()
        .filter(|d| !d.is_zero())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn invalid(field: &'static str, message: String) -> ProtoError {
    ProtoError::InvalidField { field, message }
}

/// A JSON field that the wire leaves empty when absent.
/// How deep JSON an agent sends (a tool call's arguments, an event's detail, an edge's
/// metadata) may nest. An event that holds it is stored a level or two deeper, and read back
/// (by `aasm audit verify`, among others) by a parser that stops at 128 levels: a record
/// nested past that would read as edited. Checked where the wire's JSON is parsed, so the
/// runtime refuses such a request from its agent and the gateway from its runtime alike.
pub const MAX_NESTING: usize = 64;

fn optional_json(
    field: &'static str,
    text: &str,
    levels: usize,
) -> Result<Option<serde_json::Value>, ProtoError> {
    if text.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| invalid(field, err.to_string()))?;
    if nests_deeper(&value, levels) {
        return Err(invalid(field, format!("nests deeper than {levels} levels")));
    }
    Ok(Some(value))
}

/// Whether a container lies deeper than `levels` more levels; the recursion is as deep as the
/// value, which its parser bounded.
fn nests_deeper(value: &serde_json::Value, levels: usize) -> bool {
    let within = |child| nests_deeper(child, levels - 1);
    match value {
        serde_json::Value::Array(items) => levels == 0 || items.iter().any(within),
        serde_json::Value::Object(map) => levels == 0 || map.values().any(within),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nested_past_the_limit_is_refused() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let parse = |text: &str| optional_json("detail_json", text, MAX_NESTING);
        assert!(parse(&nested(MAX_NESTING)).is_ok());
        assert!(parse(&format!("{{\"a\": {}}}", nested(MAX_NESTING - 1))).is_ok());
        let refused = parse(&nested(MAX_NESTING + 1)).unwrap_err().to_string();
        assert_eq!(
            refused,
            format!("invalid detail_json: nests deeper than {MAX_NESTING} levels")
        );
        assert!(parse(&format!("[1, {{\"a\": {}}}]", nested(MAX_NESTING))).is_err());
        assert!(parse("\"flat\"").is_ok());
        // A tool call's arguments too: a check's decision event holds them.
        let deep_args = pb::Action {
            kind: Some(pb::action::Kind::ToolCall(pb::ToolCall {
                tool: "t".into(),
                args_json: nested(MAX_NESTING + 1),
            })),
        };
        assert!(Action::try_from(deep_args).is_err());
    }

    /// The runtime records a reported edge whole as its event's detail, a level above the
    /// metadata: metadata as deep as the bound would make a detail the gateway refuses.
    #[test]
    fn an_edges_metadata_leaves_room_for_the_event_that_records_it() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let edge = |metadata_json: String| {
            TopologyEdge::try_from(pb::TopologyEdge {
                from_agent_id: "a".into(),
                to_agent_id: "b".into(),
                kind: pb::EdgeKind::Called as i32,
                metadata_json,
                ..pb::TopologyEdge::default()
            })
        };
        let refused = edge(nested(MAX_NESTING)).unwrap_err().to_string();
        assert!(refused.contains("edge.metadata_json"), "{refused}");
        let kept = edge(nested(MAX_NESTING - 1)).unwrap();
        let detail = serde_json::to_string(&kept).unwrap();
        assert!(optional_json("event.detail_json", &detail, MAX_NESTING).is_ok());
    }

    fn actions() -> Vec<Action> {
        [
            r#"{"type":"tool_call","tool":"shell","args":{"command":"ls","n":[1,2.5,null]}}"#,
            r#"{"type":"llm_call","model":"gpt-4o","token_estimate":1200}"#,
            r#"{"type":"network","host":"api.github.com","port":443,"method":"GET"}"#,
            r#"{"type":"file","operation":"delete","path":"/tmp/x"}"#,
            r#"{"type":"process_exec","command":"git","args":["status"]}"#,
            r#"{"type":"agent_spawn","child_id":"c1","reason":"research"}"#,
            r#"{"type":"agent_spawn"}"#,
        ]
        .iter()
        .map(|j| Action::from_json(j).unwrap())
        .collect()
    }

    #[test]
    fn a_registration_with_a_huge_field_is_refused_naming_it() {
        let request = |name: String, reason: String| pb::RegisterRequest {
            agent_id: "bot".into(),
            name,
            did_key: "did:key:z6Mk".into(),
            delegation_reason: reason,
            ..pb::RegisterRequest::default()
        };
        let short = "x".repeat(MAX_NAME_BYTES);
        assert!(AgentRegistration::try_from(request(short.clone(), "y".repeat(4096))).is_ok());
        let err =
            AgentRegistration::try_from(request("x".repeat(4 << 20), String::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid register.name: is 4194304 bytes long; at most 256"
        );
        let err = AgentRegistration::try_from(request(short, "y".repeat(MAX_REASON_BYTES + 1)))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid register.delegation_reason"),
            "{err}"
        );
    }

    #[test]
    fn every_action_round_trips() {
        for action in actions() {
            let wire = pb::Action::from(&action);
            assert_eq!(Action::try_from(wire).unwrap(), action);
        }
    }

    #[test]
    fn untrusted_actions_are_rejected_with_the_field_named() {
        let err = Action::try_from(pb::Action { kind: None }).unwrap_err();
        assert_eq!(err.to_string(), "missing field action.kind");
        let bad_json = pb::Action {
            kind: Some(pb::action::Kind::ToolCall(pb::ToolCall {
                tool: "t".into(),
                args_json: "{".into(),
            })),
        };
        assert!(
            Action::try_from(bad_json)
                .unwrap_err()
                .to_string()
                .starts_with("invalid action.tool_call.args_json")
        );
        let bad_port = pb::Action {
            kind: Some(pb::action::Kind::Network(pb::NetworkCall {
                host: "h".into(),
                port: Some(70000),
                method: String::new(),
            })),
        };
        assert!(
            Action::try_from(bad_port)
                .unwrap_err()
                .to_string()
                .contains("70000")
        );
        let bad_op = pb::Action {
            kind: Some(pb::action::Kind::File(pb::FileOperation {
                operation: 0,
                path: "/x".into(),
            })),
        };
        assert!(Action::try_from(bad_op).is_err());
    }

    #[test]
    fn unknown_decisions_fail_closed() {
        assert_eq!(decision_from_wire(0), Decision::Deny);
        assert_eq!(decision_from_wire(99), Decision::Deny);
        assert_eq!(
            decision_from_wire(pb::Decision::Allow.into()),
            Decision::Allow
        );
        assert_eq!(mode_from_wire(0), Mode::Enforce);
    }

    #[test]
    fn verdicts_and_events_round_trip() {
        let verdict = Verdict {
            decision: Decision::Pending,
            rule: "tools.shell.requires_approval_if".into(),
            reason: "sudo".into(),
            policy: "balanced@3".into(),
            mode: Mode::Observe,
        };
        let wire = decision_to_wire(&verdict, Some("ap-1"), Duration::from_micros(7));
        assert_eq!(wire.approval_id, "ap-1");
        assert_eq!(wire.evaluation_latency.unwrap().nanos, 7000);
        assert_eq!(Verdict::from(wire), verdict);

        let event = AuditEvent {
            event_id: "e1".into(),
            timestamp_ms: -1_500,
            agent: AgentContext {
                id: "bot".into(),
                team: Some("ops".into()),
                depth: 2,
                parent: Some("lead".into()),
            },
            session_id: Some("s".into()),
            action: actions().remove(0),
            verdict: Some(verdict),
            redactions: vec![RedactionReceipt {
                rule_id: "aws-access-key-id".into(),
                kind: "aws_access_key".into(),
                field: "action.args.command".into(),
                start: 3,
                end: 23,
                sha256_prefix: "abcd".into(),
            }],
            kind: EventKind::ToolEnd,
            detail: Some(serde_json::json!({"duration_ms": 12, "error": null})),
            origin: Some(Origin {
                stream_id: "rt-1".into(),
                sequence: 7,
                received_at_ms: 1_700_000_000_123,
                peer_uid: 1000,
                peer_pid: 4242,
            }),
        };
        let back = AuditEvent::try_from(pb::AuditEvent::from(&event)).unwrap();
        assert_eq!(back, event);

        // A time a client sends outside the years 1 to 9999 is refused, not saturated into
        // one that would not come back as it went.
        let mut wire = pb::AuditEvent::from(&event);
        for (seconds, nanos) in [(-(1 << 62), 0), (253_402_300_800, 0), (0, -1), (0, 1 << 30)] {
            wire.time = Some(prost_types::Timestamp { seconds, nanos });
            let e = AuditEvent::try_from(wire.clone()).unwrap_err().to_string();
            assert!(e.starts_with("invalid event.time: "), "{e}");
        }
        for ms in [-62_135_596_800_000, 253_402_300_799_999] {
            wire.time = Some(timestamp(ms));
            assert_eq!(AuditEvent::try_from(wire.clone()).unwrap().timestamp_ms, ms);
        }
    }

    #[test]
    fn registrations_carry_lineage_and_require_a_did_key() {
        let reg = AgentRegistration {
            agent_id: "child".into(),
            name: "Child".into(),
            framework: "langchain".into(),
            public_key: "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".into(),
            lineage: Lineage {
                parent_agent_id: Some("lead".into()),
                team_id: Some("ops".into()),
                delegation_reason: Some("split work".into()),
                spawned_by_tool: Some("spawn_agent".into()),
                depth: 1,
            },
        };
        let wire = pb::RegisterRequest::from(&reg);
        assert_eq!(AgentRegistration::try_from(wire.clone()).unwrap(), reg);
        let bad = pb::RegisterRequest {
            did_key: "zzz".into(),
            ..wire
        };
        assert!(
            AgentRegistration::try_from(bad)
                .unwrap_err()
                .to_string()
                .contains("did_key")
        );
    }

    #[test]
    fn edges_and_approvals_round_trip() {
        let edge = TopologyEdge {
            from_agent_id: "a".into(),
            to_agent_id: "b".into(),
            kind: EdgeKind::Delegated,
            tool: None,
            created_at_ms: 5,
            metadata: Some(serde_json::json!({"task": "triage"})),
        };
        assert_eq!(
            TopologyEdge::try_from(pb::TopologyEdge::from(&edge)).unwrap(),
            edge
        );
        let approval = Approval {
            approval_id: "ap".into(),
            agent: AgentContext::new("bot"),
            action: actions().remove(3),
            action_digest: "00".into(),
            rule: "r".into(),
            reason: "why".into(),
            status: ApprovalStatus::Approved,
            created_at_ms: 1,
            expires_at_ms: 2,
            decided_by: Some("alice".into()),
            comment: Some("ok".into()),
            decided_at_ms: Some(3),
            used_at_ms: Some(4),
            policy: "p@1".into(),
        };
        assert_eq!(
            Approval::try_from(pb::Approval::from(&approval)).unwrap(),
            approval
        );
    }
}
