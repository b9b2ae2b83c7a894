//! The runtime's logic, independent of the socket: authenticate the caller, decide checks
//! from the local bundle, count rate limits, forward lifecycle calls to the gateway, and turn
//! what the SDK reports into trusted, redacted, numbered events in the outbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aa_core::{
    Action, AgentContext, AuditEvent, Decision, EventKind, Mode, Origin, RedactionReceipt,
    Suspension, Suspensions, TopologyEdge, Verdict, suspension_of,
};
use aa_policy::Request;
use aa_proto::convert::decision_to_wire;
use aa_proto::pb;
use aa_proto::pb::ErrorCode;
use aa_security::ReceiptKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::approvals::{self, Pending, PendingTable, Resolution};
use crate::bundle::Compiled;
use crate::config::RuntimeConfig;
use crate::error::RuntimeError;
use crate::limits::RateCounter;
use crate::link::GatewayLink;
use crate::memory::{Budget, Charge, RequestCharge, event_bytes, held_bytes};
use crate::outbox::Outbox;
use crate::pipeline::{CurrentScanner, Job, Jobs, OutboxHealth};

/// The connecting process, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its uid.
    pub uid: u32,
    /// Its pid (0 when unknown).
    pub pid: i32,
}

/// A refused call: the code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The wire error code.
    pub code: ErrorCode,
    /// For humans; no internals.
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// What a check came to before any call to the gateway.
#[derive(Debug)]
pub struct Decided {
    verdict: Verdict,
    /// The agent and action to record the decision under (none for a malformed request).
    agent: Option<AgentContext>,
    action: Option<Action>,
    /// Refused for its credential: the agent is only the one it claimed to be, and is
    /// recorded as a refusal is ([`Runtime::record_unauthenticated`]).
    unauthenticated: bool,
    /// Team-wide limits the gateway must count before an allow stands.
    team_limits: Vec<pb::TeamLimit>,
    /// The LLM call's cost to reserve at the gateway before an allow stands.
    budget: Option<pb::ReserveBudgetRequest>,
    /// What the decision event records beyond the verdict.
    detail: serde_json::Map<String, serde_json::Value>,
}

/// A check answered at once, or one that needs the gateway first.
#[derive(Debug)]
pub enum Checked {
    /// The answer.
    Done(pb::CheckResponse),
    /// Finish it with [`Runtime::finish`].
    Gateway(Box<GatewayCheck>),
}

/// A check waiting for the gateway: team-wide rate limits to count, or an LLM call's cost to
/// reserve against budgets.
#[derive(Debug)]
pub struct GatewayCheck {
    request: pb::CheckRequest,
    decided: Decided,
    peer: Peer,
    started: Instant,
}

/// How long a check waits for room in the outbox writer's queue before its decision goes
/// unrecorded (and so, under `enforce`, denied): long enough for the writer to drain a full
/// queue, so a burst is slowed to the pace the outbox takes rather than refused.
const RECORD_WAIT: Duration = Duration::from_secs(1);

/// Memory the actions of decisions waiting for the outbox's writer may hold in all, as
/// [`held_bytes`] estimates it; past it a decision is not recorded (and so, under `enforce`,
/// denied). Thousands of ordinary decisions hold a few megabytes.
const MAX_QUEUED_DECISION_BYTES: usize = 64 << 20;

/// The same for the decisions of checks refused for their credential, which may be written
/// only [`REFUSALS_PER_SECOND`] a second anyway.
const MAX_QUEUED_UNAUTHENTICATED_BYTES: usize = 8 << 20;

/// The longest event id of an agent's kept as it is; a longer one is kept as its digest.
const MAX_SUPPLIED_ID: usize = 256;

/// An id an agent supplied for an event, in that agent's namespace of the stream.
struct SuppliedId {
    /// What the event is kept under: the id, or its digest (see [`Runtime::supplied_id`]).
    kept: String,
    /// What the scanner found in it.
    receipts: Vec<RedactionReceipt>,
    /// The id as it came, in the namespace, when it is kept as its digest although short
    /// enough to be kept as it is: a bundle published since its first sending may have made
    /// it read as a secret, and the outbox looks for the event under this too (see
    /// [`Outbox::append`]). Only a query's parameter, never stored.
    alias: Option<String>,
}

/// Room for one decision's event in the outbox writer's queue, taken before the check is
/// decided ([`Runtime::decision_slot`]); empty when none came in time.
#[derive(Debug)]
pub struct DecisionSlot(Option<mpsc::OwnedPermit<Job>>);

/// The answer to a decision that could not be recorded, for `why`: under `enforce` an allow
/// becomes a deny, rather than an action off the record.
fn unrecorded(answer: Verdict, why: &str) -> Verdict {
    tracing::error!(reason = %why, decision = answer.decision.as_str(), "a decision could not be recorded");
    if answer.decision == Decision::Allow && answer.mode == Mode::Enforce {
        Verdict {
            decision: Decision::Deny,
            rule: "audit".into(),
            reason: format!("{why}: denied rather than left off the record"),
            ..answer
        }
    } else {
        answer
    }
}

/// The verdict to apply: under `observe` a refusal is recorded, and allowed.
fn applied(verdict: &Verdict) -> Verdict {
    if verdict.mode == Mode::Observe && verdict.decision != Decision::Allow {
        Verdict {
            decision: Decision::Allow,
            reason: format!(
                "observe mode: would have been {}: {}",
                verdict.decision.as_str(),
                verdict.reason
            ),
            ..verdict.clone()
        }
    } else {
        verdict.clone()
    }
}

/// What an LLM call reserves at the gateway while any policy sets a budget; `None` for any
/// other action, or with no budget anywhere.
fn budget_request(
    bundle: &Compiled,
    request: &pb::CheckRequest,
    action: &Action,
    mode: Mode,
) -> Option<pb::ReserveBudgetRequest> {
    match action {
        Action::LlmCall {
            model,
            token_estimate,
        } if bundle.set.has_budgets() => Some(pb::ReserveBudgetRequest {
            agent_id: request.agent_id.clone(),
            credential_token: request.credential_token.clone(),
            model: model.clone(),
            token_estimate: *token_estimate,
            enforce: mode == Mode::Enforce,
        }),
        _ => None,
    }
}

/// A registered agent as this runtime serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    agent: AgentContext,
    /// The registry's chain above the agent, the root first: their policies bound the agent's.
    #[serde(default)]
    ancestors: Vec<AgentContext>,
    token: String,
    expires_at_ms: i64,
    uid: u32,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The runtime's shared state.
#[derive(Debug)]
pub struct Runtime {
    config: RuntimeConfig,
    bundle: RwLock<Option<Arc<Compiled>>>,
    sessions: RwLock<HashMap<String, Session>>,
    /// Held by a session's write to the database and to memory together: two of one agent
    /// (a registration and a heartbeat) must land in both in the same order.
    session_writes: tokio::sync::Mutex<()>,
    /// The ids of the tokens the gateway last said it revoked: a session holding one is not
    /// stored, even when a heartbeat or registration answered before the revocation came.
    revoked: RwLock<HashSet<String>>,
    /// `None` when the set is not known: the saved one was unreadable and the gateway's has
    /// not arrived. Everyone is then stopped.
    suspensions: RwLock<Option<Arc<Suspensions>>>,
    rates: RateCounter,
    pending: PendingTable,
    /// What the decisions queued for the outbox's writer hold, bounded: a count alone let an
    /// agent's checks of megabytes of arguments queue gigabytes.
    queued_decisions: Budget,
    /// The same for checks refused for their credential, apart.
    unauthenticated_decisions: Budget,
    outbox: Arc<Outbox>,
    jobs: Jobs,
    outbox_health: Arc<OutboxHealth>,
    /// The outbox writer's scanner, the bundle's once one is in force.
    scanner: Arc<CurrentScanner>,
    refusals: RefusalBudget,
    link: GatewayLink,
    /// Ids for the events the runtime writes itself (decisions, refusals).
    event_ids: EventIds,
}

/// Refusals written to the audit log each second at most: each costs the refused peer only a
/// connection, and a flood of them must not become a flood of disk writes.
const REFUSALS_PER_SECOND: u32 = 100;

/// How many refusals this second has written, and how many went unwritten since the last
/// one written (which says so).
#[derive(Debug, Default)]
struct RefusalBudget {
    state: std::sync::Mutex<(i64, u32, u64)>,
}

impl RefusalBudget {
    /// `Some(refusals left unwritten before this one)` if this one may be written.
    fn take(&self, now_ms: i64) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let (second, written, unwritten) = &mut *state;
        if *second != now_ms / 1000 {
            (*second, *written) = (now_ms / 1000, 0);
        }
        if *written < REFUSALS_PER_SECOND {
            *written += 1;
            Some(std::mem::take(unwritten))
        } else {
            *unwritten += 1;
            None
        }
    }

    /// Counts a refusal that goes unwritten for want of room, not of time.
    fn missed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.2 += 1;
        }
    }
}

