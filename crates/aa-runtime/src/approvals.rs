//! Pending decisions on this runtime. Each becomes an approval at the gateway, created in the
//! background so the check itself stays free of IO; an SDK waiting on one is answered when a
//! human decides, when the approval expires, or at the SDK's timeout — whichever is first.
//!
//! An entry is taken out of the table by the first wait on it, so one pending decision
//! releases at most one action here; the gateway's redeem makes that hold across runtimes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aa_core::{Action, AgentContext, Verdict};
use aa_proto::pb;
use tokio::sync::watch;

use crate::link::{BACKOFF_MAX, BACKOFF_START, GatewayLink};
use crate::memory::{Budget, Charge, held_bytes};
use crate::runtime::Refusal;

/// Pending decisions kept at most; past it, a pending decision is denied.
const MAX_PENDING: usize = 10_000;

/// What one agent's pending decisions may take of the table, in number and in bytes (but
/// its first, which the table's budget bounds), so that one agent asking again and again
/// does not leave the others none.
const MAX_PENDING_PER_AGENT: usize = MAX_PENDING / 10;
const MAX_PENDING_BYTES_PER_AGENT: usize = MAX_PENDING_BYTES / 8;

/// Memory the actions of pending decisions may take in all, as [`held_bytes`] estimates it;
/// past it, a pending decision is denied. A count alone let an agent hold gigabytes: a check
/// of a few megabytes of arguments asking for approval, sent again and again, each kept for
/// the approval's lifetime.
const MAX_PENDING_BYTES: usize = 64 << 20;

/// Whether the gateway has the approval yet: `None` while creating, then the outcome.
pub(crate) type Created = Option<Result<(), String>>;

/// One pending decision.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) agent: AgentContext,
    pub(crate) action: Action,
    pub(crate) digest: String,
    pub(crate) verdict: Verdict,
    pub(crate) expires: Instant,
    pub(crate) created: watch::Receiver<Created>,
    /// Its part of the table's memory budget, shared with the task creating its approval:
    /// held, never read.
    pub(crate) _charge: Arc<Charge>,
}

/// The table of pending decisions by approval id.
#[derive(Debug)]
pub(crate) struct PendingTable {
    entries: Mutex<HashMap<String, Pending>>,
    /// What their actions hold. A pending decision's part is given back when the last of its
    /// holders lets go: the entry, and the task creating its approval at the gateway, which
    /// holds its own copy of the action while it retries (until the approval would expire).
    budget: Budget,
}

impl Default for PendingTable {
    fn default() -> PendingTable {
        PendingTable {
            entries: Mutex::default(),
            budget: Budget::new(MAX_PENDING_BYTES),
        }
    }
}

impl PendingTable {
    /// The budget's part for a pending decision on `action`, held twice (its entry and its
    /// approval's creation); refused when the budget would be passed even with the expired
    /// entries gone.
    pub(crate) fn charge(&self, action: &Action) -> Result<Arc<Charge>, String> {
        let bytes = held_bytes(action).saturating_mul(2);
        let charge = match self.budget.take(bytes) {
            Some(charge) => charge,
            None => {
                self.drop_expired()?;
                self.budget.take(bytes).ok_or_else(|| {
                    format!(
                        "the approvals waiting on this runtime would hold more than {} MiB",
                        self.budget.max_mib()
                    )
                })?
            }
        };
        Ok(Arc::new(charge))
    }

