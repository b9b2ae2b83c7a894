//! Budgets end to end through `aa-sdk-client`: a team's daily budget exhausted by concurrent
//! callers on two runtimes (never past the cap), usage settling and freeing room, a parent's
//! budget covering what its child spends and asking a human past it, `aasm budget show`, and
//! all of it in the audit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aa_cli::up::GatewayHandle;
use aa_core::{Action, Decision, EventKind};
use aa_sdk_client::{Agent, AgentSpec, Client, Report};
use serde_json::{Value, json};

use crate::governed::{decide, eventually, options, stored_events};
use crate::{cli, stderr, stdout};

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/budgets")
}

/// gpt-4o with 1000 input tokens, plus the price table's 1000 reserved output: $0.0125.
fn model_call() -> Action {
    Action::LlmCall {
        model: "gpt-4o".into(),
        token_estimate: Some(1000),
    }
}

/// What the call used: 1000 in, 500 out, $0.0075 at the table's price.
async fn report_usage(c: &Client, agent: &Agent) {
    let usage = Report {
        kind: EventKind::LlmUsage,
        action: model_call(),
        detail: Some(json!({ "input_tokens": 1000, "output_tokens": 500 })),
        session_id: None,
    };
    c.report(agent, vec![usage], Vec::new()).await.unwrap();
}

async fn join(c: &Client, id: &str, team: Option<&str>, parent: Option<&str>) -> Agent {
    c.register(AgentSpec {
        agent_id: id.into(),
        team_id: team.map(Into::into),
        parent_agent_id: parent.map(Into::into),
        ..AgentSpec::default()
    })
    .await
    .unwrap()
}

/// `aasm budget show ARGS --json`: the one report asked for.
async fn shown(state: &Path, args: &[&str]) -> Value {
    let mut all = vec!["budget", "show", "--json"];
    all.extend_from_slice(args);
    let out = cli(state, &all).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    reports[0].clone()
}

