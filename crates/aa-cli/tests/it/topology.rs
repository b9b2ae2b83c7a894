//! Agent trees end to end: a child's rights are bounded by its ancestors', the topology is
//! queryable, and the kill switch stops an agent (or a whole subtree) on every runtime within a
//! second, through `aasm agents suspend`, until it is resumed — all of it audited.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aa_cli::up::{GatewayHandle, RuntimeHandle};
use aa_core::{Decision, EdgeKind, Mode, TopologyEdge};
use aa_sdk_client::{Agent, AgentSpec, Client};
use serde_json::{Value, json};

use crate::governed::{client, decide, eventually, free_port, options, shell, stored_events, tool};
use crate::{aasm, cli, http, stderr, stdout};

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/topology")
}

async fn spawn(c: &Client, id: &str, team: &str, parent: Option<&str>) -> Agent {
    c.register(AgentSpec {
        agent_id: id.into(),
        team_id: Some(team.into()),
        parent_agent_id: parent.map(Into::into),
        delegation_reason: parent.map(|_| "split the work".into()),
        ..AgentSpec::default()
    })
    .await
    .unwrap()
}

async fn verdict(c: &Client, agent: &Agent) -> aa_core::Verdict {
    decide(c, agent, tool("search", json!({ "q": "status" })))
        .await
        .verdict
}