impl Runtime {
    /// What an approval is bound to: the action's canonical JSON, keyed as receipts are
    /// ([`ReceiptKey`], from the runtime token). The gateway stores it beside the redacted
    /// action, where a plain SHA-256 would let anyone reading it try the values a redacted
    /// SSN or card number can take.
    fn action_digest(&self, action: &Action) -> String {
        ReceiptKey::derive(self.config.gateway_token.as_bytes()).mac(&action.canonical_bytes())
    }

    pub(crate) fn new(
        config: RuntimeConfig,
        outbox: Arc<Outbox>,
        jobs: Jobs,
        outbox_health: Arc<OutboxHealth>,
        scanner: Arc<CurrentScanner>,
        link: GatewayLink,
    ) -> Result<Runtime, RuntimeError> {
        let mut sessions = HashMap::new();
        for json in outbox.sessions()? {
            let session: Session = serde_json::from_str(&json)
                .map_err(|e| RuntimeError::Outbox(format!("unreadable session: {e}")))?;
            sessions.insert(session.agent.id.clone(), session);
        }
        Ok(Runtime {
            config,
            bundle: RwLock::new(None),
            sessions: RwLock::new(sessions),
            session_writes: tokio::sync::Mutex::new(()),
            revoked: RwLock::default(),
            suspensions: RwLock::new(Some(Arc::default())),
            rates: RateCounter::default(),
            pending: PendingTable::default(),
            queued_decisions: Budget::new(MAX_QUEUED_DECISION_BYTES),
            unauthenticated_decisions: Budget::new(MAX_QUEUED_UNAUTHENTICATED_BYTES),
            outbox,
            jobs,
            outbox_health,
            scanner,
            refusals: RefusalBudget::default(),
            link,
            event_ids: EventIds::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The built-in rules, which a bundle's scanner adds its custom patterns to.
    pub(crate) fn built_in_scanner(&self) -> &Arc<aa_security::Scanner> {
        self.scanner.built_in()
    }

    /// The bundle in force, if any.
    pub fn bundle(&self) -> Option<Arc<Compiled>> {
        self.bundle.read().ok().and_then(|b| b.clone())
    }

    pub(crate) fn set_bundle(&self, compiled: Compiled) {
        self.scanner.set(Arc::clone(&compiled.scanner));
        if let Ok(mut slot) = self.bundle.write() {
            *slot = Some(Arc::new(compiled));
        }
    }

    /// Replaces the suspensions in force with the gateway's latest set.
    pub(crate) fn set_suspensions(&self, list: Vec<Suspension>) {
        let set: Suspensions = list.into_iter().map(|s| (s.agent_id.clone(), s)).collect();
        if let Ok(mut slot) = self.suspensions.write() {
            *slot = Some(Arc::new(set));
        }
    }

    /// Stops every agent until the gateway's set of suspensions arrives: the saved set could
    /// not be read, and the kill switch must not fail open.
    pub(crate) fn forget_suspensions(&self) {
        if let Ok(mut slot) = self.suspensions.write() {
            *slot = None;
        }
    }

    /// Ends the sessions whose token the gateway revoked before its expiry (`(agent id,
    /// token id)` pairs): superseded by a registration through another runtime, or
    /// deregistered. Their agents must register again here.
    pub(crate) fn drop_revoked(&self, revoked: &[(String, String)]) {
        // Known before the sessions are looked at: a session stored meanwhile is either seen
        // below or refused by `store_session`.
        if let Ok(mut known) = self.revoked.write() {
            *known = revoked.iter().map(|(_, token)| token.clone()).collect();
        }
        // Checked and removed under one lock: a registration storing a new session
        // meanwhile is never the one removed.
        let ended: Vec<Session> = {
            let Ok(mut sessions) = self.sessions.write() else {
                return;
            };
            revoked
                .iter()
                .filter_map(|(agent_id, token_id)| {
                    let holds = sessions.get(agent_id).is_some_and(|s| {
                        aa_identity::unverified_claims(&s.token)
                            .is_ok_and(|claims| claims.token_id == *token_id)
                    });
                    if holds {
                        sessions.remove(agent_id)
                    } else {
                        None
                    }
                })
                .collect()
        };
        for session in ended {
            let agent_id = session.agent.id.clone();
            tracing::info!(agent = %agent_id, "session ended: its token was revoked at the gateway");
            let Ok(json) = serde_json::to_string(&session) else {
                continue;
            };
            // On the blocking pool, not waited for: only this session's row goes, so a newer
            // one stored meanwhile stays whichever write comes first.
            let outbox = Arc::clone(&self.outbox);
            tokio::task::spawn_blocking(move || {
                if let Err(error) = outbox.remove_session_if(&agent_id, &json) {
                    tracing::warn!(%error, agent = %agent_id, "session removal not persisted");
                }
            });
        }
    }

    /// Why the session's agent is stopped, if it is. A poisoned or unknown table stops
    /// everyone: the kill switch must not fail open.
    fn suspended(&self, session: &Session) -> Option<String> {
        let Ok(slot) = self.suspensions.read() else {
            return Some("the suspension table is unreadable".into());
        };
        let Some(set) = slot.as_ref() else {
            return Some(
                "the saved suspensions are unreadable; every agent waits for the gateway's".into(),
            );
        };
        let ancestors = session.ancestors.iter().rev().map(|a| a.id.as_str());
        suspension_of(set, &session.agent.id, ancestors).map(|s| s.reason_for(&session.agent.id))
    }

    fn session(&self, agent_id: &str, token: &str, peer: Peer) -> Result<Session, String> {
        if token.is_empty() {
            return Err("no credential token".into());
        }
        let sessions = self
            .sessions
            .read()
            .map_err(|_| "session table poisoned".to_owned())?;
        let Some(session) = sessions.get(agent_id) else {
            return Err(format!(
                "agent \"{agent_id}\" is not registered with this runtime"
            ));
        };
        if !aa_identity::same_secret(&session.token, token) {
            return Err("credential token is not the agent's current one".into());
        }
        if session.expires_at_ms <= now_ms() {
            return Err("credential token expired; heartbeat or register again".into());
        }
        if session.uid != peer.uid {
            return Err("the agent was registered by another user".into());
        }
        Ok(session.clone())
    }

    /// Runs `write` on the outbox's connection from the blocking pool: that connection may be
    /// in the middle of an event commit, which a thread answering the socket must not wait out.
    pub(crate) async fn on_outbox(
        &self,
        write: impl FnOnce(&Outbox) -> Result<(), RuntimeError> + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let outbox = Arc::clone(&self.outbox);
        tokio::task::spawn_blocking(move || write(&outbox))
            .await
            .map_err(|e| RuntimeError::Outbox(format!("the write did not finish: {e}")))?
    }

    async fn store_session(&self, session: Session) {
        let _in_order = self.session_writes.lock().await;
        let id = session.agent.id.clone();
        let token_id = aa_identity::unverified_claims(&session.token)
            .map(|claims| claims.token_id)
            .unwrap_or_default();
        let revoked = || self.revoked.read().map_or(true, |r| r.contains(&token_id));
        if revoked() {
            tracing::info!(agent = %id, "session not stored: its token was revoked meanwhile");
            return;
        }
        let json = serde_json::to_string(&session).ok();
        if let Some(json) = json.clone() {
            let agent_id = id.clone();
            let put = self.on_outbox(move |outbox| outbox.put_session(&agent_id, &json));
            if let Err(error) = put.await {
                tracing::warn!(%error, agent = %id, "session not persisted; it lasts until restart");
            }
        }
        {
            let Ok(mut sessions) = self.sessions.write() else {
                return;
            };
            // Checked again under the lock `drop_revoked` removes sessions under.
            if !revoked() {
                sessions.insert(id, session);
                return;
            }
        }
        tracing::info!(agent = %id, "session not stored: its token was revoked meanwhile");
        if let Some(json) = json {
            let agent_id = id.clone();
            let remove = self.on_outbox(move |outbox| outbox.remove_session_if(&agent_id, &json));
            if let Err(error) = remove.await {
                tracing::warn!(%error, agent = %id, "session removal not persisted");
            }
        }
    }

    async fn drop_session(&self, agent_id: &str) {
        let _in_order = self.session_writes.lock().await;
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.remove(agent_id);
        }
        let id = agent_id.to_owned();
        let remove = self.on_outbox(move |outbox| outbox.remove_session(&id));
        if let Err(error) = remove.await {
            tracing::warn!(%error, agent = %agent_id, "session removal not persisted");
        }
    }

    /// Decides a check. Never fails: every problem is a deny that says why. Most checks are
    /// answered here and now; one whose tool has a team-wide rate limit, or an LLM call while
    /// budgets are set, must go to the gateway first ([`Runtime::finish`]).
    pub fn check(&self, mut request: pb::CheckRequest, peer: Peer, slot: DecisionSlot) -> Checked {
        let started = Instant::now();
        let action = request.action.take();
        let decided = self.decide(&request, action, peer);
        if decided.team_limits.is_empty() && decided.budget.is_none() {
            Checked::Done(self.conclude(&request, decided, peer, started, slot))
        } else {
            // Room is not held across the gateway's answer: `finish` takes its own after it.
            drop(slot);
            Checked::Gateway(Box::new(GatewayCheck {
                request,
                decided,
                peer,
                started,
            }))
        }
    }

    /// Waits, at most [`RECORD_WAIT`], for room for a decision's event in the outbox writer's
    /// queue: checks arriving faster than the outbox takes their events wait here (and their
    /// connection with them) instead of being denied.
    pub async fn decision_slot(&self) -> DecisionSlot {
        let room = tokio::time::timeout(RECORD_WAIT, self.jobs.reserve()).await;
        DecisionSlot(room.ok().and_then(Result::ok))
    }

    /// Counts a check's team-wide rate limits and reserves its LLM cost at the gateway, then
    /// answers it. A limit without room denies saying when to retry; a budget without room
    /// denies or asks for approval, as the budget says; a gateway that cannot answer denies
    /// (fail closed).
    pub async fn finish(&self, check: GatewayCheck) -> pb::CheckResponse {
        let GatewayCheck {
            request,
            mut decided,
            peer,
            started,
        } = check;
        if !decided.team_limits.is_empty()
            && let Some(verdict) = self.take_team_rate(&request, &decided).await
        {
            decided.verdict = verdict;
        }
        if decided.verdict.decision == Decision::Allow
            && let Some(reserve) = decided.budget.take()
        {
            self.reserve_budget(reserve, &mut decided.verdict, &mut decided.detail)
                .await;
        }
        let slot = self.decision_slot().await;
        self.conclude(&request, decided, peer, started, slot)
    }

    /// Waits for the gateway, at most `gateway_timeout`.
    async fn ask_gateway<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        tokio::time::timeout(self.config.gateway_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Refusal {
                    code: ErrorCode::Unavailable,
                    message: "the gateway did not answer in time".into(),
                })
            })
    }

    /// Takes one call from each team limit; the deny to answer with when one has no room or
    /// the gateway could not count.
    async fn take_team_rate(
        &self,
        request: &pb::CheckRequest,
        decided: &Decided,
    ) -> Option<Verdict> {
        let take = pb::TakeTeamRateRequest {
            agent_id: request.agent_id.clone(),
            credential_token: request.credential_token.clone(),
            limits: decided.team_limits.clone(),
        };
        let tool = match &decided.action {
            Some(Action::ToolCall { tool, .. }) => tool.clone(),
            _ => String::new(),
        };
        let (rule, reason, policy) = match self.ask_gateway(self.link.take_team_rate(take)).await {
            Ok(taken) if taken.allowed => return None,
            Ok(taken) => {
                let index = usize::try_from(taken.limit_index).unwrap_or(usize::MAX);
                let limit = decided.team_limits.get(index).cloned().unwrap_or_default();
                let count = if taken.window == "team_limit_per_hour" {
                    limit.per_hour
                } else {
                    limit.per_minute
                };
                let retry = taken
                    .retry_after
                    .and_then(|d| aa_proto::convert::duration(&d))
                    .unwrap_or_default();
                (
                    format!("tools.{}.{}", limit.entry, taken.window),
                    format!(
                        "{tool}: {} of {count} for team {} reached; retry in {}",
                        taken.window,
                        taken.team,
                        aa_core::rate::human(retry)
                    ),
                    limit.policy,
                )
            }
            Err(refusal) => {
                let limit = decided.team_limits.first().cloned().unwrap_or_default();
                (
                    format!("tools.{}.team_limit", limit.entry),
                    format!(
                        "{tool}: the team rate limit could not be counted: {}",
                        refusal.message
                    ),
                    limit.policy,
                )
            }
        };
        Some(Verdict {
            decision: Decision::Deny,
            rule,
            reason,
            policy,
            mode: decided.verdict.mode,
        })
    }

    /// Reserves an LLM call's estimated cost against every budget over the agent. A budget
    /// without room turns the allow into its `action_on_exceed` (deny, pending, or an allow
    /// that says it passed the cap); a gateway that cannot reserve denies.
    async fn reserve_budget(
        &self,
        reserve: pb::ReserveBudgetRequest,
        verdict: &mut Verdict,
        detail: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        let model = reserve.model.clone();
        let mode = verdict.mode;
        let answer = match self.ask_gateway(self.link.reserve_budget(reserve)).await {
            Ok(answer) => answer,
            Err(refusal) => {
                *verdict = Verdict {
                    decision: Decision::Deny,
                    rule: "budget".into(),
                    reason: format!(
                        "{model}: the call's cost could not be reserved: {}",
                        refusal.message
                    ),
                    policy: String::new(),
                    mode,
                };
                return;
            }
        };
        detail.insert(
            "budget".into(),
            serde_json::json!({
                "reservation_id": Some(&answer.reservation_id).filter(|id| !id.is_empty()),
                "estimate_usd": answer.estimate_usd,
                "unlisted_model": answer.unlisted_model,
            }),
        );
        let Some(exceeded) = answer.exceeded else {
            if !answer.allowed {
                // A refusal that does not say why is still a refusal.
                *verdict = Verdict {
                    decision: Decision::Deny,
                    rule: "budget".into(),
                    reason: format!("{model}: the gateway refused to reserve the call's cost"),
                    policy: String::new(),
                    mode,
                };
            }
            return;
        };
        // An `alert` cap lets the call go only when the gateway reserved its cost: unreserved,
        // it would be charged nowhere.
        let decision = match (exceeded.action.as_str(), answer.allowed) {
            ("alert", true) => Decision::Allow,
            ("pending", _) => Decision::Pending,
            _ => Decision::Deny,
        };
        let resets = exceeded
            .resets_at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| match exceeded.timezone.parse::<chrono_tz::Tz>() {
                Ok(tz) => format!(
                    "{} {}",
                    t.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
                    exceeded.timezone
                ),
                Err(_) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
            })
            .unwrap_or_default();
        let reason = if answer.allowed {
            format!(
                "{model}: this call (~${:.4}) takes {} past its {} of ${:.2} (${:.4} spent or \
                 reserved); resets {resets}",
                answer.estimate_usd,
                exceeded.account,
                exceeded.window,
                exceeded.cap_usd,
                exceeded.spent_usd,
            )
        } else {
            format!(
                "{model}: the budget of {} has no room for this call (~${:.4}): ${:.4} of its \
                 {} ${:.2} spent or reserved; resets {resets}",
                exceeded.account,
                answer.estimate_usd,
                exceeded.spent_usd,
                exceeded.window,
                exceeded.cap_usd,
            )
        };
        *verdict = Verdict {
            decision,
            rule: format!("budget.{}", exceeded.window),
            reason,
            policy: exceeded.policy,
            mode,
        };
    }

    /// Applies the mode, opens the approval of a pending check, records the decision, and
    /// answers.
    fn conclude(
        &self,
        request: &pb::CheckRequest,
        decided: Decided,
        peer: Peer,
        started: Instant,
        slot: DecisionSlot,
    ) -> pb::CheckResponse {
        let Decided {
            mut verdict,
            agent,
            action,
            unauthenticated,
            mut detail,
            ..
        } = decided;
        let mut applied = applied(&verdict);
        let mut approval_id = None;
        if let (Some(agent), Some(action)) = (agent, action) {
            if applied.decision == Decision::Pending {
                match self.open_approval(request, &agent, &action, &applied) {
                    Ok(id) => approval_id = Some(id),
                    Err(reason) => {
                        applied = Verdict {
                            decision: Decision::Deny,
                            reason: format!("approval needed but not possible: {reason}"),
                            ..applied
                        };
                        verdict = applied.clone();
                    }
                }
            }
            let mut event = self.own_event(agent, action, EventKind::Decision, peer);
            event.session_id = Some(request.session_id.clone()).filter(|s| !s.is_empty());
            event.verdict = Some(verdict);
            if let Some(id) = &approval_id {
                detail.insert("approval_id".into(), id.clone().into());
            }
            event.detail =
                Some(serde_json::Value::Object(detail)).filter(|d| d != &serde_json::json!({}));
            applied = if unauthenticated {
                self.record_unauthenticated(event, applied, slot)
            } else {
                self.record_decision(event, applied, slot)
            };
        }
        pb::CheckResponse {
            decision: Some(decision_to_wire(
                &applied,
                approval_id.as_deref(),
                started.elapsed(),
            )),
        }
    }

    /// Records a pending decision and starts creating its approval at the gateway; returns
    /// the approval id the SDK waits on.
    fn open_approval(
        &self,
        request: &pb::CheckRequest,
        agent: &AgentContext,
        action: &Action,
        verdict: &Verdict,
    ) -> Result<String, String> {
        let timeout = self
            .bundle()
            .map_or(u64::from(aa_policy::DEFAULT_APPROVAL_TIMEOUT_S), |b| {
                u64::from(b.set.approval_timeout_s_for(agent))
            });
        let timeout = Duration::from_secs(timeout);
        let approval_id = random_hex(16)?;
        let expires = Instant::now() + timeout;
        let digest = self.action_digest(action);
        let (done, created) = tokio::sync::watch::channel(None);
        let charge = self.pending.charge(action)?;
        self.pending.insert(
            approval_id.clone(),
            Pending {
                agent: agent.clone(),
                action: action.clone(),
                digest: digest.clone(),
                verdict: verdict.clone(),
                expires,
                created,
                _charge: Arc::clone(&charge),
            },
        )?;
        let create = pb::CreateApprovalRequest {
            agent_id: agent.id.clone(),
            credential_token: request.credential_token.clone(),
            approval_id: approval_id.clone(),
            action: Some(action.into()),
            action_digest: digest,
            rule: verdict.rule.clone(),
            reason: verdict.reason.clone(),
            policy_version: verdict.policy.clone(),
            timeout: aa_proto::convert::duration_to_wire(timeout),
        };
        tokio::spawn(approvals::create(
            self.link.clone(),
            create,
            expires,
            done,
            charge,
        ));
        Ok(approval_id)
    }

    /// Waits for the approval of a pending check and answers like a check: allow once a human
    /// approved (the approval is then used up at the gateway), else deny saying why. Never
    /// fails.
    ///
    /// `held` (the frame's part of the socket's budget for big frames) is dropped once the
    /// action is read, with the action: the wait may last days, and needs neither.
    pub async fn await_approval(
        &self,
        mut request: pb::AwaitApprovalRequest,
        peer: Peer,
        held: impl Send,
    ) -> pb::CheckResponse {
        let started = Instant::now();
        let deny = |rule: &str, reason: String| Verdict {
            decision: Decision::Deny,
            rule: rule.to_owned(),
            reason,
            policy: String::new(),
            mode: Mode::Enforce,
        };
        let answer = |verdict: &Verdict| pb::CheckResponse {
            decision: Some(decision_to_wire(
                verdict,
                Some(&request.approval_id),
                started.elapsed(),
            )),
        };
        if let Err(reason) = self.session(&request.agent_id, &request.credential_token, peer) {
            return answer(&deny("credential", reason));
        }
        let pending = self.pending.take(&request.approval_id, &request.agent_id);
        let Some(pending) = pending else {
            return answer(&deny(
                "approval",
                format!(
                    "no pending approval \"{}\" for this agent here (unknown, or used already)",
                    request.approval_id
                ),
            ));
        };
        let presented = request.action.take().map(Action::try_from);
        let matches = matches!(&presented, Some(Ok(a)) if self.action_digest(a) == pending.digest);
        drop((presented, held));
        let mut verdict = if matches {
            self.resolve_approval(&request, &pending).await
        } else {
            deny(
                "approval",
                "the action is not the one the approval was asked for".into(),
            )
        };
        let mut detail = serde_json::Map::new();
        detail.insert("approval_id".into(), request.approval_id.clone().into());
        // An approved model call reserves its cost before it runs, like any other; a budget
        // that only wanted a human's yes (`pending`) has had it.
        if verdict.decision == Decision::Allow
            && let Some(bundle) = self.bundle()
            && let Some(reserve) = budget_request(
                &bundle,
                &pb::CheckRequest {
                    agent_id: request.agent_id.clone(),
                    credential_token: request.credential_token.clone(),
                    ..Default::default()
                },
                &pending.action,
                verdict.mode,
            )
        {
            let approved = verdict.clone();
            self.reserve_budget(reserve, &mut verdict, &mut detail)
                .await;
            if verdict.decision == Decision::Pending {
                verdict = approved;
            }
        }
        let mut event = self.own_event(
            pending.agent.clone(),
            pending.action.clone(),
            EventKind::Decision,
            peer,
        );
        event.verdict = Some(verdict.clone());
        event.detail = Some(serde_json::Value::Object(detail));
        let slot = self.decision_slot().await;
        answer(&self.record_decision(event, verdict, slot))
    }

    async fn resolve_approval(
        &self,
        request: &pb::AwaitApprovalRequest,
        pending: &Pending,
    ) -> Verdict {
        let wait = request
            .timeout
            .and_then(|t| aa_proto::convert::duration(&t))
            .unwrap_or_default()
            .min(pending.expires.saturating_duration_since(Instant::now()));
        let deadline = tokio::time::Instant::now() + wait;
        let resolution = approvals::resolve(
            &self.link,
            &request.approval_id,
            pending.created.clone(),
            deadline,
        )
        .await;
        let verdict = |decision, reason| Verdict {
            decision,
            reason,
            ..pending.verdict.clone()
        };
        let said = |by: &str, comment: &str| {
            let by = if by.is_empty() { "an operator" } else { by };
            if comment.is_empty() {
                format!("by {by}")
            } else {
                format!("by {by}: {comment}")
            }
        };
        match resolution {
            Resolution::Approved { by, comment } => {
                let redeem = pb::RedeemApprovalRequest {
                    agent_id: request.agent_id.clone(),
                    credential_token: request.credential_token.clone(),
                    approval_id: request.approval_id.clone(),
                    action_digest: pending.digest.clone(),
                };
                match self.ask_gateway(self.link.redeem_approval(redeem)).await {
                    Ok(_) => verdict(Decision::Allow, format!("approved {}", said(&by, &comment))),
                    Err(refusal) => verdict(
                        Decision::Deny,
                        format!("approved but not released: {}", refusal.message),
                    ),
                }
            }
            Resolution::Denied { by, comment } => {
                verdict(Decision::Deny, format!("denied {}", said(&by, &comment)))
            }
            Resolution::Expired => verdict(
                Decision::Deny,
                "the approval expired before anyone decided".into(),
            ),
            Resolution::TimedOut => verdict(
                Decision::Deny,
                format!("no decision within {:.1} s", wait.as_secs_f64()),
            ),
            Resolution::Failed(reason) => verdict(Decision::Deny, reason),
        }
    }

    /// The verdict, the agent and action to record it under, and the team limits the gateway
    /// must still count.
    fn decide(
        &self,
        request: &pb::CheckRequest,
        action: Option<pb::Action>,
        peer: Peer,
    ) -> Decided {
        let done = |verdict, agent, action| Decided {
            verdict,
            agent,
            action,
            unauthenticated: false,
            team_limits: Vec::new(),
            budget: None,
            detail: serde_json::Map::new(),
        };
        let fail = |rule: &str, reason: String| Verdict {
            decision: Decision::Deny,
            rule: rule.to_owned(),
            reason,
            policy: String::new(),
            mode: Mode::Enforce,
        };
        let claimed =
            Some(AgentContext::new(request.agent_id.clone())).filter(|a| a.validate().is_ok());
        let action = match action.map(Action::try_from) {
            Some(Ok(action)) => action,
            Some(Err(e)) => {
                return done(fail("request", format!("invalid action: {e}")), None, None);
            }
            None => {
                return done(
                    fail("request", "check carries no action".into()),
                    None,
                    None,
                );
            }
        };
        let session = match self.session(&request.agent_id, &request.credential_token, peer) {
            Ok(session) => session,
            Err(reason) => {
                return Decided {
                    unauthenticated: true,
                    ..done(fail("credential", reason), claimed, Some(action))
                };
            }
        };
        // The kill switch holds in every mode.
        if let Some(reason) = self.suspended(&session) {
            return done(
                fail("suspension", reason),
                Some(session.agent),
                Some(action),
            );
        }
        let Some(bundle) = self.bundle() else {
            let v = fail("bundle", "no policy bundle from the gateway yet".into());
            return done(v, Some(session.agent), Some(action));
        };
        let mode = bundle
            .set
            .mode_for_delegated(&session.agent, &session.ancestors);
        if mode == Mode::Disabled {
            let v = Verdict {
                decision: Decision::Allow,
                rule: "mode".into(),
                reason: "checks are disabled for this agent".into(),
                policy: String::new(),
                mode,
            };
            return done(v, None, None);
        }
        let mut verdict = bundle.set.evaluate_delegated(
            &Request {
                agent: &session.agent,
                action: &action,
                now: chrono::Utc::now(),
            },
            &session.ancestors,
        );
        let mut team_limits = Vec::new();
        if verdict.decision == Decision::Allow
            && let Action::ToolCall { tool, .. } = &action
        {
            let mut limits = Vec::new();
            for (policy, rule) in bundle.set.rate_limits(&session.agent, tool) {
                let (local, team) = (rule.limits(), rule.team_limits());
                if local != aa_policy::RateLimits::default() {
                    limits.push((policy.id(), rule.key().to_owned(), local));
                }
                if team != aa_policy::RateLimits::default() {
                    team_limits.push(pb::TeamLimit {
                        policy: policy.id(),
                        entry: rule.key().to_owned(),
                        per_minute: team.per_minute.unwrap_or(0),
                        per_hour: team.per_hour.unwrap_or(0),
                    });
                }
            }
            if !limits.is_empty()
                && let Err(exceeded) =
                    self.rates
                        .try_take(&session.agent.id, &limits, Instant::now())
            {
                team_limits.clear();
                verdict = Verdict {
                    decision: Decision::Deny,
                    rule: format!("tools.{}.{}", exceeded.entry, exceeded.which),
                    reason: format!(
                        "{tool}: {} of {} reached; retry in {}",
                        exceeded.which,
                        exceeded.limit,
                        aa_core::rate::human(exceeded.retry_after)
                    ),
                    policy: exceeded.policy,
                    mode,
                };
            }
        }
        // Budgets are the gateway's to keep: an allowed model call reserves its cost there.
        let budget = (verdict.decision == Decision::Allow)
            .then(|| budget_request(&bundle, request, &action, mode))
            .flatten();
        Decided {
            verdict,
            agent: Some(session.agent),
            action: Some(action),
            unauthenticated: false,
            team_limits,
            budget,
            detail: serde_json::Map::new(),
        }
    }

    fn event(
        &self,
        agent: AgentContext,
        action: Action,
        kind: EventKind,
        peer: Peer,
        event_id: String,
    ) -> AuditEvent {
        let now = now_ms();
        AuditEvent {
            event_id,
            timestamp_ms: now,
            agent,
            session_id: None,
            action,
            verdict: None,
            redactions: Vec::new(),
            kind,
            detail: None,
            origin: Some(Origin {
                stream_id: self.outbox.stream_id().to_owned(),
                sequence: 0,
                received_at_ms: now,
                peer_uid: peer.uid,
                peer_pid: peer.pid,
            }),
        }
    }

    /// An event the runtime writes itself (a decision, a refusal), under a new id of its own
    /// (see [`EventIds`]).
    fn own_event(
        &self,
        agent: AgentContext,
        action: Action,
        kind: EventKind,
        peer: Peer,
    ) -> AuditEvent {
        let id = format!("{}/~{}", self.outbox.stream_id(), self.event_ids.next_id());
        self.event(agent, action, kind, peer, id)
    }

    /// The id an event an agent reported is kept under: its own id, in that agent's
    /// namespace of this runtime's stream. An id that holds what the scanner finds (an agent
    /// can put a secret anywhere), or longer than [`MAX_SUPPLIED_ID`], is kept as its digest,
    /// with receipts for what was found. The agent's id has its `%` and `/` escaped, so that
    /// no agent's namespace holds another's (`a` reporting `b/x`, `a/b` reporting `x`).
    fn supplied_id(&self, agent: &AgentContext, id: &str) -> SuppliedId {
        let name: std::borrow::Cow<'_, str> = if agent.id.contains(['%', '/']) {
            agent.id.replace('%', "%25").replace('/', "%2F").into()
        } else {
            agent.id.as_str().into()
        };
        let namespace = format!("{}/{name}/", self.outbox.stream_id());
        let (kept, mut receipts) = self.scanner.get().redact_id(id, MAX_SUPPLIED_ID);
        for receipt in &mut receipts {
            "event_id".clone_into(&mut receipt.field);
        }
        SuppliedId {
            alias: (kept != id && id.len() <= MAX_SUPPLIED_ID).then(|| format!("{namespace}{id}")),
            kept: format!("{namespace}{kept}"),
            receipts,
        }
    }

    /// Queues a decision's event (in `slot`, else wherever there is room) without waiting for
    /// it to be written, and returns the verdict to answer with: under `enforce`, an allow
    /// whose event cannot be queued (the writer is a whole queue behind, or gone) or written
    /// (its last commit failed) becomes a deny, since an action must not run off the record.
    fn record_decision(&self, event: AuditEvent, answer: Verdict, slot: DecisionSlot) -> Verdict {
        let Some(charge) = self.queued_decisions.take(held_bytes(&event.action)) else {
            let why = format!(
                "the decisions waiting for the audit outbox would hold more than {} MiB",
                self.queued_decisions.max_mib()
            );
            return unrecorded(answer, &why);
        };
        self.queue_decision(event, charge, answer, slot)
    }

    /// Records a check refused for its credential as a refusal at the socket is: with them, at
    /// most [`REFUSALS_PER_SECOND`], the next one written saying how many were not, and out of
    /// a memory budget of their own. Whoever floods the runtime with bad tokens then takes
    /// nothing from the decisions of agents that hold good ones; it is denied either way.
    fn record_unauthenticated(
        &self,
        mut event: AuditEvent,
        answer: Verdict,
        slot: DecisionSlot,
    ) -> Verdict {
        let Some(charge) = self
            .unauthenticated_decisions
            .take(held_bytes(&event.action))
        else {
            self.refusals.missed();
            return answer;
        };
        let Some(unwritten) = self.refusals.take(now_ms()) else {
            return answer;
        };
        if unwritten > 0 {
            let detail = event.detail.get_or_insert_with(|| serde_json::json!({}));
            if let Some(detail) = detail.as_object_mut() {
                detail.insert("unwritten_before".into(), unwritten.into());
            }
        }
        self.queue_decision(event, charge, answer, slot)
    }

    /// Queues a decision's event holding `charge`; see [`Runtime::record_decision`].
    fn queue_decision(
        &self,
        event: AuditEvent,
        charge: Charge,
        answer: Verdict,
        slot: DecisionSlot,
    ) -> Verdict {
        let job = Job {
            events: vec![event],
            aliases: Vec::new(),
            done: None,
            _charge: Some(charge),
        };
        let queued = match slot.0 {
            Some(room) => {
                room.send(job);
                Ok(())
            }
            None => self.jobs.try_send(job),
        };
        let why = match (queued, self.outbox_health.failure()) {
            (Ok(()), None) => return answer,
            (Ok(()), Some(fault)) => format!("the audit outbox cannot be written ({fault})"),
            (Err(mpsc::error::TrySendError::Full(_)), _) => format!(
                "the audit outbox is {} decisions behind",
                self.jobs.max_capacity()
            ),
            (Err(mpsc::error::TrySendError::Closed(_)), _) => {
                "the audit outbox is closed".to_owned()
            }
        };
        unrecorded(answer, &why)
    }

    /// Records a refusal at the socket (see [`EventKind::Refusal`]) under the peer's uid, its
    /// reason in a deny verdict with the rule `protocol`; past [`REFUSALS_PER_SECOND`] they
    /// are counted, and the next one written says how many were not.
    pub(crate) fn record_refusal(&self, peer: Peer, code: ErrorCode, reason: &str) {
        let Some(unwritten) = self.refusals.take(now_ms()) else {
            return;
        };
        let action = Action::Network {
            host: format!("unix:{}", self.config.socket_path().display()),
            port: None,
            method: None,
        };
        let agent = AgentContext::new(format!("uid:{}", peer.uid));
        let mut event = self.own_event(agent, action, EventKind::Refusal, peer);
        event.verdict = Some(Verdict {
            decision: Decision::Deny,
            rule: "protocol".into(),
            reason: reason.to_owned(),
            policy: String::new(),
            mode: Mode::Enforce,
        });
        event.detail = Some(serde_json::json!({
            "code": code.as_str_name().trim_start_matches("ERROR_CODE_"),
            "unwritten_before": unwritten,
        }));
        let job = Job {
            events: vec![event],
            aliases: Vec::new(),
            done: None,
            _charge: None,
        };
        if self.jobs.try_send(job).is_err() {
            tracing::error!(
                reason,
                "the audit outbox is full or closed: a refusal was not recorded"
            );
        }
    }

    /// Records what the SDK reported as the registered agent's events: redacted, numbered and
    /// durable before this returns. Returns how many were new. `held` is the request's part
    /// of the runtime's request memory: settled to what the parsed events hold, and kept
    /// until they are written.
    pub(crate) async fn report(
        &self,
        batch: pb::EventBatch,
        peer: Peer,
        mut held: RequestCharge,
    ) -> Result<u64, Refusal> {
        let session = self
            .session(&batch.agent_id, &batch.credential_token, peer)
            .map_err(|m| refuse(ErrorCode::Unauthenticated, m))?;
        let mut events = Vec::with_capacity(batch.events.len() + batch.edges.len());
        let mut aliases = Vec::with_capacity(events.capacity());
        for (i, wire) in batch.events.into_iter().enumerate() {
            let sdk = AuditEvent::try_from(wire)
                .map_err(|e| refuse(ErrorCode::InvalidRequest, format!("events[{i}]: {e}")))?;
            if sdk.kind.gateway_only() || sdk.kind.runtime_only() {
                let who = if sdk.kind.gateway_only() {
                    "gateway"
                } else {
                    "runtime"
                };
                let hint = if sdk.kind == EventKind::Edge {
                    " (report an edge in `edges`)"
                } else {
                    ""
                };
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    format!(
                        "events[{i}]: {} events are recorded by the {who} only{hint}",
                        sdk.kind.as_str(),
                    ),
                ));
            }
            // Only what the agent may say is kept: what it did, when, and what came of it.
            let id = self.supplied_id(&session.agent, &sdk.event_id);
            aliases.push(id.alias);
            let mut event = self.event(session.agent.clone(), sdk.action, sdk.kind, peer, id.kept);
            event.redactions = id.receipts;
            event.timestamp_ms = sdk.timestamp_ms;
            event.session_id = sdk.session_id;
            event.detail = sdk.detail;
            events.push(event);
        }
        for (i, wire) in batch.edges.into_iter().enumerate() {
            let edge = TopologyEdge::try_from(wire)
                .map_err(|e| refuse(ErrorCode::InvalidRequest, format!("edges[{i}]: {e}")))?;
            if edge.from_agent_id != session.agent.id {
                return Err(refuse(
                    ErrorCode::InvalidRequest,
                    format!("edges[{i}]: an agent reports only its own edges"),
                ));
            }
            let id = format!(
                "edge-{}-{:?}-{}",
                edge.to_agent_id, edge.kind, edge.created_at_ms
            );
            let action = Action::AgentSpawn {
                child_id: Some(edge.to_agent_id.clone()),
                reason: edge.tool.clone(),
            };
            let id = self.supplied_id(&session.agent, &id);
            aliases.push(id.alias);
            let mut event = self.event(
                session.agent.clone(),
                action,
                EventKind::Edge,
                peer,
                id.kept,
            );
            event.redactions = id.receipts;
            event.timestamp_ms = edge.created_at_ms;
            event.detail = serde_json::to_value(&edge).ok();
            events.push(event);
        }
        held.settle(events.iter().map(event_bytes).sum());
        let (done, written) = oneshot::channel();
        self.jobs
            .send(Job {
                events,
                aliases,
                done: Some(done),
                _charge: None,
            })
            .await
            .map_err(|_| refuse(ErrorCode::Unavailable, "the outbox is shutting down"))?;
        written
            .await
            .map_err(|_| refuse(ErrorCode::Internal, "the outbox writer stopped"))?
            .map_err(|m| refuse(ErrorCode::Internal, m))
    }

    /// Forwards a registration step to the gateway; a completed one opens a session bound to
    /// the caller's uid.
    pub async fn register(
        &self,
        request: pb::RegisterRequest,
        peer: Peer,
    ) -> Result<pb::RegisterResponse, Refusal> {
        aa_core::AgentRegistration::try_from(request.clone())
            .map_err(|e| refuse(ErrorCode::InvalidRequest, e.to_string()))?;
        let response = self.ask_gateway(self.link.register(request)).await?;
        if !response.credential_token.is_empty() {
            let context = |a: pb::AgentRef| {
                AgentContext::try_from(a).map_err(|e| refuse(ErrorCode::Internal, e.to_string()))
            };
            let agent = response
                .agent
                .clone()
                .ok_or_else(|| refuse(ErrorCode::Internal, "gateway answer lacks the agent"))
                .and_then(context)?;
            let ancestors = response
                .ancestors
                .iter()
                .cloned()
                .map(context)
                .collect::<Result<_, _>>()?;
            self.store_session(Session {
                agent,
                ancestors,
                token: response.credential_token.clone(),
                expires_at_ms: response.expires_at.map_or(0, aa_proto::convert::millis),
                uid: peer.uid,
            })
            .await;
        }
        Ok(response)
    }

    /// Renews the agent's token at the gateway.
    pub async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
        peer: Peer,
    ) -> Result<pb::HeartbeatResponse, Refusal> {
        let mut session = self
            .session(&request.agent_id, &request.credential_token, peer)
            .map_err(|m| refuse(ErrorCode::Unauthenticated, m))?;
        let response = self.ask_gateway(self.link.heartbeat(request)).await?;
        session.token.clone_from(&response.credential_token);
        session.expires_at_ms = response.expires_at.map_or(0, aa_proto::convert::millis);
        self.store_session(session).await;
        Ok(response)
    }

    /// Ends the agent's session here and at the gateway.
    pub async fn deregister(
        &self,
        request: pb::DeregisterRequest,
        peer: Peer,
    ) -> Result<pb::DeregisterResponse, Refusal> {
        self.session(&request.agent_id, &request.credential_token, peer)
            .map_err(|m| refuse(ErrorCode::Unauthenticated, m))?;
        let agent_id = request.agent_id.clone();
        let response = self.ask_gateway(self.link.deregister(request)).await?;
        self.drop_session(&agent_id).await;
        Ok(response)
    }
}

