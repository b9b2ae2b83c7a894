//! Approvals end to end: a pending check waits in the runtime until an operator decides at
//! the gateway (in process, through `aasm approvals`, or over HTTP); approvals are bound to
//! their action, used once, survive a gateway restart, and every step is audited.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aa_cli::up::{GatewayHandle, RuntimeSettings, Up};
use aa_core::{ApprovalStatus, Decision, Mode};
use aa_gateway::{GatewayError, Store};
use aa_sdk_client::{Agent, CheckOutcome, Client};
use serde_json::Value;

use crate::governed::{
    client, data, decide, eventually, options, register, shell, start_bot, stored_events,
};
use crate::{aasm, http, stderr, stdout};

/// Checks `command` (pending by the policy) and starts waiting for its approval.
async fn ask(
    c: &Client,
    agent: &Agent,
    command: &str,
    wait: Duration,
) -> (CheckOutcome, tokio::task::JoinHandle<CheckOutcome>) {
    let pending = decide(c, agent, shell(command)).await;
    assert_eq!(pending.verdict.decision, Decision::Pending, "{pending:?}");
    assert!(pending.approval_id.is_some());
    let waiting = c.await_approval(agent, pending.clone(), wait);
    (pending, tokio::spawn(async move { waiting.await.unwrap() }))
}

/// What the runtime binds an approval of `action` to: its canonical JSON keyed with the
/// runtime token of `state`, not a plain digest a reader of approvals could compute.
fn bound(state: &std::path::Path, action: &aa_core::Action) -> String {
    let token = aa_cli::up::runtime_token(state, None).unwrap();
    aa_security::ReceiptKey::derive(token.as_bytes()).mac(&action.canonical_bytes())
}

/// Waits until the gateway has the approval (the runtime creates it in the background).
async fn recorded(up: &GatewayHandle, id: &str) {
    let gateway = &up.gateway;
    assert!(
        eventually(Duration::from_secs(5), async || gateway
            .approval(id)
            .await
            .is_ok())
        .await,
        "approval {id} never reached the gateway"
    );
}

