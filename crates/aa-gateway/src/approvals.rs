//! Approvals: a `pending` decision becomes a durable request for a human, decided once by an
//! operator, bound to the digest of the action it was asked for, and released (used) at most
//! once. Every step is an audit event on the gateway's own stream.
//!
//! An approval past its expiry counts as expired whether or not anyone has recorded that; the
//! first read after the expiry (or the periodic sweep) records it.

use std::time::Duration;

use aa_core::{
    Action, Approval, ApprovalStatus, AuditEvent, Decision, EventKind, Mode, Origin,
    RedactionReceipt, Verdict,
};
use serde_json::json;
use tokio::sync::watch;

use crate::error::GatewayError;
use crate::gateway::{Gateway, bump, now_ms};
use crate::store::{NewEvent, Store};

/// The stream the gateway numbers its own events on; no runtime may append to it.
pub const GATEWAY_STREAM: &str = "gateway";

/// The longest an approval may wait.
pub const MAX_APPROVAL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A pending decision, as a runtime hands it over.
#[derive(Debug, Clone)]
pub struct NewApproval {
    /// The agent that asked, and its current token.
    pub agent_id: String,
    /// Its credential.
    pub credential_token: String,
    /// Chosen by the runtime (random), returned to the SDK with the decision.
    pub approval_id: String,
    /// The action, not yet redacted.
    pub action: Action,
    /// The runtime's keyed digest (HMAC-SHA-256, hex) of the canonical action before redaction.
    pub action_digest: String,
    /// The rule that asked for approval, and why.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// The deciding policy, `name@version`.
    pub policy: String,
    /// How long a human has.
    pub timeout: Duration,
}

fn valid_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a bearer token against those `accepted` that are configured; `what` names the token
/// in the errors. With none configured every call is refused.
fn authorize(
    authorization: Option<&str>,
    accepted: &[Option<&str>],
    what: &str,
) -> Result<(), GatewayError> {
    // An empty token configured is none: it would admit `Bearer ` with nothing after it.
    let accepted: Vec<&str> = accepted
        .iter()
        .flatten()
        .copied()
        .filter(|t| !t.is_empty())
        .collect();
    if accepted.is_empty() {
        return Err(GatewayError::Unauthenticated(format!(
            "this gateway has no {what} configured"
        )));
    }
    // The scheme is case-insensitive (RFC 7235): `bearer` and `BEARER` are `Bearer`.
    let presented = authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if accepted.iter().any(|a| aa_identity::same_secret(token, a)) => Ok(()),
        Some(_) => Err(GatewayError::Unauthenticated(format!("wrong {what}"))),
        None => Err(GatewayError::Unauthenticated(format!(
            "a {what} is required (authorization: Bearer <token>)"
        ))),
    }
}

