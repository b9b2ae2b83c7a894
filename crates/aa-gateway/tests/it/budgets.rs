//! Budgets at the gateway over a real SQLite store: concurrent reservations never pass a cap,
//! spend rolls up to ancestors and the team, each `action_on_exceed` does what it says, and
//! reported usage settles once, priced by the table, with a `spend` event on the gateway's
//! stream.

use std::sync::Arc;

use aa_core::{Action, AgentContext, AuditEvent, EventKind, Origin};
use aa_gateway::{
    CapCheck, GATEWAY_STREAM, Gateway, GatewayConfig, NewReservation, Reservation, ReserveRequest,
    SqliteStore, Store,
};
use aa_identity::Keypair;
use aa_policy::{Account, ExceedAction};

use crate::gateway::{documents, keys, register};

const POLICIES: &str = "apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: everyone, version: \"1\"}
spec: {scope: global, default: allow}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: ops, version: \"2\"}
spec:
  scope: team:ops
  budget: {daily_usd: 0.10, monthly_usd: 5, timezone: Europe/Berlin}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: lead, version: \"1\"}
spec:
  scope: agent:lead
  budget: {monthly_usd: 0.03, action_on_exceed: pending}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: watched, version: \"1\"}
spec:
  scope: agent:watched
  budget: {daily_usd: 0.01, action_on_exceed: alert}
";

fn budget_gateway() -> Arc<Gateway<SqliteStore>> {
    priced_gateway(None)
}

/// The budget policies over an in-memory store, priced by `prices` (a price table's text),
/// else by the shipped table.
fn priced_gateway(prices: Option<&str>) -> Arc<Gateway<SqliteStore>> {
    let prices = prices.map(|text| Arc::new(aa_policy::PriceTable::parse(text).unwrap()));
    Arc::new(
        Gateway::new(
            SqliteStore::open_in_memory().unwrap(),
            Keypair::generate().unwrap(),
            documents(POLICIES),
            GatewayConfig {
                prices,
                ..GatewayConfig::default()
            },
        )
        .unwrap(),
    )
}

/// gpt-4o with 1000 input tokens and the table's 1000 output tokens: $0.0125.
fn ask(agent: &str, token: &str, enforce: bool) -> ReserveRequest {
    ReserveRequest {
        agent_id: agent.into(),
        credential_token: token.into(),
        model: "gpt-4o".into(),
        token_estimate: Some(1000),
        enforce,
    }
}

fn usage(agent: &str, id: &str, sequence: u64, model: &str, input: u64, output: u64) -> AuditEvent {
    AuditEvent {
        event_id: format!("rt/{agent}/{id}"),
        timestamp_ms: aa_core_now(),
        agent: AgentContext::new(agent),
        session_id: None,
        action: Action::LlmCall {
            model: model.into(),
            token_estimate: Some(input),
        },
        verdict: None,
        redactions: Vec::new(),
        kind: EventKind::LlmUsage,
        detail: Some(serde_json::json!({ "input_tokens": input, "output_tokens": output })),
        origin: Some(Origin {
            stream_id: "rt".into(),
            sequence,
            received_at_ms: aa_core_now(),
            peer_uid: 0,
            peer_pid: 0,
        }),
    }
}

