//! Call-rate limits end to end: a per-agent limit counted by the runtime is hit and recovers;
//! a team-wide limit is counted at the gateway across runtimes, and cannot be counted without
//! it (a deny, under enforce).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aa_cli::up::{GatewayHandle, RuntimeHandle};
use aa_core::{Decision, Mode};
use aa_sdk_client::AgentSpec;
use serde_json::json;

use crate::governed::{client, decide, eventually, options, stored_events, tool};

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/limits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_agent_limit_is_hit_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayHandle::start(options(&dir.path().join("state"), vec![policy()]))
        .await
        .unwrap();
    let runtime = RuntimeHandle::start(gateway.runtime_config(dir.path().join("rt"))).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let bot = crate::governed::register(&c, "bot", None).await;
    // A burst up to the limit goes through at once.
    for i in 0..60 {
        let v = decide(&c, &bot, tool("burst", json!({ "i": i })))
            .await
            .verdict;
        assert_eq!(v.decision, Decision::Allow, "call {i}: {v:?}");
    }
    let limited = decide(&c, &bot, tool("burst", json!({}))).await.verdict;
    assert_eq!(
        (limited.decision, limited.rule.as_str()),
        (Decision::Deny, "tools.burst.limit_per_minute")
    );
    assert!(
        limited
            .reason
            .starts_with("burst: limit_per_minute of 60 reached; retry in "),
        "{}",
        limited.reason
    );
    // 60 a minute frees one call a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = decide(&c, &bot, tool("burst", json!({}))).await.verdict;
    assert_eq!(again.decision, Decision::Allow, "{again:?}");
    assert_eq!(
        decide(&c, &bot, tool("burst", json!({})))
            .await
            .verdict
            .decision,
        Decision::Deny
    );
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_limit_is_counted_at_the_gateway_across_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw_options = options(&dir.path().join("state"), vec![policy()]);
    gw_options.grpc = crate::governed::free_port();
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    let ((rt_a, a), (rt_b, b)) = crate::governed::two_runtimes(dir.path(), &gateway);
    let register = |c: &aa_sdk_client::Client, id: &str, team: &str| {
        c.register(AgentSpec {
            agent_id: id.into(),
            team_id: Some(team.into()),
            ..AgentSpec::default()
        })
    };
    let one = register(&a, "ops-1", "ops").await.unwrap();
    let two = register(&b, "ops-2", "ops").await.unwrap();
    let other = register(&b, "dev-1", "dev").await.unwrap();
    let search = || tool("search", json!({ "q": "x" }));

    // Three a minute for the whole team, whichever runtime its agents are on.
    for (c, agent) in [(&a, &one), (&b, &two), (&a, &one)] {
        assert_eq!(
            decide(c, agent, search()).await.verdict.decision,
            Decision::Allow
        );
    }
    let limited = decide(&b, &two, search()).await.verdict;
    assert_eq!(
        (limited.decision, limited.rule.as_str()),
        (Decision::Deny, "tools.search.team_limit_per_minute")
    );
    assert!(
        limited.reason.starts_with(
            "search: team_limit_per_minute of 3 for team ops reached; retry in 20.0 s"
        ) || limited
            .reason
            .starts_with("search: team_limit_per_minute of 3 for team ops reached; retry in 19."),
        "{}",
        limited.reason
    );
    // Another team has its own count.
    assert_eq!(
        decide(&b, &other, search()).await.verdict.decision,
        Decision::Allow
    );
    // The refusal is audited.
    let gw = &gateway;
    assert!(
        eventually(Duration::from_secs(10), async || {
            stored_events(gw).await.iter().any(|e| {
                e["agent"]["id"] == "ops-2"
                    && e["verdict"]["rule"] == "tools.search.team_limit_per_minute"
            })
        })
        .await
    );

    // Without the gateway a team limit cannot be counted: denied, saying so. Tools without
    // one are still decided locally.
    gateway.stop().await.unwrap();
    let blind = decide(&b, &other, search()).await.verdict;
    assert_eq!(blind.decision, Decision::Deny);
    assert!(
        blind
            .reason
            .contains("the team rate limit could not be counted"),
        "{}",
        blind.reason
    );
    assert_eq!(
        decide(&b, &other, tool("burst", json!({})))
            .await
            .verdict
            .decision,
        Decision::Allow
    );
    rt_a.stop().await.unwrap();
    rt_b.stop().await.unwrap();
}