/// How long until every one of `agents` gets `expected` for a harmless call; panics past one
/// second, the kill switch's promise.
async fn within_a_second(agents: &[(&Client, &Agent)], expected: Decision) -> Duration {
    let started = Instant::now();
    let reached = eventually(Duration::from_secs(1), async || {
        for (c, agent) in agents {
            if verdict(c, agent).await.decision != expected {
                return false;
            }
        }
        true
    })
    .await;
    assert!(reached, "not every agent got {expected:?} within a second");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_is_denied_what_the_root_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gateway = GatewayHandle::start(options(&state, vec![policy()]))
        .await
        .unwrap();
    let runtime = RuntimeHandle::start(gateway.runtime_config(dir.path().join("rt"))).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let root = spawn(&c, "root", "builders", None).await;
    let child = spawn(&c, "child", "builders", Some("root")).await;
    let grandchild = spawn(&c, "grandchild", "builders", Some("child")).await;
    let solo = spawn(&c, "solo", "builders", None).await;
    assert_eq!(grandchild.context().depth, 2);

    // The builders' policy lets them run a shell; the root's own policy does not, and so
    // nothing it spawned may either.
    assert_eq!(
        decide(&c, &solo, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    for agent in [&root, &child, &grandchild] {
        let denied = decide(&c, agent, shell("ls")).await.verdict;
        assert_eq!(
            denied.decision,
            Decision::Deny,
            "{}: {denied:?}",
            agent.id()
        );
    }
    let inherited = decide(&c, &grandchild, shell("ls")).await.verdict;
    assert!(
        inherited
            .reason
            .starts_with("inherited from ancestor \"root\": "),
        "{}",
        inherited.reason
    );
    // What the root may do, its descendants may too; what it may do only with approval, they
    // may do only with approval.
    assert_eq!(verdict(&c, &grandchild).await.decision, Decision::Allow);
    let deploy = decide(&c, &grandchild, tool("deploy", json!({}))).await;
    assert_eq!(deploy.verdict.decision, Decision::Pending);
    assert!(deploy.approval_id.is_some());

    // The decision is audited with the inherited reason.
    let gw = &gateway;
    assert!(
        eventually(Duration::from_secs(10), async || {
            stored_events(gw).await.iter().any(|e| {
                e["agent"]["id"] == "grandchild"
                    && e["verdict"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("inherited from ancestor \"root\""))
            })
        })
        .await
    );

    // `/metrics` answers without a token, in Prometheus's text format, counting the agents.
    let (code, text) = crate::http_text(gateway.http, "GET", "/metrics", None, "");
    assert_eq!(code, 200, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"# TYPE aasm_gateway_agents gauge"),
        "{text}"
    );
    assert!(lines.contains(&"aasm_gateway_agents 4"), "{text}");
    assert!(
        lines.contains(&"aasm_gateway_registrations_total 4"),
        "{text}"
    );
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_subtree_stops_on_every_runtime_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gateway = GatewayHandle::start(options(&state, vec![policy()]))
        .await
        .unwrap();
    let ((rt_a, a), (rt_b, b)) = crate::governed::two_runtimes(dir.path(), &gateway);
    let root = spawn(&a, "root", "builders", None).await;
    let child = spawn(&b, "child", "builders", Some("root")).await;
    let grandchild = spawn(&b, "grandchild", "builders", Some("child")).await;
    let bystander = spawn(&b, "bystander", "builders", None).await;
    let tree = [(&a, &root), (&b, &child), (&b, &grandchild)];
    within_a_second(&tree, Decision::Allow).await;
    // An edge the root reports shows up in the topology.
    let edge = TopologyEdge {
        from_agent_id: "root".into(),
        to_agent_id: "bystander".into(),
        kind: EdgeKind::Messaged,
        tool: Some("chat".into()),
        created_at_ms: 1,
        metadata: None,
    };
    a.report(&root, Vec::new(), vec![edge]).await.unwrap();

    // Suspend the root with its subtree: every check by any of them is denied, on both
    // runtimes, within a second of the command returning.
    let out = cli(
        &state,
        &[
            "agents",
            "suspend",
            "root",
            "--subtree",
            "--reason",
            "runaway",
            "--by",
            "alice",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "suspended root and 2 agents below it: root, child, grandchild"
    );
    let took = within_a_second(&tree, Decision::Deny).await;
    eprintln!("subtree stopped on two runtimes in {took:?}");
    let denied = verdict(&b, &grandchild).await;
    assert_eq!(denied.rule, "suspension");
    assert_eq!(
        denied.reason,
        "agent \"grandchild\" is suspended with the subtree of \"root\" by alice: runaway"
    );
    assert_eq!(verdict(&b, &bystander).await.decision, Decision::Allow);
    // A stopped agent spawns nothing new.
    let refused = b
        .register(AgentSpec {
            agent_id: "great-grandchild".into(),
            parent_agent_id: Some("grandchild".into()),
            ..AgentSpec::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("suspended with the subtree of"),
        "{refused}"
    );

    // What operators see: the tree, the table, one agent's lineage, all of it as JSON too.
    let tree_out = cli(&state, &["topology", "tree", "root"]).await;
    assert!(tree_out.status.success(), "{}", stderr(&tree_out));
    assert_eq!(
        stdout(&tree_out),
        "root [team builders] [suspended]\n\
         ├── messaged -> bystander via chat\n\
         └── child [team builders] [suspended via root]\n    \
             └── grandchild [team builders] [suspended via root]\n"
    );
    let json_tree = cli(&state, &["topology", "tree", "--json"]).await;
    let json_tree: Value = serde_json::from_str(&stdout(&json_tree)).unwrap();
    let ids: Vec<&str> = json_tree["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bystander", "root", "child", "grandchild"]);
    let listed = cli(&state, &["agents", "list", "--team", "builders", "--json"]).await;
    let listed: Value = serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4);
    assert_eq!(listed[2]["agent_id"], "grandchild");
    assert_eq!(listed[2]["suspension"]["agent_id"], "root");
    let shown = cli(&state, &["agents", "show", "grandchild"]).await;
    assert!(
        stdout(&shown).contains("lineage    root > child > grandchild"),
        "{}",
        stdout(&shown)
    );

    // A descendant is resumed by resuming the suspension that stops it.
    let out = cli(&state, &["agents", "resume", "child"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("stopped with the subtree of \"root\", so resume that one"),
        "{}",
        stderr(&out)
    );
    let out = cli(&state, &["agents", "resume", "root", "--subtree"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    within_a_second(&tree, Decision::Allow).await;

    // One agent alone: its children go on.
    let out = cli(&state, &["agents", "suspend", "child", "--json"]).await;
    let change: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(change["agent_ids"], json!(["child"]));
    within_a_second(&[(&b, &child)], Decision::Deny).await;
    assert_eq!(verdict(&b, &grandchild).await.decision, Decision::Allow);

    // The HTTP API needs the admin token; the audit log holds every step and verifies.
    let (code, _) = http(gateway.http, "GET", "/api/v1/agents", None, "");
    assert_eq!(code, 401);
    let token = std::fs::read_to_string(aa_cli::up::admin_token_file(&state)).unwrap();
    let (code, lineage) = http(
        gateway.http,
        "GET",
        "/api/v1/agents/grandchild/lineage",
        Some(token.trim()),
        "",
    );
    assert_eq!(code, 200);
    assert_eq!(lineage[0]["agent_id"], "root");
    assert_eq!(lineage[2]["agent_id"], "grandchild");
    let steps: Vec<(String, String)> = stored_events(&gateway)
        .await
        .iter()
        .filter(|e| e["kind"] == "suspension")
        .map(|e| {
            (
                e["agent"]["id"].as_str().unwrap().to_owned(),
                e["detail"]["step"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("root".to_owned(), "suspended".to_owned()),
            ("root".to_owned(), "resumed".to_owned()),
            ("child".to_owned(), "suspended".to_owned()),
        ]
    );
    rt_a.stop().await.unwrap();
    rt_b.stop().await.unwrap();
    gateway.stop().await.unwrap();
    let verified = aasm(&[
        "audit",
        "verify",
        "--state-dir",
        &state.display().to_string(),
    ]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_keeps_a_suspension_while_the_gateway_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gateway = GatewayHandle::start(options(&state, vec![policy()]))
        .await
        .unwrap();
    let config = gateway.runtime_config(dir.path().join("rt"));
    let runtime = RuntimeHandle::start(config.clone()).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let bot = spawn(&c, "bot", "builders", None).await;
    gateway
        .gateway
        .suspend("bot", false, "alice", "investigating")
        .await
        .unwrap();
    within_a_second(&[(&c, &bot)], Decision::Deny).await;
    gateway.stop().await.unwrap();
    runtime.stop().await.unwrap();
    let runtime = RuntimeHandle::start(config).unwrap();
    let denied = verdict(&c, &bot).await;
    assert_eq!(denied.decision, Decision::Deny);
    assert_eq!(
        denied.reason,
        "agent \"bot\" is suspended by alice: investigating"
    );
    runtime.stop().await.unwrap();
}

/// A saved set of suspensions that cannot be read may have stopped anyone: a runtime restarted
/// on one, with the gateway away, stops every agent until the gateway's set arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_saved_suspension_set_stops_everyone_until_the_gateways_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut gw_options = options(&state, vec![policy()]);
    gw_options.grpc = free_port();
    let gateway = GatewayHandle::start(gw_options.clone()).await.unwrap();
    let config = gateway.runtime_config(dir.path().join("rt"));
    let runtime = RuntimeHandle::start(config.clone()).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let bot = spawn(&c, "bot", "builders", None).await;
    let other = spawn(&c, "other", "builders", None).await;
    gateway
        .gateway
        .suspend("other", false, "alice", "investigating")
        .await
        .unwrap();
    within_a_second(&[(&c, &other)], Decision::Deny).await;
    assert_eq!(verdict(&c, &bot).await.decision, Decision::Allow);
    gateway.stop().await.unwrap();
    runtime.stop().await.unwrap();
    let outbox = rusqlite::Connection::open(config.database_path()).unwrap();
    let changed = outbox
        .execute(
            "UPDATE meta SET value = '[{\"agent_id\": ' WHERE key = 'suspensions'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "the runtime saved no suspensions");

    let runtime = RuntimeHandle::start(config).unwrap();
    let denied = verdict(&c, &bot).await;
    assert_eq!(denied.decision, Decision::Deny);
    assert_eq!(
        denied.reason,
        "the saved suspensions are unreadable; every agent waits for the gateway's"
    );
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    let released = eventually(Duration::from_secs(20), async || {
        verdict(&c, &bot).await.decision == Decision::Allow
    })
    .await;
    assert!(
        released,
        "the gateway's set never replaced the unreadable one"
    );
    assert_eq!(verdict(&c, &other).await.decision, Decision::Deny);
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

/// Every operation the OpenAPI document names is served, with the admin token, at the path
/// and method it gives; and the document needs no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_routes_served() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gateway = GatewayHandle::start(options(&state, vec![policy()]))
        .await
        .unwrap();
    let token = std::fs::read_to_string(aa_cli::up::admin_token_file(&state)).unwrap();
    let (code, doc) = http(gateway.http, "GET", "/api/v1/openapi.json", None, "");
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 17, "{:?}", paths.keys());
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "nobody");
            let body = if method == "post" { "{}" } else { "" };
            let (code, answer) = http(
                gateway.http,
                &method.to_uppercase(),
                &concrete,
                Some(token.trim()),
                body,
            );
            // A route the router lacks is a bare 404 or 405; a served one answers 200, or an
            // error that says what was wrong.
            assert!(
                code == 200 || answer["error"].is_string(),
                "{method} {path}: {code} {answer}"
            );
            assert_ne!(code, 405, "{method} {path}");
            if !path.contains("{id}") {
                assert_eq!(code, 200, "{method} {path}: {answer}");
            }
        }
    }
    gateway.stop().await.unwrap();
}