/// The approval steps the audit log holds for `id`, in order.
async fn audited_steps(up: &GatewayHandle, id: &str) -> Vec<String> {
    stored_events(up)
        .await
        .iter()
        .filter(|e| e["kind"] == "approval" && e["detail"]["approval_id"] == id)
        .map(|e| e["detail"]["step"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_deny_timeout_and_no_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let up = crate::governed::start_up(dir.path()).await;
    let gateway = &up.gateway.gateway;
    let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
    let root = register(&c, "root", Some("ops")).await;
    let child = c
        .register(aa_sdk_client::AgentSpec {
            agent_id: "child".into(),
            parent_agent_id: Some("root".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    // Approved: the waiting call is released, once, with who approved and why.
    let (pending, waiting) = ask(&c, &child, "rm -r build", Duration::from_secs(30)).await;
    let id = pending.approval_id.clone().unwrap();
    recorded(&up.gateway, &id).await;
    let stored = gateway.approval(&id).await.unwrap();
    assert_eq!(stored.status, ApprovalStatus::Pending);
    assert_eq!(
        stored.action_digest,
        bound(dir.path(), &shell("rm -r build"))
    );
    assert_eq!(
        (
            stored.agent.parent.as_deref(),
            stored.agent.depth,
            stored.agent.team.as_deref()
        ),
        (Some("root"), 1, Some("ops")),
        "the approval carries the agent's lineage"
    );
    assert_eq!(stored.rule, pending.verdict.rule);
    let decided = Instant::now();
    gateway
        .decide_approval(&id, true, "alice", Some("looks fine".into()))
        .await
        .unwrap();
    let released = waiting.await.unwrap();
    let latency = decided.elapsed();
    assert_eq!(released.verdict.decision, Decision::Allow, "{released:?}");
    assert_eq!(released.verdict.reason, "approved by alice: looks fine");
    // Event-driven, not found by polling at the timeout (the 50 ms bar is measured by
    // `aa-bench approvals`, not here).
    assert!(
        latency < Duration::from_secs(2),
        "released after {latency:?}"
    );
    assert!(gateway.approval(&id).await.unwrap().used_at_ms.is_some());

    // Used once: a second wait on the same id, and a second redeem, are refused.
    let again = c
        .await_approval(&child, pending.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again.verdict.decision, Decision::Deny);
    assert!(again.verdict.reason.contains("used already"), "{again:?}");
    // The same action again needs a new approval.
    let repeat = decide(&c, &child, shell("rm -r build")).await;
    assert_eq!(repeat.verdict.decision, Decision::Pending);
    assert_ne!(repeat.approval_id, pending.approval_id);

    // Bound to its action: presenting another action is refused, and uses up the wait.
    let pending = decide(&c, &root, shell("rm -r a")).await;
    let mut other = pending.clone();
    other.action = Some(shell("rm -r /"));
    let refused = c
        .await_approval(&root, other, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(refused.verdict.decision, Decision::Deny);
    assert!(
        refused.verdict.reason.contains("not the one"),
        "{refused:?}"
    );
    // The wait is used up: the right action cannot come back for it either.
    let late = c
        .await_approval(&root, pending, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(late.verdict.decision, Decision::Deny);

    // Denied: the reason reaches the agent; a decided approval cannot be decided again.
    let (pending, waiting) = ask(&c, &root, "rm -r logs", Duration::from_secs(30)).await;
    let id = pending.approval_id.clone().unwrap();
    recorded(&up.gateway, &id).await;
    gateway
        .decide_approval(&id, false, "bob", Some("not today".into()))
        .await
        .unwrap();
    let denied = waiting.await.unwrap();
    assert_eq!(denied.verdict.decision, Decision::Deny);
    assert_eq!(denied.verdict.reason, "denied by bob: not today");
    let twice = gateway.decide_approval(&id, true, "eve", None).await;
    assert!(matches!(twice, Err(GatewayError::Conflict(_))), "{twice:?}");

    // Nobody decides: denied at the wait's timeout.
    let (pending, waiting) = ask(&c, &root, "rm -r tmp", Duration::from_millis(300)).await;
    let timed_out = waiting.await.unwrap();
    assert_eq!(timed_out.verdict.decision, Decision::Deny);
    assert!(
        timed_out
            .verdict
            .reason
            .starts_with("no decision within 0.3 s"),
        "{timed_out:?}"
    );
    let id = pending.approval_id.unwrap();

    // Every step is in the audit log, and the log still verifies.
    let first = released.approval_id.clone().unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || {
            audited_steps(&up.gateway, &first).await == ["requested", "approved", "used"]
        })
        .await,
        "{:?}",
        audited_steps(&up.gateway, &first).await
    );
    let denied_id = denied.approval_id.unwrap();
    assert_eq!(
        audited_steps(&up.gateway, &denied_id).await,
        ["requested", "denied"]
    );
    assert_eq!(audited_steps(&up.gateway, &id).await, ["requested"]);
    // The runtime recorded the final answers as decisions naming the approval.
    assert!(
        eventually(Duration::from_secs(5), async || {
            stored_events(&up.gateway).await.iter().any(|e| {
                e["kind"] == "decision"
                    && e["detail"]["approval_id"] == denied_id
                    && e["verdict"]["decision"] == "deny"
            })
        })
        .await
    );
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_expires_by_the_policy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("short.yaml");
    std::fs::write(
        &policy,
        "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: short}\n\
         spec:\n  default: allow\n  approvals: {timeout_seconds: 1}\n  tools:\n    \
         shell: {requires_approval_if: 'true'}\n",
    )
    .unwrap();
    let up = Up::start(
        options(&dir.path().join("state"), vec![policy]),
        RuntimeSettings::default(),
    )
    .await
    .unwrap();
    let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
    let agent = register(&c, "bot", None).await;
    // The SDK would wait a minute; the policy's one second wins.
    let started = Instant::now();
    let (pending, waiting) = ask(&c, &agent, "ls", Duration::from_secs(60)).await;
    let answer = waiting.await.unwrap();
    assert_eq!(answer.verdict.decision, Decision::Deny, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let id = pending.approval_id.unwrap();
    // The runtime's clock started a moment before the gateway's: the expiry follows at once.
    let gateway = &up.gateway.gateway;
    assert!(
        eventually(Duration::from_secs(2), async || {
            gateway.approval(&id).await.unwrap().status == ApprovalStatus::Expired
        })
        .await
    );
    let late = up
        .gateway
        .gateway
        .decide_approval(&id, true, "late", None)
        .await;
    assert!(matches!(late, Err(GatewayError::Conflict(_))), "{late:?}");
    assert_eq!(
        audited_steps(&up.gateway, &id).await,
        ["requested", "expired"]
    );
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_approval_survives_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c, agent) = start_bot(dir.path(), dir.path()).await;
    let (pending, waiting) = ask(&c, &agent, "rm -r cache", Duration::from_secs(60)).await;
    let id = pending.approval_id.unwrap();
    recorded(&up.gateway, &id).await;

    // The gateway goes away and comes back on the same address; the call keeps waiting.
    let Up { gateway, runtime } = up;
    let grpc: SocketAddr = gateway.grpc;
    gateway.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the wait ended with the gateway");
    let mut again = options(dir.path(), vec![data()]);
    again.grpc = grpc;
    let gateway = GatewayHandle::start(again).await.unwrap();
    assert_eq!(
        gateway.gateway.approval(&id).await.unwrap().status,
        ApprovalStatus::Pending
    );
    gateway
        .gateway
        .decide_approval(&id, true, "alice", None)
        .await
        .unwrap();
    let released = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait outlived the decision")
        .unwrap();
    assert_eq!(released.verdict.decision, Decision::Allow, "{released:?}");
    Up { gateway, runtime }.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_decide_with_the_cli_and_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let (up, c, agent) = start_bot(&state, &state).await;
    let state_arg = state.display().to_string();
    let cli = move |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--state-dir", &state_arg]);
        aasm(&all)
    };

    // The CLI finds the gateway and the admin token in the state directory.
    let (pending, waiting) = ask(&c, &agent, "rm -r dist", Duration::from_secs(30)).await;
    let id = pending.approval_id.unwrap();
    recorded(&up.gateway, &id).await;
    let listed = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["approvals", "list", "--json"])
    })
    .await
    .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: Value = serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(listed[0]["approval_id"], id.as_str());
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["action"]["args"]["command"], "rm -r dist");
    let table = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["approvals", "list"])
    })
    .await
    .unwrap();
    assert!(stdout(&table).contains(&id), "{}", stdout(&table));
    let shown = tokio::task::spawn_blocking({
        let (cli, id) = (cli.clone(), id.clone());
        move || cli(&["approvals", "show", &id, "--json"])
    })
    .await
    .unwrap();
    let shown: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(
        shown["action_digest"],
        bound(&state, &shell("rm -r dist")).as_str()
    );
    let approved = tokio::task::spawn_blocking({
        let (cli, id) = (cli.clone(), id.clone());
        move || {
            cli(&[
                "approvals",
                "approve",
                &id,
                "--reason",
                "ok",
                "--by",
                "carol",
            ])
        }
    })
    .await
    .unwrap();
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert!(stdout(&approved).starts_with(&format!("approved {id}")));
    let released = waiting.await.unwrap();
    assert_eq!(released.verdict.reason, "approved by carol: ok");
    // A second decision and an unknown id fail with one line and exit 2.
    let again = tokio::task::spawn_blocking({
        let (cli, id) = (cli.clone(), id.clone());
        move || cli(&["approvals", "deny", &id, "--reason", "no"])
    })
    .await
    .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already approved"),
        "{}",
        stderr(&again)
    );
    let bad_token = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["approvals", "list", "--token", "wrong"])
    })
    .await
    .unwrap();
    assert_eq!(bad_token.status.code(), Some(2));
    assert!(
        stderr(&bad_token).contains("wrong admin token"),
        "{}",
        stderr(&bad_token)
    );

    // The HTTP API: the admin token is required; deny with a reason.
    let token = std::fs::read_to_string(aa_cli::up::admin_token_file(&state)).unwrap();
    let token = token.trim();
    let http_addr = up.gateway.http;
    let (pending, waiting) = ask(&c, &agent, "rm -r out", Duration::from_secs(30)).await;
    let id = pending.approval_id.unwrap();
    recorded(&up.gateway, &id).await;
    let (code, _) = http(http_addr, "GET", "/api/v1/approvals", None, "");
    assert_eq!(code, 401);
    let (code, body) = http(
        http_addr,
        "GET",
        "/api/v1/approvals?status=pending",
        Some(token),
        "",
    );
    assert_eq!(code, 200);
    assert_eq!(body[0]["approval_id"], id.as_str());
    let (code, _) = http(http_addr, "GET", "/api/v1/approvals/nope", Some(token), "");
    assert_eq!(code, 404);
    let path = format!("/api/v1/approvals/{id}/deny");
    let (code, body) = http(
        http_addr,
        "POST",
        &path,
        Some(token),
        r#"{"decided_by":"dave","reason":"too broad"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "denied");
    assert_eq!(
        waiting.await.unwrap().verdict.reason,
        "denied by dave: too broad"
    );
    let (code, _) = http(http_addr, "POST", &path, Some(token), "{}");
    assert_eq!(code, 409);
    up.stop().await.unwrap();
}