    fn drop_expired(&self) -> Result<(), String> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| "pending table poisoned".to_owned())?;
        let now = Instant::now();
        entries.retain(|_, p| p.expires > now);
        Ok(())
    }

    /// Adds an entry; refused when the table is full of live entries, or its agent holds
    /// its share of them already.
    pub(crate) fn insert(&self, approval_id: String, pending: Pending) -> Result<(), String> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| "pending table poisoned".to_owned())?;
        let now = Instant::now();
        let (count, bytes) = entries
            .values()
            .filter(|p| p.agent.id == pending.agent.id && p.expires > now)
            .fold((0, 0), |(n, b), p| (n + 1, b + p._charge.bytes()));
        // An agent's first fits whatever its size: the table's budget bounds that.
        if count >= MAX_PENDING_PER_AGENT
            || (count > 0 && bytes + pending._charge.bytes() > MAX_PENDING_BYTES_PER_AGENT)
        {
            return Err(format!(
                "this agent has {count} approvals waiting on this runtime already, holding \
                 {} MiB; an agent may have {MAX_PENDING_PER_AGENT}, holding {} MiB",
                bytes >> 20,
                MAX_PENDING_BYTES_PER_AGENT >> 20
            ));
        }
        if entries.len() >= MAX_PENDING {
            entries.retain(|_, p| p.expires > now);
            if entries.len() >= MAX_PENDING {
                return Err(format!(
                    "{MAX_PENDING} approvals are waiting on this runtime already"
                ));
            }
        }
        entries.insert(approval_id, pending);
        Ok(())
    }

    /// The pending approval `approval_id` of `agent_id`, taken out: the first wait for it
    /// gets it. Another agent's wait for the id leaves it where it is.
    pub(crate) fn take(&self, approval_id: &str, agent_id: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().ok()?;
        if entries.get(approval_id)?.agent.id != agent_id {
            return None;
        }
        entries.remove(approval_id)
    }
}