/// `bytes` random bytes as hex; an approval id must be unguessable, so no fallback.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|e| format!("no randomness for an approval id: {e}"))?;
    Ok(aa_core::hex::encode(&buffer))
}

/// Ids for the events the runtime writes itself: a count, then 12 random bytes, as hex, kept
/// as `<stream>/~<id>`. That is outside every agent's namespace (`<stream>/<agent>/<id>`, one
/// `/` more), so no event an agent reports can take a decision's id, which the outbox would
/// refuse as a duplicate; the random part makes them unguessable besides. The count keeps
/// them in order and `~` sorts after the letters, digits and signs the SDKs allow agent ids to
/// begin with (others only cost locality), so the outbox's index of ids grows at its right
/// edge: a commit of decisions rewrites one leaf of it, not a few around each agent's place in
/// it (which halved the log pages such a commit writes; BENCHMARKS.md). The count starts from the
/// clock, so it keeps rising across restarts. The random bytes are drawn from the operating
/// system a pool at a time.
#[derive(Debug)]
struct EventIds {
    count: std::sync::atomic::AtomicU64,
    /// Random bytes, and how many of them are used.
    pool: std::sync::Mutex<(Vec<u8>, usize)>,
}

impl Default for EventIds {
    fn default() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        EventIds {
            count: std::sync::atomic::AtomicU64::new(micros),
            pool: std::sync::Mutex::default(),
        }
    }
}