fn aa_core_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn report_window(
    gw: &Gateway<SqliteStore>,
    account: Account,
    window: &str,
) -> aa_gateway::WindowSpend {
    let report = gw.budget_report(&account).await.unwrap();
    report
        .windows
        .into_iter()
        .find(|w| w.window == window)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_never_pass_a_cap_and_settling_frees_room() {
    let gw = budget_gateway();
    let token = register(&gw, "root", &Keypair::generate().unwrap(), None).await;
    let ask_many = |n: usize| {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let (gw, token) = (Arc::clone(&gw), token.clone());
                tokio::spawn(async move { gw.reserve_budget(&ask("root", &token, true)).await })
            })
            .collect();
        async move {
            let mut answers: Vec<Reservation> = Vec::new();
            for call in calls {
                answers.push(call.await.unwrap().unwrap());
            }
            answers
        }
    };

    // $0.10 a day holds eight reservations of $0.0125, however many callers race for them.
    let answers = ask_many(40).await;
    let granted = answers
        .iter()
        .filter(|a| a.reservation_id.is_some())
        .count();
    assert_eq!(granted, 8);
    for refused in answers.iter().filter(|a| a.reservation_id.is_none()) {
        let exceeded = refused.exceeded.as_ref().unwrap();
        assert_eq!(exceeded.account, Account::Team("ops".into()));
        assert_eq!(exceeded.action, ExceedAction::Deny);
        assert_eq!(exceeded.policy, "ops@2");
        assert!((exceeded.cap_usd - 0.10).abs() < 1e-9);
        assert!(exceeded.spent_usd + 0.0125 > 0.10);
        assert_eq!(exceeded.window.timezone.name(), "Europe/Berlin");
    }
    assert!((answers[0].estimate_usd - 0.0125).abs() < 1e-9);
    let day = report_window(&gw, Account::Team("ops".into()), "daily_usd").await;
    assert!((day.held_usd - 0.10).abs() < 1e-9, "{day:?}");
    assert_eq!((day.spent_usd, day.calls), (0.0, 8));
    assert_eq!(day.remaining_usd, Some(0.0));

    // Each call reports less than it reserved (1000 in, 500 out: $0.0075); settling the eight
    // leaves $0.04, room for three more.
    let usages: Vec<_> = (1..=8)
        .map(|i| usage("root", &format!("u{i}"), i, "gpt-4o", 1000, 500))
        .collect();
    gw.append(usages).await.unwrap();
    let day = report_window(&gw, Account::Team("ops".into()), "daily_usd").await;
    assert!((day.spent_usd - 0.06).abs() < 1e-9, "{day:?}");
    assert_eq!(day.held_usd, 0.0);
    let granted = ask_many(10)
        .await
        .iter()
        .filter(|a| a.reservation_id.is_some())
        .count();
    assert_eq!(granted, 3);
    let day = report_window(&gw, Account::Team("ops".into()), "daily_usd").await;
    assert!(day.spent_usd + day.held_usd <= 0.10 + 1e-9, "{day:?}");
}

#[tokio::test]
async fn spend_rolls_up_to_ancestors_and_the_team() {
    let gw = budget_gateway();
    let [root, lead, worker] = keys();
    register(&gw, "root", &root, None).await;
    register(&gw, "lead", &lead, Some(("root", &root))).await;
    let worker = register(&gw, "worker", &worker, Some(("lead", &lead))).await;

    // The lead's $0.03 a month covers what its worker spends: two calls, not three.
    let first = gw
        .reserve_budget(&ask("worker", &worker, true))
        .await
        .unwrap();
    let second = gw
        .reserve_budget(&ask("worker", &worker, true))
        .await
        .unwrap();
    assert!(first.reservation_id.is_some() && second.reservation_id.is_some());
    let third = gw
        .reserve_budget(&ask("worker", &worker, true))
        .await
        .unwrap();
    assert_eq!(third.reservation_id, None);
    let exceeded = third.exceeded.unwrap();
    assert_eq!(exceeded.account, Account::Agent("lead".into()));
    assert_eq!(exceeded.action, ExceedAction::Pending);
    assert_eq!(exceeded.window.period, aa_policy::Period::Monthly);

    for account in [
        Account::Agent("worker".into()),
        Account::Agent("lead".into()),
        Account::Agent("root".into()),
        Account::Team("ops".into()),
    ] {
        let month = report_window(&gw, account.clone(), "monthly_usd").await;
        assert!(
            (month.held_usd - 0.025).abs() < 1e-9,
            "{account}: {month:?}"
        );
        assert_eq!(month.calls, 2, "{account}");
    }
    let lead = gw
        .budget_report(&Account::Agent("lead".into()))
        .await
        .unwrap();
    assert_eq!(lead.windows.len(), 1, "only the lead's own cap: {lead:?}");
    assert_eq!(lead.windows[0].cap_usd, Some(0.03));
    assert_eq!(lead.models.len(), 1);
    assert_eq!(
        (lead.models[0].model.as_str(), lead.models[0].calls),
        ("gpt-4o", 2)
    );

    // Every team, every root agent and every agent with its own budget is reported.
    let accounts: Vec<_> = gw
        .budget_reports()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.account)
        .collect();
    assert_eq!(accounts, ["agent:lead", "agent:root", "team:ops"]);
    assert!(matches!(
        gw.budget_report(&Account::Agent("nobody".into())).await,
        Err(aa_gateway::GatewayError::NotFound(_))
    ));
}