fn window<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == name)
        .unwrap()
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_budget_is_exhausted_by_concurrent_callers_and_never_passed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut gw_options = options(&state, vec![policy()]);
    gw_options.grpc = crate::governed::free_port();
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    let ((rt_a, a), (rt_b, b)) = crate::governed::two_runtimes(dir.path(), &gateway);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut agents = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { &a } else { &b };
        let agent = join(c, &format!("researcher-{i}"), Some("research"), None).await;
        agents.push((Arc::clone(c), agent));
    }

    // Forty calls at once from four agents on two runtimes: $0.10 holds eight of $0.0125.
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let (c, agent) = agents[i % agents.len()].clone();
            tokio::spawn(async move {
                let outcome = decide(&c, &agent, model_call()).await;
                (c, agent, outcome)
            })
        })
        .collect();
    let mut allowed = Vec::new();
    for call in calls {
        let (c, agent, outcome) = call.await.unwrap();
        let v = outcome.verdict;
        if v.decision == Decision::Allow {
            allowed.push((c, agent));
            continue;
        }
        assert_eq!(
            (v.decision, v.rule.as_str(), v.policy.as_str()),
            (Decision::Deny, "budget.daily_usd", "research@1"),
            "{v:?}"
        );
        assert!(
            v.reason
                .starts_with("gpt-4o: the budget of team:research has no room for this call (~$0.0125): $0.1000 of its daily_usd $0.10"),
            "{}",
            v.reason
        );
    }
    assert_eq!(allowed.len(), 8);
    let team = shown(&state, &["--team", "research"]).await;
    let day = window(&team, "daily_usd");
    assert!(
        close(&day["held_usd"], 0.10) && close(&day["spent_usd"], 0.0),
        "{day}"
    );
    assert_eq!(day["cap_usd"], 0.1);
    assert_eq!(day["remaining_usd"], 0.0);

    // The calls report what they used ($0.0075 each): settled at the gateway, $0.04 is free
    // again — three more calls.
    for (c, agent) in &allowed {
        report_usage(c, agent).await;
    }
    assert!(
        eventually(Duration::from_secs(10), async || {
            let team = shown(&state, &["--team", "research"]).await;
            close(&window(&team, "daily_usd")["spent_usd"], 0.06)
        })
        .await,
        "usage never settled: {}",
        shown(&state, &["--team", "research"]).await
    );
    let mut more = 0;
    for (c, agent) in agents.iter().cycle().take(6) {
        if decide(c, agent, model_call()).await.verdict.decision == Decision::Allow {
            more += 1;
        }
    }
    assert_eq!(more, 3);
    let team = shown(&state, &["--team", "research"]).await;
    let day = window(&team, "daily_usd");
    let total = day["spent_usd"].as_f64().unwrap() + day["held_usd"].as_f64().unwrap();
    assert!(total <= 0.10 + 1e-9, "{day}");
    assert_eq!(team["models"][0]["model"], "gpt-4o");
    assert_eq!(team["models"][0]["calls"], 11);

    // The table names the account, the cap and the model.
    let out = cli(&state, &["budget", "show", "--team", "research"]).await;
    let text = stdout(&out);
    assert!(text.contains("team:research") && text.contains("$0.10") && text.contains("deny"));
    assert!(text.contains("this month: gpt-4o 11 calls"), "{text}");

    // In the audit log: each refusal as a decision, each settled usage as a spend event.
    let gw = &gateway;
    assert!(
        eventually(Duration::from_secs(10), async || {
            let events = stored_events(gw).await;
            let refused = events
                .iter()
                .filter(|e| e["verdict"]["rule"] == "budget.daily_usd")
                .count();
            let spent = events.iter().filter(|e| e["kind"] == "spend").count();
            refused == 35 && spent == 8
        })
        .await
    );
    let events = stored_events(gw).await;
    let spend = events.iter().find(|e| e["kind"] == "spend").unwrap();
    assert!(close(&spend["detail"]["cost_usd"], 0.0075), "{spend}");
    assert!(close(&spend["detail"]["estimate_usd"], 0.0125), "{spend}");
    assert_eq!(spend["detail"]["price"], "gpt-4o");
    let reserved = events
        .iter()
        .find(|e| e["verdict"]["decision"] == "allow" && e["action"]["type"] == "llm_call")
        .unwrap();
    assert!(reserved["detail"]["budget"]["reservation_id"].is_string());
    rt_a.stop().await.unwrap();
    rt_b.stop().await.unwrap();
    gateway.stop().await.unwrap();
    // The chain with the spend events in it verifies.
    let verified = cli(&state, &["audit", "verify"]).await;
    assert!(verified.status.success(), "{}", stdout(&verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_s_budget_covers_its_child_and_asks_a_human_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gateway = GatewayHandle::start(options(&state, vec![policy()]))
        .await
        .unwrap();
    let (runtime, c) = crate::governed::runtime_with_client(dir.path(), "rt", &gateway);
    join(&c, "planner", None, None).await;
    let writer = join(&c, "writer", None, Some("planner")).await;

    // The planner's $0.03 a month covers the writer's calls: two fit, the third needs a human.
    for _ in 0..2 {
        let v = decide(&c, &writer, model_call()).await.verdict;
        assert_eq!(v.decision, Decision::Allow, "{v:?}");
    }
    let pending = decide(&c, &writer, model_call()).await;
    let v = &pending.verdict;
    assert_eq!(
        (v.decision, v.rule.as_str()),
        (Decision::Pending, "budget.monthly_usd"),
        "{v:?}"
    );
    assert!(
        v.reason.contains("agent:planner") && v.reason.contains("Europe/Paris"),
        "{}",
        v.reason
    );
    let id = pending.approval_id.clone().unwrap();
    let waiting = c.await_approval(&writer, pending.clone(), Duration::from_secs(30));
    let waiting = tokio::spawn(async move { waiting.await.unwrap() });
    let gw = &gateway.gateway;
    assert!(
        eventually(Duration::from_secs(5), async || gw
            .approval(&id)
            .await
            .is_ok())
        .await
    );
    gw.decide_approval(&id, true, "finance", Some("worth it".into()))
        .await
        .unwrap();
    let released = waiting.await.unwrap();
    assert_eq!(released.verdict.decision, Decision::Allow, "{released:?}");
    // The pending budget has had its yes: released as approved, without a reservation.
    assert_eq!(released.verdict.reason, "approved by finance: worth it");

    // A usage report settles the writer's oldest open reservation (the approved call reserved
    // nothing), charged to the writer and the planner.
    report_usage(&c, &writer).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            let planner = shown(&state, &["--agent", "planner"]).await;
            close(&window(&planner, "monthly_usd")["spent_usd"], 0.0075)
        })
        .await
    );
    let planner = shown(&state, &["--agent", "planner"]).await;
    let month = window(&planner, "monthly_usd");
    assert_eq!(month["timezone"], "Europe/Paris");
    // One call settled, one still reserved.
    assert!(close(&month["held_usd"], 0.0125), "{month}");
    assert_eq!(month["calls"], 2);
    let writer_report = shown(&state, &["--agent", "writer"]).await;
    assert!(writer_report["windows"][0]["cap_usd"].is_null());
    let out = cli(&state, &["budget", "show", "--agent", "nobody"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // An alert budget lets the call past its cap and says so.
    let watcher = join(&c, "watcher", None, None).await;
    let v = decide(&c, &watcher, model_call()).await.verdict;
    assert_eq!(
        (v.decision, v.rule.as_str()),
        (Decision::Allow, "budget.daily_usd")
    );
    assert!(
        v.reason.starts_with(
            "gpt-4o: this call (~$0.0125) takes agent:watcher past its daily_usd of $0.01"
        ),
        "{}",
        v.reason
    );
    // Under observe, what the budget would deny is recorded and allowed.
    let observer = join(&c, "observer", None, None).await;
    let v = decide(&c, &observer, model_call()).await.verdict;
    assert_eq!(v.decision, Decision::Allow, "{v:?}");
    assert!(
        v.reason.starts_with(
            "observe mode: would have been deny: gpt-4o: this call (~$0.0125) takes agent:observer past its daily_usd"
        ),
        "{}",
        v.reason
    );

    // Without the gateway no cost can be reserved: the call is denied (fail closed).
    gateway.stop().await.unwrap();
    let v = decide(&c, &writer, model_call()).await.verdict;
    assert_eq!(
        (v.decision, v.rule.as_str()),
        (Decision::Deny, "budget"),
        "{v:?}"
    );
    assert!(v.reason.contains("could not be reserved"), "{}", v.reason);
    runtime.stop().await.unwrap();
}

#[test]
fn a_bad_price_table_is_refused_before_anything_starts() {
    let scratch = crate::scratch_dir("bad-prices");
    let dir = scratch.path();
    let prices = dir.join("prices.yaml");
    std::fs::write(
        &prices,
        "unknown: {input: 30, output: 80}\nmodels:\n  gpt-4o: {input: -1, output: 10}\n",
    )
    .unwrap();
    let state = dir.join("state");
    let out = crate::aasm(&[
        "up",
        "--state-dir",
        state.to_str().unwrap(),
        "--prices",
        prices.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let error = stderr(&out);
    assert!(
        error.contains("price table")
            && error.contains("3:19: models.gpt-4o.input: must be a non-negative number"),
        "{error}"
    );
    assert!(!state.join("gateway.json").exists(), "nothing was started");
}