/// The gateway keeps only what it is sent after redaction: a secret in a pending action's
/// arguments never reaches the approval a human reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_never_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c, agent) = start_bot(dir.path(), dir.path()).await;
    let command = format!("rm -r x --key {}", crate::governed::AWS_KEY);
    let (pending, _waiting) = ask(&c, &agent, &command, Duration::from_secs(30)).await;
    let id = pending.approval_id.unwrap();
    recorded(&up.gateway, &id).await;
    let stored = up.gateway.gateway.approval(&id).await.unwrap();
    let text = serde_json::to_string(&stored).unwrap();
    assert!(!text.contains(crate::governed::AWS_KEY), "{text}");
    assert!(text.contains("[REDACTED:"), "{text}");
    // The digest is still the original action's, so the release matches what was checked.
    assert_eq!(stored.action_digest, bound(dir.path(), &shell(&command)));
    let everything = serde_json::to_string(
        &up.gateway
            .gateway
            .store()
            .records(0, 100_000)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!everything.contains(crate::governed::AWS_KEY));
    up.stop().await.unwrap();
}

/// A runtime that stops ends the calls waiting in it before its last flush of the outbox's
/// queue, so that none is released after it with its decision left unwritten: the wait ends
/// with the runtime (failing closed), not when someone decides or it times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_with_its_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let up = crate::governed::start_up(dir.path()).await;
    let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
    let root = register(&c, "root", Some("ops")).await;
    let pending = decide(&c, &root, shell("rm -r build")).await;
    assert_eq!(pending.verdict.decision, Decision::Pending, "{pending:?}");
    let id = pending.approval_id.clone().unwrap();
    recorded(&up.gateway, &id).await;
    let waiting = tokio::spawn(c.await_approval(&root, pending, Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Up { gateway, runtime } = up;
    let stopped = Instant::now();
    runtime.stop().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    let outcome = ended.expect("the wait outlived its runtime").unwrap();
    assert!(
        outcome
            .as_ref()
            .is_ok_and(|o| o.verdict.decision == Decision::Deny)
            || outcome.is_err(),
        "{outcome:?}"
    );
    assert!(stopped.elapsed() < Duration::from_secs(10));
    gateway.stop().await.unwrap();
}
