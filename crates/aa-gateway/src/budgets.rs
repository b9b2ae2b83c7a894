//! Budgets: an LLM call reserves its estimated cost before it runs, against every account
//! over the agent — its own, each ancestor's (an agent's account holds what it spawned) and
//! its team's — and is refused when it would take an enforced cap past its limit. The call's
//! reported usage settles the reservation at the price table's cost; a reservation never
//! settled stays charged at its estimate. Every settlement is a `spend` event on the
//! gateway's stream.

use std::collections::BTreeSet;
use std::sync::Arc;

use aa_core::{Action, AuditEvent, EventKind};
use aa_policy::{Account, ExceedAction, Period, PolicySet, Scope, Window};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::approvals::GATEWAY_STREAM;
use crate::audit::hex;
use crate::error::GatewayError;
use crate::gateway::{Gateway, bump, now_ms};
use crate::store::{AgentRecord, CapCheck, ModelSpend, NewReservation, Store, Usage};

/// What a call asks to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The calling agent.
    pub agent_id: String,
    /// Its current credential token.
    pub credential_token: String,
    /// The model it will call.
    pub model: String,
    /// Input tokens it expects, if it said.
    pub token_estimate: Option<u64>,
    /// False under `observe`: the reservation is recorded even past a cap, which is reported.
    pub enforce: bool,
}

/// A cap a call passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    /// Whose spend it caps.
    pub account: Account,
    /// The window.
    pub window: Window,
    /// The cap.
    pub cap_usd: f64,
    /// What the window held before this call, open reservations included.
    pub spent_usd: f64,
    /// The budget's `action_on_exceed`.
    pub action: ExceedAction,
    /// The policy, `name@version`.
    pub policy: String,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Set when the cost was reserved (the call may go ahead).
    pub reservation_id: Option<String>,
    /// The estimated cost.
    pub estimate_usd: f64,
    /// False when the model is not in the price table and was priced as `unknown`.
    pub listed_price: bool,
    /// The strictest cap the call passes, if any: the reason for a refusal, or what an
    /// `alert` budget (or observe mode) reports.
    pub exceeded: Option<Exceeded>,
}

/// One window of an account's spend, against its cap if a policy sets one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowSpend {
    /// `daily_usd` or `monthly_usd`.
    pub window: String,
    /// The zone the window's days begin in.
    pub timezone: String,
    /// Its first millisecond (since the Unix epoch).
    pub start_ms: i64,
    /// The first millisecond after it.
    pub end_ms: i64,
    /// Settled cost, USD.
    pub spent_usd: f64,
    /// Open reservations at their estimate, USD.
    pub held_usd: f64,
    /// Calls reserved or reported.
    pub calls: u64,
    /// The cap, when a policy sets one.
    pub cap_usd: Option<f64>,
    /// What is left under the cap (never below zero).
    pub remaining_usd: Option<f64>,
    /// The budget's `action_on_exceed`.
    pub action_on_exceed: Option<String>,
    /// The policy that sets the cap, `name@version`.
    pub policy: Option<String>,
}

/// This month's spend on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelSpendView {
    /// The model, as calls named it.
    pub model: String,
    /// Calls reserved or reported.
    pub calls: u64,
    /// Settled cost, USD.
    pub spent_usd: f64,
    /// Open reservations, USD.
    pub held_usd: f64,
    /// False when the price table does not list it (priced conservatively).
    pub listed_price: bool,
}

/// An account's spend: every window a budget caps (the day and month in UTC when none does),
/// and this month's spend by model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetReport {
    /// `agent:<id>` (the agent and everything it spawned) or `team:<id>`.
    pub account: String,
    /// The windows.
    pub windows: Vec<WindowSpend>,
    /// This month's spend by model, in the first window's time zone.
    pub models: Vec<ModelSpendView>,
}

/// How long after its reservation a call's usage may still settle it. A reservation older than
/// this is taken for a call that never reported (it stays charged at its estimate), so one lost
/// report cannot shift every later usage onto an older reservation.
pub const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// More tokens than any model call uses: a count past it is taken as garbage, not priced.
const MAX_TOKENS: u64 = 1_000_000_000;