impl EventIds {
    const RANDOM_BYTES: usize = 12;
    const POOL_BYTES: usize = 4096 / Self::RANDOM_BYTES * Self::RANDOM_BYTES;

    fn next_id(&self) -> String {
        let count = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = format!("{count:016x}");
        if let Ok(mut pool) = self.pool.lock() {
            let (bytes, used) = &mut *pool;
            if *used + Self::RANDOM_BYTES > bytes.len() {
                bytes.resize(Self::POOL_BYTES, 0);
                *used = 0;
                if getrandom::fill(bytes).is_err() {
                    bytes.clear();
                }
            }
            if let Some(random) = bytes.get(*used..*used + Self::RANDOM_BYTES) {
                *used += Self::RANDOM_BYTES;
                id.push_str(&aa_core::hex::encode(random));
                return id;
            }
        }
        // Without randomness the count alone keeps ids unique, if guessable.
        id
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_runtimes_event_ids_are_in_order_and_random_across_pool_refills() {
        let ids = EventIds::default();
        let made: Vec<String> = (0..1000).map(|_| ids.next_id()).collect();
        assert!(made.iter().all(|id| id.len() == 40), "{:?}", &made[..3]);
        assert!(made.windows(2).all(|w| w[0] < w[1]), "{:?}", &made[..3]);
        // Not a count alone: no two ids in a row share their random part's first 8 bytes.
        assert!(made.windows(2).all(|w| w[0][16..32] != w[1][16..32]));
    }

    fn verdict(decision: Decision, mode: Mode) -> Verdict {
        Verdict {
            decision,
            rule: "tools.read_file".into(),
            reason: "listed".into(),
            policy: "p".into(),
            mode,
        }
    }

    #[test]
    fn refusals_past_the_budget_are_counted_and_told_by_the_next_one_written() {
        let budget = RefusalBudget::default();
        let second = 1_700_000_000_000;
        for _ in 0..REFUSALS_PER_SECOND {
            assert_eq!(budget.take(second), Some(0));
        }
        assert_eq!(budget.take(second + 10), None);
        assert_eq!(budget.take(second + 999), None);
        assert_eq!(budget.take(second + 1000), Some(2));
        assert_eq!(budget.take(second + 1001), Some(0));
    }

    /// A runtime in `dir` whose gateway is unreachable, writing to a queue of `capacity` jobs
    /// the test reads itself.
    fn unlinked_runtime(
        dir: &std::path::Path,
        capacity: usize,
    ) -> (Runtime, crate::pipeline::Queue) {
        let outbox = Arc::new(Outbox::open(&dir.join("outbox.db")).unwrap());
        let (jobs, queue) = crate::pipeline::queue(capacity);
        let link = GatewayLink::new("http://127.0.0.1:9", "token", Duration::from_secs(1)).unwrap();
        let mut config = RuntimeConfig::new(dir, "http://127.0.0.1:9");
        config.gateway_token = "token".into();
        let health = Arc::new(OutboxHealth::default());
        let scanner = Arc::new(CurrentScanner::new(Arc::new(
            aa_security::Scanner::new().unwrap(),
        )));
        (
            Runtime::new(config, outbox, jobs, health, scanner, link).unwrap(),
            queue,
        )
    }

    #[tokio::test]
    async fn an_allow_that_cannot_be_recorded_is_denied_under_enforce_and_a_check_waits_for_room() {
        let dir = tempfile::tempdir().unwrap();
        // A writer a whole queue behind: the queue holds one job and has it.
        let (runtime, mut queue) = unlinked_runtime(dir.path(), 1);
        let event = || {
            let action = Action::ToolCall {
                tool: "read_file".into(),
                args: serde_json::json!({}),
            };
            let peer = Peer { uid: 0, pid: 0 };
            runtime.own_event(AgentContext::new("a"), action, EventKind::Decision, peer)
        };
        let allow = verdict(Decision::Allow, Mode::Enforce);
        assert_eq!(
            runtime.record_decision(event(), allow.clone(), DecisionSlot(None)),
            allow
        );

        let denied = runtime.record_decision(event(), allow.clone(), DecisionSlot(None));
        assert_eq!(
            (denied.decision, denied.rule.as_str()),
            (Decision::Deny, "audit")
        );
        assert!(
            denied.reason.contains("1 decisions behind"),
            "{}",
            denied.reason
        );
        // A check that waits for room is recorded once the writer takes what it has.
        let (slot, taken) = tokio::join!(runtime.decision_slot(), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            queue.jobs.recv().await
        });
        assert!(taken.is_some() && slot.0.is_some());
        assert_eq!(runtime.record_decision(event(), allow.clone(), slot), allow);
        // A deny stays itself, and observe never blocks.
        let deny = verdict(Decision::Deny, Mode::Enforce);
        assert_eq!(
            runtime.record_decision(event(), deny.clone(), DecisionSlot(None)),
            deny
        );
        let observed = verdict(Decision::Allow, Mode::Observe);
        assert_eq!(
            runtime.record_decision(event(), observed.clone(), DecisionSlot(None)),
            observed
        );

        queue.jobs.close();
        while queue.jobs.try_recv().is_ok() {}
        let closed = runtime.record_decision(event(), allow, DecisionSlot(None));
        assert!(closed.reason.contains("closed"), "{}", closed.reason);
        assert_eq!(closed.decision, Decision::Deny);
    }