#[tokio::test]
async fn alert_and_observe_reserve_past_a_cap_and_say_so() {
    let gw = budget_gateway();
    let token = register(&gw, "watched", &Keypair::generate().unwrap(), None).await;
    // $0.0125 passes the $0.01 alert cap at once: reserved all the same, and reported.
    let over = gw
        .reserve_budget(&ask("watched", &token, true))
        .await
        .unwrap();
    assert!(over.reservation_id.is_some());
    let exceeded = over.exceeded.unwrap();
    assert_eq!(exceeded.action, ExceedAction::Alert);
    assert_eq!(exceeded.account, Account::Agent("watched".into()));

    // Observe mode reserves past even an enforced cap, and names it.
    let mut spent = 0;
    while gw
        .reserve_budget(&ask("watched", &token, true))
        .await
        .unwrap()
        .reservation_id
        .is_some()
    {
        spent += 1;
        assert!(spent < 20, "the team cap never refused");
    }
    let observed = gw
        .reserve_budget(&ask("watched", &token, false))
        .await
        .unwrap();
    assert!(observed.reservation_id.is_some());
    let exceeded = observed.exceeded.unwrap();
    assert_eq!(exceeded.action, ExceedAction::Deny);
    assert_eq!(exceeded.account, Account::Team("ops".into()));
}