/// The longest model name a reservation keeps as it is.
const MAX_MODEL_BYTES: usize = 128;

fn usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn cap_micros(usd: f64) -> u64 {
    // Saturates; a cap is never rounded up past what the policy says.
    (usd * 1e6).floor() as u64
}

fn severity(action: ExceedAction) -> u8 {
    match action {
        ExceedAction::Deny => 2,
        ExceedAction::Pending => 1,
        ExceedAction::Alert => 0,
    }
}

/// One cap as the gateway checks it, with what explains it.
struct Capped {
    account: Account,
    window: Window,
    usd: f64,
    action: ExceedAction,
    policy: String,
}

fn caps_over(set: &PolicySet, accounts: &[Account], now: DateTime<Utc>) -> Vec<Capped> {
    accounts
        .iter()
        .flat_map(|account| {
            set.budgets_for(account).flat_map(move |(policy, budget)| {
                budget.caps(now).into_iter().map(move |cap| Capped {
                    account: account.clone(),
                    window: cap.window,
                    usd: cap.usd,
                    action: budget.action_on_exceed,
                    policy: policy.id(),
                })
            })
        })
        .collect()
}

impl<S: Store> Gateway<S> {
    /// The accounts `agent`'s spend is charged to: its own, each ancestor's, and the team of
    /// each of them.
    async fn accounts_of(&self, agent: &AgentRecord) -> Result<Vec<Account>, GatewayError> {
        let mut chain = self.ancestors(agent).await?;
        chain.push(agent.clone());
        let teams: BTreeSet<&String> = chain.iter().filter_map(|a| a.team_id.as_ref()).collect();
        let mut accounts: Vec<Account> = chain
            .iter()
            .rev()
            .map(|a| Account::Agent(a.agent_id.clone()))
            .collect();
        accounts.extend(teams.into_iter().map(|t| Account::Team(t.clone())));
        Ok(accounts)
    }

    /// Reserves a call's estimated cost against every budget over the agent, or refuses it
    /// when an enforced cap would be passed. Concurrent reservations are serialised by the
    /// store, so together they never pass a cap.
    pub async fn reserve_budget(
        &self,
        request: &ReserveRequest,
    ) -> Result<Reservation, GatewayError> {
        let agent = self
            .authenticate(&request.agent_id, &request.credential_token)
            .await?;
        let accounts = self.accounts_of(&agent).await?;
        let policies = Arc::clone(&self.bundle().policies);
        let now = Utc::now();
        let capped = caps_over(&policies, &accounts, now);
        if let Some(tokens) = request.token_estimate.filter(|n| *n > MAX_TOKENS) {
            // Priced, it would charge every account over the agent as good as infinitely.
            return Err(GatewayError::InvalidRequest(format!(
                "a token estimate of {tokens} is more than any model call uses (at most \
                 {MAX_TOKENS})"
            )));
        }
        let (priced, estimate) = self.prices.estimate(&request.model, request.token_estimate);
        let listed_price = priced.entry.is_some();
        let spend_id =
            format!(
                "rsv_{}",
                hex(&aa_identity::challenge()
                    .map_err(|e| GatewayError::Unavailable(e.to_string()))?[..12])
            );
        let checks = capped
            .iter()
            .map(|c| CapCheck {
                account: c.account.to_string(),
                since_ms: c.window.start.timestamp_millis(),
                until_ms: c.window.end.timestamp_millis(),
                cap_micros: cap_micros(c.usd),
                enforced: request.enforce && c.action != ExceedAction::Alert,
            })
            .collect::<Vec<_>>();
        let reservation = NewReservation {
            spend_id: spend_id.clone(),
            agent_id: agent.agent_id.clone(),
            // The model is as an agent named it, unscanned until here: kept whole when it holds
            // nothing that reads as a secret and is of a model name's length, else as a digest.
            model: self.scanner().redact_id(&request.model, MAX_MODEL_BYTES).0,
            at_ms: now.timestamp_millis(),
            estimate_micros: estimate,
            listed_price,
            accounts: accounts.iter().map(ToString::to_string).collect(),
        };
        let outcome = self.store.reserve(reservation, checks.clone()).await?;
        let exceeded = capped
            .into_iter()
            .zip(&checks)
            .zip(&outcome.spent_micros)
            .filter(|((_, check), spent)| spent.saturating_add(estimate) > check.cap_micros)
            .max_by_key(|((c, check), _)| (check.enforced, severity(c.action)))
            .map(|((c, _), spent)| Exceeded {
                account: c.account,
                window: c.window,
                cap_usd: c.usd,
                spent_usd: usd(*spent),
                action: c.action,
                policy: c.policy,
            });
        if outcome.reserved {
            bump(&self.metrics.budget_reservations, 1);
        } else {
            bump(&self.metrics.budget_refusals, 1);
        }
        Ok(Reservation {
            reservation_id: outcome.reserved.then_some(spend_id),
            estimate_usd: usd(estimate),
            listed_price,
            exceeded,
        })
    }