fn valid_digest(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

impl<S: Store> Gateway<S> {
    /// Checks an operator's `authorization` header (or gRPC metadata): `Bearer <admin token>`.
    pub fn authorize_admin(&self, authorization: Option<&str>) -> Result<(), GatewayError> {
        authorize(
            authorization,
            &[self.config.admin_token.as_deref()],
            "admin token",
        )
    }

    /// Checks the `authorization` metadata of a runtime's gRPC call: `Bearer <runtime
    /// token>`, or the admin token, as an operator's call carries.
    pub fn authorize_runtime(&self, authorization: Option<&str>) -> Result<(), GatewayError> {
        authorize(
            authorization,
            &[
                self.config.runtime_token.as_deref(),
                self.config.admin_token.as_deref(),
            ],
            "runtime token",
        )
    }

    /// Follows approval changes: the value moves on every change.
    pub fn approval_changes(&self) -> watch::Receiver<u64> {
        self.approval_epoch.subscribe()
    }

    fn approvals_changed(&self) {
        self.approval_epoch
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// Records a pending decision as an approval. Creating the same id again (a runtime's
    /// retry) returns the approval as it stands.
    pub async fn create_approval(&self, new: NewApproval) -> Result<Approval, GatewayError> {
        let agent = self
            .authenticate(&new.agent_id, &new.credential_token)
            .await?;
        self.ensure_running(&agent).await?;
        if !valid_id(&new.approval_id) {
            return Err(GatewayError::InvalidRequest(
                "approval_id must be 16 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        if !valid_digest(&new.action_digest) {
            return Err(GatewayError::InvalidRequest(
                "action_digest must be 64 hex digits (HMAC-SHA-256)".into(),
            ));
        }
        if new.timeout.is_zero() || new.timeout > MAX_APPROVAL_TIMEOUT {
            return Err(GatewayError::InvalidRequest(format!(
                "timeout must be between 1 ms and {} s",
                MAX_APPROVAL_TIMEOUT.as_secs()
            )));
        }
        if let Some(existing) = self.store.approval(&new.approval_id).await? {
            if existing.agent.id != new.agent_id {
                return Err(GatewayError::Conflict(format!(
                    "approval {} belongs to another agent",
                    new.approval_id
                )));
            }
            return self.expire_if_due(existing).await;
        }
        let (action, mut receipts) = self.redacted(&new.action)?;
        // The reason may quote the action (a tool's or model's name, an argument): it is
        // stored and shown to operators, so it is redacted like the action.
        let (reason, reason_receipts) = self.redacted_text(&new.reason, "verdict.reason");
        receipts.extend(reason_receipts);
        let created = now_ms();
        let timeout_ms = i64::try_from(new.timeout.as_millis()).unwrap_or(i64::MAX);
        let approval = Approval {
            approval_id: new.approval_id,
            agent: agent.context(),
            action,
            action_digest: new.action_digest.to_ascii_lowercase(),
            rule: new.rule,
            reason,
            status: ApprovalStatus::Pending,
            created_at_ms: created,
            expires_at_ms: created.saturating_add(timeout_ms),
            decided_by: None,
            comment: None,
            decided_at_ms: None,
            used_at_ms: None,
            policy: new.policy,
        };
        let in_order = self.approval_steps.lock().await;
        let (turn, step) = self
            .own_event(approval_event(&approval, "requested", receipts))
            .await?;
        if !self.store.insert_approval(approval.clone(), step).await? {
            // A concurrent retry created it first. Reading it may expire it, which takes the
            // locks again.
            drop((turn, in_order));
            return self.approval(&approval.approval_id).await;
        }
        self.own_written();
        self.approvals_changed();
        Ok(approval)
    }

    fn redacted(&self, action: &Action) -> Result<(Action, Vec<RedactionReceipt>), GatewayError> {
        let mut value = serde_json::to_value(action)
            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        let mut receipts = self.scanner().redact_json(&mut value, &self.config.limits);
        for receipt in &mut receipts {
            receipt.field = format!("action.{}", receipt.field);
        }
        let action =
            Action::from_value(value).map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        Ok((action, receipts))
    }

    /// One approval, its expiry recorded if it is due.
    pub async fn approval(&self, approval_id: &str) -> Result<Approval, GatewayError> {
        let approval = self
            .store
            .approval(approval_id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(format!("no approval {approval_id:?}")))?;
        self.expire_if_due(approval).await
    }

    /// Approvals, newest first, only those with `status` when given.
    pub async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<Approval>, GatewayError> {
        let mut out = Vec::new();
        for approval in self.store.approvals().await? {
            let approval = self.expire_if_due(approval).await?;
            if status.is_none_or(|s| s == approval.status) {
                out.push(approval);
            }
        }
        Ok(out)
    }

    /// Records the expiry of every pending approval past its time; returns how many.
    pub async fn expire_approvals(&self) -> Result<usize, GatewayError> {
        let now = now_ms();
        let mut expired = 0;
        for approval in self.store.pending_approvals().await? {
            if approval.status_at(now) != approval.status {
                self.expire_if_due(approval).await?;
                expired += 1;
            }
        }
        Ok(expired)
    }

    async fn expire_if_due(&self, approval: Approval) -> Result<Approval, GatewayError> {
        let now = now_ms();
        if approval.status_at(now) == approval.status {
            return Ok(approval);
        }
        let expired = Approval {
            status: ApprovalStatus::Expired,
            decided_at_ms: Some(approval.expires_at_ms),
            ..approval
        };
        let in_order = self.approval_steps.lock().await;
        let (turn, step) = self
            .own_event(approval_event(&expired, "expired", Vec::new()))
            .await?;
        if self
            .store
            .update_approval(expired.clone(), ApprovalStatus::Pending, step)
            .await?
        {
            self.own_written();
            self.approvals_changed();
            return Ok(expired);
        }
        drop((turn, in_order));
        // Someone else moved it first: read what they wrote.
        self.store
            .approval(&expired.approval_id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(format!("no approval {:?}", expired.approval_id)))
    }

    /// An operator's decision. Only a pending approval can be decided, and only once.
    pub async fn decide_approval(
        &self,
        approval_id: &str,
        approve: bool,
        decided_by: &str,
        comment: Option<String>,
    ) -> Result<Approval, GatewayError> {
        let current = self.approval(approval_id).await?;
        if current.status != ApprovalStatus::Pending {
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} is already {}",
                ApprovalStatus::as_str(current.status)
            )));
        }
        // Both are kept and shown as the operator gave them, so what reads as a secret in
        // them is redacted first, as the event recording them would be.
        let decided_by = match decided_by.trim() {
            "" => "operator",
            given => given,
        };
        let (decided_by, mut receipts) = self.redacted_text(decided_by, "detail.decided_by");
        let comment = match comment.filter(|c| !c.trim().is_empty()) {
            Some(comment) => {
                let (comment, comment_receipts) = self.redacted_text(&comment, "detail.comment");
                receipts.extend(comment_receipts);
                Some(comment)
            }
            None => None,
        };
        let decided = Approval {
            status: if approve {
                ApprovalStatus::Approved
            } else {
                ApprovalStatus::Denied
            },
            decided_by: Some(decided_by),
            comment,
            decided_at_ms: Some(now_ms()),
            ..current
        };
        let in_order = self.approval_steps.lock().await;
        let name = if approve { "approved" } else { "denied" };
        let (turn, step) = self
            .own_event(approval_event(&decided, name, receipts))
            .await?;
        if !self
            .store
            .update_approval(decided.clone(), ApprovalStatus::Pending, step)
            .await?
        {
            drop((turn, in_order));
            let now = self.approval(approval_id).await?;
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} is already {}",
                ApprovalStatus::as_str(now.status)
            )));
        }
        self.own_written();
        self.approvals_changed();
        Ok(decided)
    }

    /// Releases an approved action: once, for the agent that asked and the action it asked
    /// for. The runtime calls this just before it answers the waiting SDK with allow.
    pub async fn redeem_approval(
        &self,
        agent_id: &str,
        credential_token: &str,
        approval_id: &str,
        action_digest: &str,
    ) -> Result<Approval, GatewayError> {
        let agent = self.authenticate(agent_id, credential_token).await?;
        self.ensure_running(&agent).await?;
        let current = self.approval(approval_id).await?;
        if current.agent.id != agent_id {
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} belongs to another agent"
            )));
        }
        if current.status != ApprovalStatus::Approved {
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} is {}",
                ApprovalStatus::as_str(current.status)
            )));
        }
        if current.used_at_ms.is_some() {
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} was used already"
            )));
        }
        if !action_digest.eq_ignore_ascii_case(&current.action_digest) {
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} was granted for another action"
            )));
        }
        let used = Approval {
            used_at_ms: Some(now_ms()),
            ..current
        };
        let _in_order = self.approval_steps.lock().await;
        let (_turn, step) = self
            .own_event(approval_event(&used, "used", Vec::new()))
            .await?;
        if !self
            .store
            .update_approval(used.clone(), ApprovalStatus::Approved, step)
            .await?
        {
            return Err(GatewayError::Conflict(format!(
                "approval {approval_id} was used already"
            )));
        }
        self.own_written();
        self.approvals_changed();
        Ok(used)
    }

    /// Appends an event the gateway itself made, numbering its stream; scanned like any other.
    pub(crate) async fn record_own(&self, event: AuditEvent) -> Result<(), GatewayError> {
        let (_turn, step) = self.own_event(event).await?;
        self.append_run(GATEWAY_STREAM, vec![step])
            .await
            .map(|_| ())
    }

    /// `event` scanned and numbered after the head of the gateway's own stream, to be written
    /// with the change it records, in one transaction (a crash between two writes would keep
    /// the change and lose its record). The stream is the caller's until it drops the guard.
    pub(crate) async fn own_event(
        &self,
        mut event: AuditEvent,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, NewEvent), GatewayError> {
        self.backstop(&mut event)?;
        let turn = self.own_stream.lock().await;
        let head = self
            .store
            .heads()
            .await?
            .into_iter()
            .find(|h| h.stream_id == GATEWAY_STREAM)
            .map_or(0, |h| h.sequence);
        event.origin = Some(Origin {
            stream_id: GATEWAY_STREAM.to_owned(),
            sequence: head + 1,
            received_at_ms: now_ms(),
            peer_uid: 0,
            peer_pid: 0,
        });
        let value = serde_json::to_value(&event)
            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        Ok((turn, NewEvent::new(event.event_id, head + 1, &value)))
    }

    /// Counts an event [`own_event`](Self::own_event) made as written.
    pub(crate) fn own_written(&self) {
        bump(&self.metrics.events_appended, 1);
    }
}