/// Creates the approval at the gateway, retrying while the gateway is away, until it expires.
/// `_charge` keeps the action's part of the budget while the request holds it.
pub(crate) async fn create(
    link: GatewayLink,
    request: pb::CreateApprovalRequest,
    expires: Instant,
    done: watch::Sender<Created>,
    _charge: Arc<Charge>,
) {
    let mut backoff = BACKOFF_START;
    let outcome = loop {
        match link.create_approval(request.clone()).await {
            Ok(_) => break Ok(()),
            Err(refusal) if refusal.code == pb::ErrorCode::Unavailable => {
                if Instant::now() + backoff >= expires {
                    break Err(refusal.message);
                }
                tracing::warn!(message = %refusal.message, "approval not created yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(refusal) => break Err(refusal.message),
        }
    };
    if let Err(message) = &outcome {
        tracing::error!(approval = %request.approval_id, %message, "approval not created");
    }
    done.send_replace(Some(outcome));
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// A human approved: who, and why.
    Approved { by: String, comment: String },
    /// A human refused.
    Denied { by: String, comment: String },
    /// The approval expired at the gateway.
    Expired,
    /// `deadline` passed first.
    TimedOut,
    /// The approval could not be created or followed.
    Failed(String),
}

/// Waits until the approval is decided or `deadline`, following the gateway's watch stream
/// and re-opening it when it breaks (a gateway restart).
pub(crate) async fn resolve(
    link: &GatewayLink,
    approval_id: &str,
    mut created: watch::Receiver<Created>,
    deadline: tokio::time::Instant,
) -> Resolution {
    let ready = tokio::time::timeout_at(deadline, created.wait_for(Option::is_some))
        .await
        .map(|state| state.map(|s| s.clone()));
    match ready {
        Err(_) => return Resolution::TimedOut,
        Ok(Err(_)) => return Resolution::Failed("the approval was never created".into()),
        Ok(Ok(Some(Err(message)))) => {
            return Resolution::Failed(format!(
                "the gateway did not record the approval: {message}"
            ));
        }
        Ok(Ok(_)) => {}
    }
    let mut backoff = BACKOFF_START;
    loop {
        let followed = tokio::time::timeout_at(deadline, follow(link, approval_id)).await;
        match followed {
            Err(_) => return Resolution::TimedOut,
            Ok(Ok(resolution)) => return resolution,
            Ok(Err(refusal)) if refusal.code != pb::ErrorCode::Unavailable => {
                return Resolution::Failed(refusal.message);
            }
            Ok(Err(refusal)) => {
                tracing::warn!(message = %refusal.message, "approval watch broke; re-opening");
            }
        }
        if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
            .await
            .is_err()
        {
            return Resolution::TimedOut;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One watch stream to its end: the resolution, or why the stream broke.
async fn follow(link: &GatewayLink, approval_id: &str) -> Result<Resolution, Refusal> {
    let mut stream = link.watch_approval(approval_id).await?;
    loop {
        let message = stream.message().await.map_err(|s| Refusal {
            code: pb::ErrorCode::Unavailable,
            message: format!("gateway unavailable: {}", s.message()),
        })?;
        let Some(approval) = message else {
            return Err(Refusal {
                code: pb::ErrorCode::Unavailable,
                message: "the approval watch ended before a decision".into(),
            });
        };
        let (by, comment) = (approval.decided_by.clone(), approval.comment.clone());
        match pb::ApprovalStatus::try_from(approval.status) {
            Ok(pb::ApprovalStatus::Approved) => return Ok(Resolution::Approved { by, comment }),
            Ok(pb::ApprovalStatus::Denied) => return Ok(Resolution::Denied { by, comment }),
            Ok(pb::ApprovalStatus::Expired) => return Ok(Resolution::Expired),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use aa_core::{Decision, Mode};

    use super::*;

    fn pending(agent: &str) -> Pending {
        let charge = PendingTable::default()
            .charge(&Action::File {
                operation: aa_core::FileOperation::Read,
                path: "/a".into(),
            })
            .unwrap();
        Pending {
            _charge: charge,
            agent: AgentContext::new(agent),
            action: Action::ToolCall {
                tool: "shell".into(),
                args: serde_json::json!({}),
            },
            digest: "d".into(),
            verdict: Verdict {
                decision: Decision::Pending,
                rule: "r".into(),
                reason: String::new(),
                policy: String::new(),
                mode: Mode::Enforce,
            },
            expires: Instant::now() + std::time::Duration::from_secs(60),
            created: watch::channel(None).1,
        }
    }

    #[test]
    fn only_the_agent_that_asked_takes_its_pending_approval_once() {
        let table = PendingTable::default();
        table.insert("a-1".into(), pending("bot")).unwrap();
        assert!(table.take("a-1", "intruder").is_none());
        assert!(table.take("a-1", "bot").is_some(), "another's wait took it");
        assert!(table.take("a-1", "bot").is_none());
    }

    /// One agent's pending decisions take a tenth of the table's places and an eighth of its
    /// bytes at most; other agents' still fit, and expired ones do not count.
    #[test]
    fn one_agent_takes_only_its_share_of_the_table() {
        let table = PendingTable::default();
        for n in 0..MAX_PENDING_PER_AGENT {
            table.insert(format!("a-{n}"), pending("bot")).unwrap();
        }
        let refused = table.insert("a-x".into(), pending("bot")).unwrap_err();
        assert!(refused.contains("1000 approvals waiting"), "{refused}");
        table.insert("b-1".into(), pending("other")).unwrap();
        let mut expired = pending("other");
        expired.expires = Instant::now() - std::time::Duration::from_secs(1);
        table.insert("b-2".into(), expired).unwrap();

        // About 6 MiB a charge (50,000 values of 64 bytes, held twice): a second would pass
        // an agent's 8 MiB of the 64.
        let big = crate::memory::tests::wide(50_000);
        let mut first = pending("third");
        first._charge = table.charge(&big).unwrap();
        table.insert("c-1".into(), first).unwrap();
        let mut second = pending("third");
        second._charge = table.charge(&big).unwrap();
        let refused = table.insert("c-2".into(), second).unwrap_err();
        assert!(refused.contains("holding 6 MiB"), "{refused}");
        let mut elsewhere = pending("fourth");
        elsewhere._charge = table.charge(&big).unwrap();
        table.insert("d-1".into(), elsewhere).unwrap();
    }

    /// Pending actions share one memory budget, an action's part held until the last of its
    /// holders (the entry, the creation of its approval) lets go, or its entry expires.
    #[test]
    fn pending_actions_share_a_memory_budget() {
        let table = PendingTable::default();
        // About 12 MiB a charge (100,000 values of 64 bytes, held twice): five fit in 64 MiB.
        let big = crate::memory::tests::wide(100_000);
        let mut charges: Vec<Arc<Charge>> = (0..5).map(|_| table.charge(&big).unwrap()).collect();
        let refused = table.charge(&big).unwrap_err();
        assert!(refused.contains("more than 64 MiB"), "{refused}");
        let creating = Arc::clone(&charges[0]);
        charges.remove(0);
        assert!(
            table.charge(&big).is_err(),
            "its approval's creation holds it still"
        );
        drop(creating);
        charges.push(table.charge(&big).unwrap());

        // Charges held only by expired entries are given back when the budget is short.
        for (n, charge) in charges.drain(..).enumerate() {
            let mut entry = pending("bot");
            entry._charge = charge;
            entry.expires = Instant::now() - std::time::Duration::from_secs(1);
            table.insert(format!("a-{n}"), entry).unwrap();
        }
        assert!(table.charge(&big).is_ok());
    }
}