    /// Settles the usage an `llm_usage` event reports, and records its cost as a `spend`
    /// event. Idempotent by the event's id, so a batch appended again charges nothing twice.
    /// A usage without usable token counts settles nothing: its reservation stays charged at
    /// the estimate.
    pub(crate) async fn settle_usage(&self, event: &AuditEvent) -> Result<(), GatewayError> {
        let Action::LlmCall { model, .. } = &event.action else {
            bump(&self.metrics.usage_unpriced, 1);
            return Ok(());
        };
        let tokens = |key: &str| {
            event
                .detail
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(serde_json::Value::as_u64)
        };
        let (Some(input_tokens), Some(output_tokens)) = (
            tokens("input_tokens").filter(|n| *n <= MAX_TOKENS),
            tokens("output_tokens").filter(|n| *n <= MAX_TOKENS),
        ) else {
            bump(&self.metrics.usage_unpriced, 1);
            tracing::warn!(event = %event.event_id, "llm usage without usable token counts left unsettled");
            return Ok(());
        };
        let agent = self.store.agent(&event.agent.id).await?;
        let accounts = match &agent {
            Some(agent) => self.accounts_of(agent).await?,
            None => vec![Account::Agent(event.agent.id.clone())],
        };
        let received_ms = event
            .origin
            .as_ref()
            .map_or(event.timestamp_ms, |o| o.received_at_ms);
        let horizon = i64::try_from(SETTLE_WITHIN.as_millis()).unwrap_or(i64::MAX);
        let priced = self.prices.price(model);
        let cost = priced.price.cost_micros(input_tokens, output_tokens);
        let settled = self
            .store
            .settle(Usage {
                event_id: event.event_id.clone(),
                agent_id: event.agent.id.clone(),
                model: model.clone(),
                // When the runtime received it, not when the SDK says it happened: a usage
                // cannot be backdated out of a window.
                at_ms: received_ms,
                input_tokens,
                output_tokens,
                cost_micros: cost,
                listed_price: priced.entry.is_some(),
                accounts: accounts.iter().map(ToString::to_string).collect(),
                open_since_ms: received_ms.saturating_sub(horizon),
            })
            .await?;
        if settled.fresh {
            bump(&self.metrics.usage_settled, 1);
        }
        let detail = serde_json::json!({
            "spend_id": settled.spend_id,
            "usage_event_id": event.event_id,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": usd(cost),
            "estimate_usd": settled.estimate_micros.map(usd),
            "price": priced.entry.unwrap_or("unlisted: priced as unknown"),
            "prices_as_of": self.prices.as_of(),
            "accounts": accounts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        self.record_own(AuditEvent {
            event_id: format!("{GATEWAY_STREAM}/spend/{}", event.event_id),
            timestamp_ms: now_ms(),
            agent: agent.map_or_else(|| event.agent.clone(), |a| a.context()),
            session_id: event.session_id.clone(),
            action: Action::LlmCall {
                model: model.clone(),
                token_estimate: Some(input_tokens),
            },
            verdict: None,
            redactions: Vec::new(),
            kind: EventKind::Spend,
            detail: Some(detail),
            origin: None,
        })
        .await
    }

    /// The spend of one account, against every cap a policy sets on it.
    pub async fn budget_report(&self, account: &Account) -> Result<BudgetReport, GatewayError> {
        if let Account::Agent(id) = account
            && self.store.agent(id).await?.is_none()
        {
            return Err(GatewayError::NotFound(format!("agent {id:?}")));
        }
        let policies = Arc::clone(&self.bundle().policies);
        let now = Utc::now();
        let capped = caps_over(&policies, std::slice::from_ref(account), now);
        let mut windows: Vec<(Window, Option<&Capped>)> =
            capped.iter().map(|c| (c.window, Some(c))).collect();
        if windows.is_empty() {
            windows = [Period::Daily, Period::Monthly]
                .into_iter()
                .map(|p| (p.window(chrono_tz::UTC, now), None))
                .collect();
        }
        let mut report = BudgetReport {
            account: account.to_string(),
            windows: Vec::with_capacity(windows.len()),
            models: Vec::new(),
        };
        for (window, cap) in &windows {
            let spend = self
                .store
                .spend(
                    account.to_string(),
                    window.start.timestamp_millis(),
                    window.end.timestamp_millis(),
                )
                .await?;
            let total = |amount: fn(&ModelSpend) -> u64| {
                spend.iter().map(amount).fold(0, u64::saturating_add)
            };
            let (settled, held) = (total(|m| m.settled_micros), total(|m| m.held_micros));
            report.windows.push(WindowSpend {
                window: window.period.key().to_owned(),
                timezone: window.timezone.name().to_owned(),
                start_ms: window.start.timestamp_millis(),
                end_ms: window.end.timestamp_millis(),
                spent_usd: usd(settled),
                held_usd: usd(held),
                calls: spend.iter().map(|m| m.calls).sum(),
                cap_usd: cap.map(|c| c.usd),
                remaining_usd: cap
                    .map(|c| usd(cap_micros(c.usd).saturating_sub(settled.saturating_add(held)))),
                action_on_exceed: cap.map(|c| c.action.as_str().to_owned()),
                policy: cap.map(|c| c.policy.clone()),
            });
        }
        let zone = windows.first().map_or(chrono_tz::UTC, |(w, _)| w.timezone);
        let month = Period::Monthly.window(zone, now);
        report.models = self
            .store
            .spend(
                account.to_string(),
                month.start.timestamp_millis(),
                month.end.timestamp_millis(),
            )
            .await?
            .into_iter()
            .map(|m| ModelSpendView {
                model: m.model,
                calls: m.calls,
                spent_usd: usd(m.settled_micros),
                held_usd: usd(m.held_micros),
                listed_price: m.listed_price,
            })
            .collect();
        Ok(report)
    }

    /// Reports for every team in the registry, every root agent, and every agent a policy
    /// gives a budget of its own.
    pub async fn budget_reports(&self) -> Result<Vec<BudgetReport>, GatewayError> {
        let agents = self.store.agents().await?;
        let policies = Arc::clone(&self.bundle().policies);
        let mut accounts: BTreeSet<Account> = agents
            .iter()
            .filter_map(|a| a.team_id.clone().map(Account::Team))
            .collect();
        accounts.extend(
            agents
                .iter()
                .filter(|a| {
                    a.parent_agent_id.is_none()
                        || policies
                            .budgets_for(&Account::Agent(a.agent_id.clone()))
                            .any(|(p, _)| matches!(p.scope(), Scope::Agent(_)))
                })
                .map(|a| Account::Agent(a.agent_id.clone())),
        );
        let mut reports = Vec::with_capacity(accounts.len());
        for account in &accounts {
            reports.push(self.budget_report(account).await?);
        }
        Ok(reports)
    }
}