/// One step of an approval, as the gateway's own stream records it.
fn approval_event(
    approval: &Approval,
    step: &str,
    redactions: Vec<RedactionReceipt>,
) -> AuditEvent {
    let decision = match approval.status {
        ApprovalStatus::Pending => Decision::Pending,
        ApprovalStatus::Approved => Decision::Allow,
        ApprovalStatus::Denied | ApprovalStatus::Expired => Decision::Deny,
    };
    AuditEvent {
        event_id: format!("{GATEWAY_STREAM}/approval/{}/{step}", approval.approval_id),
        timestamp_ms: now_ms(),
        agent: approval.agent.clone(),
        session_id: None,
        action: approval.action.clone(),
        verdict: Some(Verdict {
            decision,
            rule: approval.rule.clone(),
            reason: approval.reason.clone(),
            policy: approval.policy.clone(),
            mode: Mode::Enforce,
        }),
        redactions,
        kind: EventKind::Approval,
        detail: Some(json!({
            "approval_id": approval.approval_id,
            "step": step,
            "status": ApprovalStatus::as_str(approval.status),
            "action_digest": approval.action_digest,
            "expires_at_ms": approval.expires_at_ms,
            "decided_by": approval.decided_by,
            "comment": approval.comment,
        })),
        origin: None,
    }
}