#[tokio::test]
async fn usage_settles_once_priced_by_the_table_and_is_audited() {
    let gw = budget_gateway();
    let token = register(&gw, "root", &Keypair::generate().unwrap(), None).await;
    let reserved = gw.reserve_budget(&ask("root", &token, true)).await.unwrap();

    // The reported model is dated; the reservation's is not: the oldest open one settles.
    let priced = usage("root", "u1", 1, "gpt-4o-2024-08-06", 2000, 100);
    // A model the table does not know, with nothing reserved: charged at the unknown price.
    let mut unlisted = usage("root", "u2", 2, "house-model-7b", 1000, 1000);
    // Backdated by the SDK: charged when the runtime received it all the same.
    unlisted.timestamp_ms = 1;
    // No token counts: nothing settles, nothing fails.
    let mut vague = usage("root", "u3", 3, "gpt-4o", 0, 0);
    vague.detail = Some(serde_json::json!({ "note": "no usage" }));
    let batch = vec![priced, unlisted, vague];
    gw.append(batch.clone()).await.unwrap();
    // The same batch again (a runtime retrying) charges nothing twice.
    let again = gw.append(batch).await.unwrap();
    assert_eq!(again.accepted, 0);

    let report = gw
        .budget_report(&Account::Agent("root".into()))
        .await
        .unwrap();
    let models: Vec<_> = report
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.calls, m.listed_price))
        .collect();
    assert_eq!(models, [("gpt-4o", 1, true), ("house-model-7b", 1, false)]);
    let gpt = &report.models[0];
    // 2000 × $2.50 + 100 × $10.00 per million.
    assert!((gpt.spent_usd - 0.006).abs() < 1e-9, "{gpt:?}");
    assert_eq!(gpt.held_usd, 0.0);
    let house = &report.models[1];
    // 1000 × $30 + 1000 × $80 per million: the table's unknown price.
    assert!((house.spent_usd - 0.11).abs() < 1e-9, "{house:?}");

    let records = gw.store().records(0, 1000).await.unwrap();
    let spends: Vec<AuditEvent> = records
        .iter()
        .filter(|r| r.stream_id == GATEWAY_STREAM)
        .map(|r| serde_json::from_value(r.event.clone()).unwrap())
        .filter(|e: &AuditEvent| e.kind == EventKind::Spend)
        .collect();
    assert_eq!(spends.len(), 2, "one spend event per priced usage");
    let detail = spends[0].detail.as_ref().unwrap();
    assert_eq!(
        detail["spend_id"].as_str(),
        reserved.reservation_id.as_deref()
    );
    assert_eq!(detail["price"], "gpt-4o-20*");
    assert!((detail["estimate_usd"].as_f64().unwrap() - 0.0125).abs() < 1e-9);
    assert!((detail["cost_usd"].as_f64().unwrap() - 0.006).abs() < 1e-9);
    assert_eq!(
        detail["accounts"],
        serde_json::json!(["agent:root", "team:ops"])
    );
    let unlisted = spends[1].detail.as_ref().unwrap();
    assert_eq!(unlisted["price"], "unlisted: priced as unknown");
    assert!(unlisted["estimate_usd"].is_null());
    // The vague usage, counted each time it arrived.
    assert_eq!(
        gw.metrics()
            .usage_unpriced
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn a_window_counts_only_what_was_charged_inside_it() {
    let store = SqliteStore::open_in_memory().unwrap();
    let reservation = |id: &str, at_ms| NewReservation {
        spend_id: id.into(),
        agent_id: "a".into(),
        model: "m".into(),
        at_ms,
        estimate_micros: 700,
        listed_price: true,
        accounts: vec!["agent:a".into()],
    };
    let cap = |since_ms, enforced| CapCheck {
        account: "agent:a".into(),
        since_ms,
        until_ms: 10_000,
        cap_micros: 1000,
        enforced,
    };
    // Charged before the window began: not counted in it.
    let earlier = store
        .reserve(reservation("r1", 1_000), vec![])
        .await
        .unwrap();
    assert!(earlier.reserved && earlier.spent_micros.is_empty());
    let first = store
        .reserve(reservation("r2", 2_500), vec![cap(2_000, true)])
        .await
        .unwrap();
    assert_eq!((first.reserved, first.spent_micros), (true, vec![0]));
    // 700 + 700 would pass 1000.
    let refused = store
        .reserve(reservation("r3", 2_600), vec![cap(2_000, true)])
        .await
        .unwrap();
    assert_eq!((refused.reserved, refused.spent_micros), (false, vec![700]));
    // A cap that is only watched records it all the same.
    let watched = store
        .reserve(reservation("r4", 2_700), vec![cap(2_000, false)])
        .await
        .unwrap();
    assert!(watched.reserved);
    let spend = store.spend("agent:a".into(), 2_000, 3_000).await.unwrap();
    assert_eq!(spend.len(), 1);
    assert_eq!((spend[0].calls, spend[0].held_micros), (2, 1400));
    assert!(
        store
            .spend("agent:b".into(), 0, 3_000)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_operator_s_price_table_prices_the_calls() {
    let gw = priced_gateway(Some(
        "reserve: {input_tokens: 500, output_tokens: 250}\nunknown: {input: 9, output: 9}\nmodels:\n  house-*: {input: 1.00, output: 2.00}\n",
    ));
    let token = register(&gw, "root", &Keypair::generate().unwrap(), None).await;
    let house = ReserveRequest {
        model: "house-7b".into(),
        token_estimate: None,
        ..ask("root", &token, true)
    };
    let reserved = gw.reserve_budget(&house).await.unwrap();
    // 500 × $1 + 250 × $2 per million.
    assert!((reserved.estimate_usd - 0.001).abs() < 1e-9);
    assert!(reserved.listed_price);
    // gpt-4o is not in this table: the unknown price, flagged.
    let gpt = gw.reserve_budget(&ask("root", &token, true)).await.unwrap();
    assert!(!gpt.listed_price);
    assert!((gpt.estimate_usd - (1000.0 * 9.0 + 250.0 * 9.0) / 1e6).abs() < 1e-9);
}

#[tokio::test]
async fn a_stale_reservation_stays_charged_and_absurd_usage_settles_nothing() {
    let gw = budget_gateway();
    let token = register(&gw, "root", &Keypair::generate().unwrap(), None).await;
    gw.reserve_budget(&ask("root", &token, true)).await.unwrap();
    // A report received 16 minutes after the reservation does not settle it: that call is
    // taken never to have reported, and stays charged at its estimate.
    let mut late = usage("root", "late", 1, "gpt-4o", 1000, 500);
    late.origin.as_mut().unwrap().received_at_ms += 16 * 60 * 1000;
    // Token counts no call uses settle nothing, and do not fail the append.
    let absurd = usage("root", "absurd", 2, "gpt-4o", 1_000_000_000_000, 1);
    gw.append(vec![late, absurd]).await.unwrap();
    // The whole ledger, so the test holds at a month's end too.
    let spend = gw
        .store()
        .spend("agent:root".into(), 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(spend.len(), 1);
    assert_eq!(
        (
            spend[0].calls,
            spend[0].held_micros,
            spend[0].settled_micros
        ),
        (2, 12_500, 7_500)
    );
    assert_eq!(
        gw.metrics()
            .usage_unpriced
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A usage sent again after the published patterns changed how its id reads settles once: its
/// usage is read from the record the store holds, under the id it is stored by, not from the
/// resend.
#[tokio::test]
async fn a_usage_sent_again_after_its_id_reads_differently_settles_once() {
    let gw = budget_gateway();
    register(&gw, "root", &Keypair::generate().unwrap(), None).await;
    let priced = usage("root", "EMP-123456", 1, "gpt-4o", 2000, 100);
    assert_eq!(gw.append(vec![priced.clone()]).await.unwrap().accepted, 1);
    let with_pattern = POLICIES.replacen(
        "spec: {scope: global, default: allow}",
        "spec: {scope: global, default: allow, data: {patterns: [{name: badge, regex: 'EMP-\\d{6}'}]}}",
        1,
    );
    assert_ne!(with_pattern, POLICIES);
    gw.publish(documents(&with_pattern)).unwrap();
    let again = gw.append(vec![priced]).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));

    let report = gw
        .budget_report(&Account::Agent("root".into()))
        .await
        .unwrap();
    let calls: Vec<_> = report
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.calls))
        .collect();
    assert_eq!(calls, [("gpt-4o", 1)], "{report:?}");
    // 2000 × $2.50 + 100 × $10.00 per million, once.
    assert!(
        (report.models[0].spent_usd - 0.006).abs() < 1e-9,
        "{report:?}"
    );
    let spends = gw
        .store()
        .records(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.stream_id == GATEWAY_STREAM && r.event["kind"] == "spend")
        .count();
    assert_eq!(spends, 1, "one spend record");
}

/// A reservation is made before the call's event is redacted, so the model name as the agent
/// gave it is scanned where it is kept: whole when it reads as a model, as its digest when it
/// holds a secret or is past a model name's length.
#[tokio::test]
async fn a_reservations_model_is_kept_only_as_a_model_name() {
    let gw = budget_gateway();
    let token = register(&gw, "root", &Keypair::generate().unwrap(), None).await;
    let key = "sk-proj-0123456789abcdefghijABCDEFGHIJKLMNOPqrstuvwxyz";
    for model in [
        "gpt-4o".to_owned(),
        format!("gpt-4o?key={key}"),
        "m".repeat(200),
    ] {
        let request = ReserveRequest {
            model: model.clone(),
            // Observed, so that the unlisted models' estimates are held past the cap.
            ..ask("root", &token, false)
        };
        gw.reserve_budget(&request).await.unwrap();
    }
    let models: Vec<String> = gw
        .store()
        .spend(Account::Agent("root".into()).to_string(), 0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.model)
        .collect();
    assert_eq!(models.len(), 3, "{models:?}");
    assert!(models.contains(&"gpt-4o".to_owned()), "{models:?}");
    let digests = models.iter().filter(|m| m.starts_with("sha256:")).count();
    assert_eq!(digests, 2, "{models:?}");
    assert!(!models.iter().any(|m| m.contains(key)), "{models:?}");
}

/// A token estimate no call uses is refused; costs past counting (an operator's absurd price)
/// saturate, and the account's later reservations and reports still work. Both used to leave
/// every later charge and report of the account failing with an integer overflow.
#[tokio::test]
async fn an_absurd_estimate_is_refused_and_costs_past_counting_saturate() {
    let gw = priced_gateway(Some(
        "unknown: {input: 9, output: 9}\nmodels:\n  gold: {input: 1e15, output: 1e15}\n  gpt-4o: {input: 2.5, output: 10}\n",
    ));
    // Observed (not enforced): past its caps, a call is still reserved.
    let token = register(&gw, "watched", &Keypair::generate().unwrap(), None).await;
    let absurd = ReserveRequest {
        token_estimate: Some(3_600_000_000_000_000_000),
        ..ask("watched", &token, true)
    };
    let refused = gw.reserve_budget(&absurd).await.unwrap_err();
    assert!(refused.to_string().contains("token estimate"), "{refused}");
    let gold = ReserveRequest {
        model: "gold".into(),
        token_estimate: Some(1_000_000_000),
        ..ask("watched", &token, false)
    };
    for _ in 0..3 {
        let reserved = gw.reserve_budget(&gold).await.unwrap();
        assert!(reserved.reservation_id.is_some(), "{reserved:?}");
        assert_eq!(
            reserved.estimate_usd,
            aa_policy::prices::MAX_COST_MICROS as f64 / 1e6
        );
    }
    let after = gw
        .reserve_budget(&ask("watched", &token, false))
        .await
        .unwrap();
    assert!(after.reservation_id.is_some());
    assert_eq!(
        after.exceeded.unwrap().spent_usd,
        i64::MAX as f64 / 1e6,
        "the window's total saturates"
    );
    let daily = report_window(&gw, Account::Agent("watched".into()), "daily_usd").await;
    // The gold calls' total, saturated, and the last call's $0.0125.
    assert_eq!(daily.held_usd, (i64::MAX as u64 + 12_500) as f64 / 1e6);
    assert_eq!(daily.remaining_usd, Some(0.0));
    assert_eq!(daily.calls, 4);
}