    /// Decisions waiting for the writer share a memory budget, each held until the writer is
    /// done with its job: checks of megabytes of arguments, sent faster than the outbox takes
    /// them, are denied past it rather than queued by the thousand.
    #[tokio::test]
    async fn queued_decisions_share_a_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, mut queue) = unlinked_runtime(dir.path(), 4096);
        // About 6.4 MB as the runtime holds it: ten fit in 64 MiB.
        let big = crate::memory::tests::wide(100_000);
        let event = |action: &Action| {
            let peer = Peer { uid: 0, pid: 0 };
            runtime.own_event(
                AgentContext::new("a"),
                action.clone(),
                EventKind::Decision,
                peer,
            )
        };
        let allow = verdict(Decision::Allow, Mode::Enforce);
        for _ in 0..10 {
            assert_eq!(
                runtime.record_decision(event(&big), allow.clone(), DecisionSlot(None)),
                allow
            );
        }
        let denied = runtime.record_decision(event(&big), allow.clone(), DecisionSlot(None));
        assert_eq!(
            (denied.decision, denied.rule.as_str()),
            (Decision::Deny, "audit"),
            "{denied:?}"
        );
        assert!(
            denied.reason.contains("more than 64 MiB"),
            "{}",
            denied.reason
        );
        // A small decision still fits; a big one does once the writer is done with a job.
        let small = Action::ToolCall {
            tool: "read_file".into(),
            args: serde_json::json!({}),
        };
        assert_eq!(
            runtime.record_decision(event(&small), allow.clone(), DecisionSlot(None)),
            allow
        );
        drop(queue.jobs.recv().await);
        assert_eq!(
            runtime.record_decision(event(&big), allow.clone(), DecisionSlot(None)),
            allow
        );
    }

    /// Checks refused for their credential are recorded as refusals at the socket are: out of
    /// a memory budget of their own, and at most [`REFUSALS_PER_SECOND`], the next one written
    /// saying how many were not. A flood of them carrying megabytes of arguments leaves the
    /// decisions of agents that hold good tokens their whole budget.
    #[tokio::test]
    async fn checks_with_bad_tokens_take_nothing_from_other_agents_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, mut queue) = unlinked_runtime(dir.path(), 4096);
        let peer = Peer { uid: 0, pid: 0 };
        // About 6.4 MB as the runtime holds it.
        let big = crate::memory::tests::wide(100_000);
        let forged = |action: &Action| pb::CheckRequest {
            agent_id: "victim".into(),
            credential_token: "forged".into(),
            action: Some(pb::Action::from(action)),
            ..Default::default()
        };
        for _ in 0..20 {
            let Checked::Done(answer) = runtime.check(forged(&big), peer, DecisionSlot(None))
            else {
                panic!("a bad token is refused in place");
            };
            let decision = answer.decision.unwrap();
            assert_eq!(decision.matched_rule, "credential", "{decision:?}");
        }
        // The agents with good tokens still have all 64 MiB: ten big allows are recorded.
        let allow = verdict(Decision::Allow, Mode::Enforce);
        for _ in 0..10 {
            let event = runtime.own_event(
                AgentContext::new("a"),
                big.clone(),
                EventKind::Decision,
                peer,
            );
            assert_eq!(
                runtime.record_decision(event, allow.clone(), DecisionSlot(None)),
                allow
            );
        }
        // One refused check fitted in its 8 MiB; the rest are counted, and the next one
        // written once the writer has taken the first says so.
        let mut refused = Vec::new();
        while let Ok(job) = queue.jobs.try_recv() {
            refused.extend(job.events.into_iter().filter(|e| e.agent.id == "victim"));
        }
        assert_eq!(refused.len(), 1);
        let small = Action::ToolCall {
            tool: "ls".into(),
            args: serde_json::json!({}),
        };
        runtime.check(forged(&small), peer, DecisionSlot(None));
        let job = queue.jobs.try_recv().unwrap();
        let detail = job.events[0].detail.as_ref().unwrap();
        assert_eq!(detail["unwritten_before"], 19, "{detail}");
    }

    /// A revoked token ends the session holding it, in memory and on disk; a session that
    /// already holds a newer token (stored by a registration meanwhile) stays, as do others.
    #[tokio::test]
    async fn a_revoked_token_ends_only_the_session_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, _queue) = unlinked_runtime(dir.path(), 16);
        let gateway = aa_identity::Keypair::generate().unwrap();
        let token = |agent: &str| {
            let did = aa_identity::Keypair::generate().unwrap().public().did();
            aa_identity::issue(&gateway, agent, &did, 1_000, 600).unwrap()
        };
        let session = |agent: &str, token: &str| Session {
            agent: AgentContext::new(agent),
            ancestors: Vec::new(),
            token: token.into(),
            expires_at_ms: i64::MAX,
            uid: 7,
        };
        let (old, old_claims) = token("bot");
        let (new, _) = token("bot");
        let (other, other_claims) = token("other");
        runtime.store_session(session("bot", &old)).await;
        runtime.store_session(session("bot", &new)).await;
        runtime.store_session(session("other", &other)).await;
        let stored = || runtime.outbox.sessions().unwrap().len();
        assert_eq!(stored(), 2);

        runtime.drop_revoked(&[("bot".into(), old_claims.token_id)]);
        assert!(
            runtime
                .session("bot", &new, Peer { uid: 7, pid: 1 })
                .is_ok()
        );
        assert_eq!(stored(), 2, "the newer session stays on disk");

        runtime.drop_revoked(&[("other".into(), other_claims.token_id.clone())]);
        let gone = runtime.session("other", &other, Peer { uid: 7, pid: 1 });
        assert!(gone.unwrap_err().contains("not registered"));
        // Its row goes on the blocking pool, not waited for.
        for _ in 0..500 {
            if stored() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(stored(), 1);
        assert!(
            runtime
                .session("bot", &new, Peer { uid: 7, pid: 1 })
                .is_ok()
        );
        // A renewal answered before the revocation came, stored after it, is not kept.
        runtime.store_session(session("other", &other)).await;
        let gone = runtime.session("other", &other, Peer { uid: 7, pid: 1 });
        assert!(gone.unwrap_err().contains("not registered"));
        assert_eq!(stored(), 1);
    }

    /// Under `enforce` a check fails closed: an agent this runtime does not know, a missing
    /// or stale token, and a known agent before any policy bundle came are all denied, each
    /// saying why, and each denial is on record.
    #[tokio::test]
    async fn checks_fail_closed_without_a_session_a_token_or_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, mut queue) = unlinked_runtime(dir.path(), 16);
        let peer = Peer { uid: 7, pid: 1 };
        runtime
            .store_session(Session {
                agent: AgentContext::new("bot"),
                ancestors: Vec::new(),
                token: "t".into(),
                expires_at_ms: i64::MAX,
                uid: peer.uid,
            })
            .await;
        let check = |agent: &str, token: &str| {
            let request = pb::CheckRequest {
                agent_id: agent.into(),
                credential_token: token.into(),
                action: Some(
                    (&Action::ToolCall {
                        tool: "read_file".into(),
                        args: serde_json::json!({}),
                    })
                        .into(),
                ),
                session_id: String::new(),
            };
            match runtime.check(request, peer, DecisionSlot(None)) {
                Checked::Done(answer) => Verdict::from(answer.decision.unwrap()),
                Checked::Gateway(_) => panic!("decided without the gateway"),
            }
        };
        for (agent, token, rule, why) in [
            (
                "stranger",
                "t",
                "credential",
                "not registered with this runtime",
            ),
            ("bot", "", "credential", "no credential token"),
            ("bot", "old", "credential", "not the agent's current one"),
            ("bot", "t", "bundle", "no policy bundle"),
        ] {
            let verdict = check(agent, token);
            assert_eq!(
                (verdict.decision, verdict.mode, verdict.rule.as_str()),
                (Decision::Deny, Mode::Enforce, rule),
                "{agent} {token:?}: {verdict:?}"
            );
            assert!(verdict.reason.contains(why), "{}", verdict.reason);
            let recorded = queue.jobs.try_recv().expect("the denial is recorded");
            assert_eq!(recorded.events[0].kind, EventKind::Decision);
        }
    }

    /// Opens a session for `agent` under the token `t`, as a registration through `peer` does.
    async fn open_session(runtime: &Runtime, agent: &AgentContext, peer: Peer) {
        runtime
            .store_session(Session {
                agent: agent.clone(),
                ancestors: Vec::new(),
                token: "t".into(),
                expires_at_ms: i64::MAX,
                uid: peer.uid,
            })
            .await;
    }

    #[tokio::test]
    async fn no_reported_event_can_take_the_runtimes_own_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, mut queue) = unlinked_runtime(dir.path(), 8);
        let stream = runtime.outbox.stream_id().to_owned();
        let peer = Peer { uid: 7, pid: 1 };
        let action = || Action::ToolCall {
            tool: "read_file".into(),
            args: serde_json::json!({}),
        };
        let own = || {
            runtime
                .own_event(AgentContext::new("a"), action(), EventKind::Decision, peer)
                .event_id
        };
        let first = own();
        let own_part = first
            .strip_prefix(&format!("{stream}/~"))
            .unwrap()
            .to_owned();
        assert!(!own_part.contains('/'), "{first}");
        assert!(own() > first, "in the order made");
        // Whatever an agent is called and whatever id it reports, its ids hold one `/` more.
        let tilde_own = format!("~{own_part}");
        for agent in ["~", "~0", "~g", tilde_own.as_str(), "/", "é", "zz-agent"] {
            for id in ["", own_part.as_str(), tilde_own.as_str(), "x/y"] {
                let supplied = runtime.supplied_id(&AgentContext::new(agent), id);
                assert_ne!(supplied.kept, first);
                assert!(supplied.kept.matches('/').count() >= 2, "{}", supplied.kept);
            }
        }
        // No agent's namespace holds another's.
        let nested =
            |agent: &str, id: &str| runtime.supplied_id(&AgentContext::new(agent), id).kept;
        assert_ne!(nested("a", "b/x"), nested("a/b", "x"));
        assert_ne!(nested("a%2Fb", "x"), nested("a/b", "x"));
        // The agents the SDKs allow sort before the runtime's own ids.
        assert!(
            runtime
                .supplied_id(&AgentContext::new("zz-agent"), "x")
                .kept
                < first
        );
        // `report` keeps what an agent reports in its namespace, even the id of a decision.
        let agent = AgentContext::new("~");
        open_session(&runtime, &agent, peer).await;
        let mut reported = runtime.own_event(agent, action(), EventKind::ToolEnd, peer);
        reported.event_id = own_part.clone();
        let batch = pb::EventBatch {
            events: vec![pb::AuditEvent::from(&reported)],
            edges: Vec::new(),
            agent_id: "~".into(),
            credential_token: "t".into(),
        };
        let (accepted, (written, aliases)) = tokio::join!(
            runtime.report(batch, peer, RequestCharge::default()),
            async {
                let job = queue.jobs.recv().await.unwrap();
                let ids: Vec<String> = job.events.iter().map(|e| e.event_id.clone()).collect();
                if let Some(done) = job.done {
                    let _ = done.send(Ok(1));
                }
                (ids, job.aliases)
            }
        );
        assert_eq!(accepted.ok(), Some(1));
        assert_eq!(written, vec![format!("{stream}/~/{own_part}")]);
        assert_ne!(written[0], first);
        assert_eq!(aliases, [None], "kept as it came, it has no other form");
    }

    /// An agent's retry is a duplicate when a bundle published in between makes its id read
    /// as a secret: kept as its digest now, it is looked for as it came too.
    #[tokio::test]
    async fn a_retry_is_a_duplicate_when_a_pattern_makes_its_id_read_as_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, queue) = unlinked_runtime(dir.path(), 8);
        let writer = tokio::spawn(crate::pipeline::write_loop(
            queue,
            Arc::clone(&runtime.outbox),
            Arc::clone(&runtime.scanner),
            aa_security::Limits::default(),
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(OutboxHealth::default()),
        ));
        let peer = Peer { uid: 7, pid: 1 };
        let agent = AgentContext::new("bot");
        open_session(&runtime, &agent, peer).await;
        let action = Action::ToolCall {
            tool: "read_file".into(),
            args: serde_json::json!({}),
        };
        let mut reported = runtime.own_event(agent.clone(), action, EventKind::ToolEnd, peer);
        reported.event_id = "order-EMP-123456".into();
        let batch = || pb::EventBatch {
            events: vec![pb::AuditEvent::from(&reported)],
            edges: Vec::new(),
            agent_id: "bot".into(),
            credential_token: "t".into(),
        };
        let before = runtime.supplied_id(&agent, &reported.event_id);
        assert_eq!(
            runtime
                .report(batch(), peer, RequestCharge::default())
                .await
                .ok(),
            Some(1)
        );

        let badge = aa_security::CustomPattern {
            name: "badge".into(),
            regex: r"EMP-\d{6}".into(),
        };
        let scanner = aa_security::Scanner::with_patterns(&[badge]).unwrap();
        runtime.scanner.set(Arc::new(scanner));
        let after = runtime.supplied_id(&agent, &reported.event_id);
        assert_ne!(before.kept, after.kept, "the id is kept as its digest now");
        assert_eq!(
            runtime
                .report(batch(), peer, RequestCharge::default())
                .await
                .ok(),
            Some(0)
        );
        let stored = runtime.outbox.pending_after(0, 10).unwrap();
        assert_eq!(stored.len(), 1);
        writer.abort();
    }
}
