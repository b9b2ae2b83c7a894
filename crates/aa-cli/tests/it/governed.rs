//! The governed path end to end, in-process: a gateway and a runtime on temp dirs, driven by
//! `aa-sdk-client` and by raw frames over the socket.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aa_cli::up::{
    GatewayHandle, GatewayOptions, RuntimeHandle, RuntimeSettings, Up, gateway_database,
};
use aa_core::{Action, Decision, EventKind, Mode};
use aa_gateway::{GatewayConfig, NewEvent, SqliteStore, Store};
use aa_proto::frame::{FrameDecoder, encode};
use aa_proto::pb;
use aa_sdk_client::{Agent, AgentSpec, CheckOutcome, Client, ClientConfig, ClientError, Report};
use serde_json::json;

/// Arguments of `shell("ls")`.
const LS: &str = r#"{"command":"ls"}"#;

pub(crate) const AWS_KEY: &str = "AKIAQWERTYUIOPASDFGH";

pub(crate) fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/governed")
}

pub(crate) fn options(state: &Path, policies: Vec<PathBuf>) -> GatewayOptions {
    GatewayOptions {
        state_dir: state.to_path_buf(),
        policies,
        grpc: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        config: GatewayConfig::default(),
    }
}

pub(crate) fn client(state: &Path, socket: &Path, mode: Mode) -> Client {
    Client::new(ClientConfig {
        socket_path: Some(socket.to_path_buf()),
        state_dir: state.join("sdk"),
        mode,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

pub(crate) async fn register(client: &Client, id: &str, team: Option<&str>) -> Agent {
    client
        .register(AgentSpec {
            agent_id: id.into(),
            team_id: team.map(Into::into),
            ..AgentSpec::default()
        })
        .await
        .unwrap()
}

/// A runtime named `name` linked to `gateway` (state under `dir`), with its own enforcing
/// client keeping its keys in the SDK state directory under `dir`.
pub(crate) fn runtime_with_client(
    dir: &Path,
    name: &str,
    gateway: &GatewayHandle,
) -> (RuntimeHandle, Client) {
    let runtime = RuntimeHandle::start(gateway.runtime_config(dir.join(name))).unwrap();
    let c = client(dir, &runtime.socket, Mode::Enforce);
    (runtime, c)
}

/// Two runtimes (`a`, `b`) linked to `gateway`, each with its own client; the clients keep
/// their keys in one state directory under `dir`, as on one host, so an agent registered
/// through one can consent to a child registered through the other.
pub(crate) fn two_runtimes(
    dir: &Path,
    gateway: &GatewayHandle,
) -> ((RuntimeHandle, Client), (RuntimeHandle, Client)) {
    (
        runtime_with_client(dir, "a", gateway),
        runtime_with_client(dir, "b", gateway),
    )
}

/// `aasm up` in-process on `state`, serving the test data policies.
pub(crate) async fn start_up(state: &Path) -> Up {
    Up::start(options(state, vec![data()]), RuntimeSettings::default())
        .await
        .unwrap()
}

/// `aasm up` in process on `state` with the test policy, a client keeping its keys under
/// `dir`, and the agent `bot` registered.
pub(crate) async fn start_bot(dir: &Path, state: &Path) -> (Up, Client, Agent) {
    let up = start_up(state).await;
    let c = client(dir, &up.runtime.socket, Mode::Enforce);
    let agent = register(&c, "bot", None).await;
    (up, c, agent)
}

pub(crate) fn tool(name: &str, args: serde_json::Value) -> Action {
    Action::ToolCall {
        tool: name.into(),
        args,
    }
}

pub(crate) fn shell(command: &str) -> Action {
    tool("shell", json!({ "command": command }))
}

pub(crate) async fn decide(
    client: &Client,
    agent: &Agent,
    action: Action,
) -> aa_sdk_client::CheckOutcome {
    client.check(agent, action, None).await.unwrap()
}

/// Waits until `condition` holds, up to `limit`.
pub(crate) async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub(crate) async fn stored_events(up: &GatewayHandle) -> Vec<serde_json::Value> {
    let store = up.gateway.store();
    store
        .records(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_pending_in_each_mode() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path()).await;
    let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
    let enforced = register(&c, "enforced", None).await;
    let observed = register(&c, "observed", Some("watchers")).await;
    let quiet = register(&c, "quiet", Some("quiet")).await;

    // enforce: each decision as the policy says.
    let cases = [
        (shell("ls"), Decision::Allow),
        (tool("db_drop", json!({})), Decision::Deny),
        (shell("rm -r x"), Decision::Pending),
    ];
    for (action, expected) in cases.clone() {
        let outcome = decide(&c, &enforced, action).await;
        assert_eq!(outcome.verdict.decision, expected, "{outcome:?}");
        assert_eq!(outcome.verdict.mode, Mode::Enforce);
        assert!(!outcome.resolved_locally);
    }
    // observe: never blocks, says what would have happened, records the real verdict.
    for (action, expected) in cases.clone() {
        let outcome = decide(&c, &observed, action).await;
        assert_eq!(outcome.verdict.decision, Decision::Allow, "{outcome:?}");
        assert_eq!(outcome.verdict.mode, Mode::Observe);
        if expected != Decision::Allow {
            assert!(
                outcome
                    .verdict
                    .reason
                    .contains(&format!("would have been {}", expected.as_str()))
            );
        }
    }
    // disabled: no check at all.
    for (action, _) in cases {
        let outcome = decide(&c, &quiet, action).await;
        assert_eq!(
            (outcome.verdict.decision, outcome.verdict.rule.as_str()),
            (Decision::Allow, "mode")
        );
    }
    // Rate limits are counted in the runtime.
    let ping = || tool("ping", json!({}));
    assert_eq!(
        decide(&c, &enforced, ping()).await.verdict.decision,
        Decision::Allow
    );
    assert_eq!(
        decide(&c, &enforced, ping()).await.verdict.decision,
        Decision::Allow
    );
    let third = decide(&c, &enforced, ping()).await.verdict;
    assert_eq!(
        (third.decision, third.rule.as_str()),
        (Decision::Deny, "tools.ping.limit_per_minute")
    );
    assert!(
        third
            .reason
            .starts_with("ping: limit_per_minute of 2 reached; retry in "),
        "{}",
        third.reason
    );

    // The observed deny is in the audit log as a deny under observe.
    assert!(
        eventually(Duration::from_secs(5), async || {
            stored_events(&up.gateway).await.iter().any(|e| {
                e["agent"]["id"] == "observed"
                    && e["verdict"]["decision"] == "deny"
                    && e["verdict"]["mode"] == "observe"
            })
        })
        .await
    );
    // Lineage and team come from the registry.
    let agents = up.gateway.gateway.store().agents().await.unwrap();
    assert_eq!(agents.len(), 3);
    up.stop().await.unwrap();
}

/// An edit in place reaches the runtime, of a file given by its path or by its directory's
/// (whose time the edit leaves as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_the_runtime() {
    let source = std::fs::read_to_string(data().join("base.yaml")).unwrap();
    for given in ["file", "directory"] {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        let policy = policies.join("policy.yaml");
        std::fs::write(&policy, &source).unwrap();
        let path = if given == "file" { &policy } else { &policies };
        let up = Up::start(
            options(&dir.path().join("state"), vec![path.clone()]),
            RuntimeSettings::default(),
        )
        .await
        .unwrap();
        let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
        let agent = register(&c, "bot", None).await;
        let deploy = async || {
            decide(&c, &agent, tool("deploy", json!({})))
                .await
                .verdict
                .decision
        };
        assert_eq!(deploy().await, Decision::Allow, "{given}");

        std::fs::write(
            &policy,
            source.replace("\"*\": {allow: true}", "\"*\": {allow: false}"),
        )
        .unwrap();
        let changed = eventually(Duration::from_secs(5), async || {
            deploy().await == Decision::Deny
        })
        .await;
        assert!(changed, "the edit of the {given} never reached the runtime");
        up.stop().await.unwrap();
    }
}

/// How `aasm check` is told where the runtime is.
#[derive(Clone, Copy)]
enum Found {
    /// `--socket`.
    Socket,
    /// `AASM_SOCKET`.
    Env,
    /// `--state-dir` of `aasm up`'s, and neither of the others.
    StateDir,
}

/// `aasm check` registers through the socket (`--socket`, else `AASM_SOCKET`, else the one in
/// its `--state-dir`) and prints the decision as `aasm policy eval` does; a bad action is an
/// error that names the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aasm_check_prints_the_runtimes_decision() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = start_up(&state).await;
    let socket = up.runtime.socket.display().to_string();
    let keys = dir.path().join("keys").display().to_string();
    let state = state.display().to_string();
    let check = move |tool: &str, found: Found| {
        let action = format!(r#"{{"type":"tool_call","tool":"{tool}","args":{{}}}}"#);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_aasm"));
        command
            .args(["check", "--action", &action])
            .env_remove("AASM_SOCKET")
            .env_remove("AASM_STATE_DIR");
        // The state directory of `aasm up` holds no key of cli-bot's: another agent there.
        match found {
            Found::Socket => command.args([
                "--agent",
                "cli-bot",
                "--socket",
                &socket,
                "--state-dir",
                &keys,
            ]),
            Found::Env => command.env("AASM_SOCKET", &socket).args([
                "--agent",
                "cli-bot",
                "--state-dir",
                &keys,
            ]),
            Found::StateDir => command.args(["--agent", "state-bot", "--state-dir", &state]),
        };
        command.output().unwrap()
    };
    let outputs = tokio::task::spawn_blocking(move || {
        [
            check("deploy", Found::Socket),
            check("db_drop", Found::Env),
            check("deploy", Found::StateDir),
            check("deploy\"", Found::Socket),
        ]
    })
    .await
    .unwrap();
    up.stop().await.unwrap();

    let [allowed, denied, found_in_state, bad] = outputs;
    for (out, decision) in [
        (allowed, "allow"),
        (denied, "deny"),
        (found_in_state, "allow"),
    ] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verdict: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(verdict["decision"], decision, "{text}");
        assert_eq!(verdict["policy"], "base@1", "{text}");
        assert_eq!(verdict["mode"], "enforce", "{text}");
        assert_eq!(verdict.as_object().unwrap().len(), 5, "{text}");
    }
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--action"));
}

async fn report(c: &Client, agent: &Agent, n: usize, prefix: &str) -> u64 {
    let reports = (0..n)
        .map(|i| Report {
            kind: EventKind::ToolEnd,
            action: tool("shell", json!({ "command": format!("{prefix} {i}") })),
            detail: Some(json!({ "duration_ms": i })),
            session_id: None,
        })
        .collect();
    c.report(agent, reports, vec![]).await.unwrap()
}

pub(crate) fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_buffer_events_and_lose_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut gw_options = options(&state, vec![data()]);
    gw_options.grpc = free_port();
    let gateway = GatewayHandle::start(gw_options.clone()).await.unwrap();
    let runtime_config = gateway.runtime_config(dir.path().join("runtime"));
    let runtime = RuntimeHandle::start(runtime_config.clone()).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let agent = register(&c, "bot", None).await;
    let watching = client(dir.path(), &runtime.socket, Mode::Observe);
    let observed = register(&watching, "observed", Some("watchers")).await;
    assert_eq!(report(&c, &agent, 10, "before").await, 10);

    // Gateway down: decisions continue from the held bundle (enforce denies, observe allows
    // what it would have denied); a new agent cannot register; events are acknowledged from
    // the outbox.
    gateway.stop().await.unwrap();
    let watched = decide(&watching, &observed, tool("db_drop", json!({}))).await;
    assert_eq!(
        (
            watched.verdict.decision,
            watched.verdict.mode,
            watched.resolved_locally
        ),
        (Decision::Allow, Mode::Observe, false),
        "{watched:?}"
    );
    assert!(
        watched.verdict.reason.contains("would have been deny"),
        "{watched:?}"
    );
    assert_eq!(
        decide(&c, &agent, tool("db_drop", json!({})))
            .await
            .verdict
            .decision,
        Decision::Deny
    );
    assert_eq!(
        decide(&c, &agent, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    assert!(
        c.register(AgentSpec {
            agent_id: "newcomer".into(),
            ..AgentSpec::default()
        })
        .await
        .is_err()
    );
    assert_eq!(report(&c, &agent, 300, "during").await, 300);

    // The runtime dies with a full outbox and comes back on the same state.
    runtime.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runtime = RuntimeHandle::start(runtime_config).unwrap();
    assert_eq!(
        report(&c, &agent, 5, "after restart").await,
        5,
        "the session survived the restart"
    );

    // The gateway returns: everything arrives once, in order.
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    let expected = 10 + 3 + 300 + 5;
    let arrived = eventually(Duration::from_secs(20), async || {
        stored_events(&gateway).await.len() >= expected
    })
    .await;
    let events = stored_events(&gateway).await;
    assert!(arrived, "{} of {expected} events arrived", events.len());
    assert_eq!(events.len(), expected, "no duplicates");
    assert_eq!(
        stored_sequences(&gateway).await,
        (1..=expected as u64).collect::<Vec<_>>()
    );
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), expected);
    // What observe let through is on record as the deny it would have been.
    assert!(
        events.iter().any(|e| e["agent"]["id"] == "observed"
            && e["verdict"]["decision"] == "deny"
            && e["verdict"]["mode"] == "observe"),
        "the observed deny is not on record"
    );

    // With the runtime gone, the client decides by its mode.
    runtime.stop().await.unwrap();
    let enforce = decide(&c, &agent, shell("ls")).await;
    assert!(
        enforce.resolved_locally && enforce.verdict.decision == Decision::Deny,
        "{enforce:?}"
    );
    let observe = client(
        dir.path(),
        &dir.path().join("runtime/runtime.sock"),
        Mode::Observe,
    );
    let outcome = decide(&observe, &agent, shell("ls")).await;
    assert!(outcome.resolved_locally && outcome.verdict.decision == Decision::Allow);
    gateway.stop().await.unwrap();
}

/// Copies the gateway's database files (the database and its write-ahead log) from one
/// directory to another, replacing what is there.
fn copy_database(from: &Path, to: &Path) {
    for name in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
        let target = to.join(name);
        if target.exists() {
            std::fs::remove_file(&target).unwrap();
        }
        if from.join(name).exists() {
            std::fs::copy(from.join(name), &target).unwrap();
        }
    }
}

/// The stored events' sequences, in stream order.
async fn stored_sequences(gateway: &GatewayHandle) -> Vec<u64> {
    stored_events(gateway)
        .await
        .iter()
        .map(|e| e["origin"]["sequence"].as_u64().unwrap())
        .collect()
}

/// An agent whose token stops being taken (here: the same agent registered again through
/// another client, superseding it) registers again at its next renewal rather than being
/// refused from then on; a deregistered agent is left deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_token_is_superseded_registers_again_unless_deregistered() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw_options = options(&dir.path().join("state"), vec![data()]);
    gw_options.config.token_ttl = Duration::from_secs(4);
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    let runtime = RuntimeHandle::start(gateway.runtime_config(dir.path().join("runtime"))).unwrap();
    let first = client(dir.path(), &runtime.socket, Mode::Enforce);
    let agent = register(&first, "bot", None).await;
    assert_eq!(
        decide(&first, &agent, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    // The same agent (its key is in the shared state directory) through another client,
    // closed at once so that it does not take the agent back in its turn.
    let second = client(dir.path(), &runtime.socket, Mode::Enforce);
    register(&second, "bot", None).await;
    second.close();
    assert_eq!(
        decide(&first, &agent, shell("ls")).await.verdict.decision,
        Decision::Deny
    );
    let back = eventually(Duration::from_secs(10), async || {
        decide(&first, &agent, shell("ls")).await.verdict.decision == Decision::Allow
    })
    .await;
    assert!(back, "the superseded agent never registered again");
    // Ended on purpose, it stays ended: no renewal registers it again.
    first.deregister(&agent, "done").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let record = gateway.gateway.store().agent("bot").await.unwrap().unwrap();
    assert!(
        record.token_id.is_empty(),
        "a deregistered agent was registered again"
    );

    // An agent whose handle its program dropped is not renewed: registered through another
    // client meanwhile, it is not taken back (each taking it back would supersede the other,
    // which would take it back in turn).
    let registrations = || {
        let (_, text) = crate::http_text(gateway.http, "GET", "/metrics", None, "");
        text.lines()
            .find_map(|l| l.strip_prefix("aasm_gateway_registrations_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    drop(register(&first, "dropped", None).await);
    let third = client(dir.path(), &runtime.socket, Mode::Enforce);
    let kept = register(&third, "dropped", None).await;
    let before = registrations();
    // Two renewal turns of the dropped handle (every 2 s with a 4 s token).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        registrations(),
        before,
        "the dropped agent was registered again"
    );
    assert_eq!(
        decide(&third, &kept, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

/// Checks and reports racing a renewal are not refused for the token it replaced: the runtime
/// takes only the newest, so a call made with the one before is made again with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_a_renewal_are_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c, agent) = start_bot(dir.path(), &dir.path().join("state")).await;
    let renewals = {
        let (c, agent) = (c.clone(), agent.clone());
        tokio::spawn(async move {
            for _ in 0..150 {
                c.heartbeat(&agent).await.unwrap();
            }
        })
    };
    let blocking = {
        let (c, agent) = (c.clone(), agent.clone());
        std::thread::spawn(move || {
            let mut refused = Vec::new();
            for _ in 0..600 {
                let outcome = c.check_blocking(&agent, shell("ls"), None).unwrap();
                if outcome.verdict.decision != Decision::Allow {
                    refused.push(outcome.verdict.reason);
                }
            }
            refused
        })
    };
    let (mut checks, mut refused, mut reports) = (0, Vec::new(), 0);
    while !renewals.is_finished() {
        let outcome = decide(&c, &agent, shell("ls")).await;
        checks += 1;
        if outcome.verdict.decision != Decision::Allow {
            refused.push(outcome.verdict.reason);
        }
        if checks % 4 == 0 {
            reports += report(&c, &agent, 1, "racing").await;
        }
    }
    renewals.await.unwrap();
    refused.extend(blocking.join().unwrap());
    assert!(checks > 100, "only {checks} checks raced the renewals");
    assert_eq!(refused, Vec::<String>::new());
    assert_eq!(reports, checks / 4);
    up.stop().await.unwrap();
}

/// Events too large to go to the gateway together (over tonic's default 4 MiB a message)
/// are all delivered: the runtime sends no more than an append's worth at once, and the
/// gateway takes an append of that size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_held_through_an_outage_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut gw_options = options(&state, vec![data()]);
    gw_options.grpc = free_port();
    let gateway = GatewayHandle::start(gw_options.clone()).await.unwrap();
    let runtime = RuntimeHandle::start(gateway.runtime_config(dir.path().join("runtime"))).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let agent = register(&c, "bot", None).await;
    gateway.stop().await.unwrap();
    // About 2.6 MB each: numbers, which no size cap on strings shortens.
    let numbers: Vec<u64> = (1_000_000..1_330_000).collect();
    for i in 0..3 {
        let big = Report {
            kind: EventKind::ToolEnd,
            action: tool("shell", json!({ "command": format!("big {i}") })),
            detail: Some(json!({ "numbers": numbers })),
            session_id: None,
        };
        assert_eq!(c.report(&agent, vec![big], vec![]).await.unwrap(), 1);
    }
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    let delivered = eventually(Duration::from_secs(30), async || {
        stored_events(&gateway)
            .await
            .iter()
            .filter(|e| {
                e["detail"]["numbers"]
                    .as_array()
                    .is_some_and(|n| n.len() == numbers.len())
            })
            .count()
            == 3
    })
    .await;
    assert!(delivered, "the large events were not all delivered");
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restored_from_a_backup_is_sent_again_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (state, backup) = (dir.path().join("state"), dir.path().join("backup"));
    std::fs::create_dir_all(&backup).unwrap();
    let mut gw_options = options(&state, vec![data()]);
    gw_options.grpc = free_port();
    let gateway = GatewayHandle::start(gw_options.clone()).await.unwrap();
    let runtime = RuntimeHandle::start(gateway.runtime_config(dir.path().join("runtime"))).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let agent = register(&c, "bot", None).await;
    let stored = async |gateway: &GatewayHandle, n: u64| {
        eventually(Duration::from_secs(20), async || {
            stored_sequences(gateway).await.len() as u64 >= n
        })
        .await
    };

    report(&c, &agent, 10, "backed up").await;
    assert!(stored(&gateway, 10).await);
    gateway.stop().await.unwrap();
    copy_database(&state, &backup);

    let gateway = GatewayHandle::start(gw_options.clone()).await.unwrap();
    report(&c, &agent, 20, "lost").await;
    assert!(stored(&gateway, 30).await);
    gateway.stop().await.unwrap();

    // The store goes back to the backup: the runtime's next batch starts past its head.
    copy_database(&backup, &state);
    let gateway = GatewayHandle::start(gw_options).await.unwrap();
    assert_eq!(stored_sequences(&gateway).await.len(), 10);
    report(&c, &agent, 5, "after the restore").await;
    assert!(
        stored(&gateway, 35).await,
        "{} of 35 events stored",
        stored_sequences(&gateway).await.len()
    );
    assert_eq!(
        stored_sequences(&gateway).await,
        (1..=35).collect::<Vec<_>>()
    );
    let records = gateway.gateway.store().records(0, 1_000).await.unwrap();
    assert_eq!(
        aa_gateway::audit::verify(records, &[], None)
            .unwrap()
            .records,
        35
    );
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

/// `check_blocking` from a plain thread, as a synchronous agent calls it.
fn check_blocking(
    client: &Client,
    agent: &Agent,
    action: Action,
) -> impl Future<Output = Result<CheckOutcome, ClientError>> {
    let (client, agent) = (client.clone(), agent.clone());
    async move {
        tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || client.check_blocking(&agent, action, None))
                .join()
                .unwrap()
        })
        .await
        .unwrap()
    }
}

fn decide_blocking(
    client: &Client,
    agent: &Agent,
    action: Action,
) -> impl Future<Output = CheckOutcome> {
    let answer = check_blocking(client, agent, action);
    async move { answer.await.unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_checks_decide_as_awaited_ones_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gateway = GatewayHandle::start(options(&state, vec![data()]))
        .await
        .unwrap();
    let runtime_config = gateway.runtime_config(dir.path().join("runtime"));
    let runtime = RuntimeHandle::start(runtime_config.clone()).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let enforced = register(&c, "enforced", None).await;
    let observed = register(&c, "observed", Some("watchers")).await;
    let quiet = register(&c, "quiet", Some("quiet")).await;
    for agent in [&enforced, &observed, &quiet] {
        for action in [shell("ls"), tool("db_drop", json!({})), shell("rm -r x")] {
            let blocking = decide_blocking(&c, agent, action.clone()).await;
            let awaited = decide(&c, agent, action).await;
            assert_eq!(blocking.verdict, awaited.verdict, "{}", agent.id());
            assert_eq!(
                blocking.approval_id.is_some(),
                awaited.approval_id.is_some()
            );
            assert!(!blocking.resolved_locally);
        }
    }
    // Inside an async runtime it refuses rather than block a worker.
    assert!(matches!(
        c.check_blocking(&enforced, shell("ls"), None),
        Err(ClientError::Internal(_))
    ));
    // Threads at once: one has the blocking connection, the others go through the shared one.
    let (many, agent) = (c.clone(), enforced.clone());
    let outcomes = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let calls: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| many.check_blocking(&agent, shell("ls"), None)))
                .collect();
            calls
                .into_iter()
                .map(|call| call.join().unwrap().unwrap())
                .collect::<Vec<_>>()
        })
    })
    .await
    .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| o.verdict.decision == Decision::Allow && !o.resolved_locally),
        "{outcomes:?}"
    );

    // A restarted runtime: the blocking connection broke, and the check goes on a new one.
    runtime.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runtime = RuntimeHandle::start(runtime_config).unwrap();
    let after_restart = decide_blocking(&c, &enforced, tool("db_drop", json!({}))).await;
    assert!(
        !after_restart.resolved_locally && after_restart.verdict.decision == Decision::Deny,
        "{after_restart:?}"
    );
    // No runtime: enforce fails closed, observe allows, both decided by the client.
    let socket = runtime.socket.clone();
    runtime.stop().await.unwrap();
    let denied = decide_blocking(&c, &enforced, shell("ls")).await;
    assert!(
        denied.resolved_locally && denied.verdict.decision == Decision::Deny,
        "{denied:?}"
    );
    let observe = client(dir.path(), &socket, Mode::Observe);
    let allowed = decide_blocking(&observe, &enforced, shell("ls")).await;
    assert!(allowed.resolved_locally && allowed.verdict.decision == Decision::Allow);
    gateway.stop().await.unwrap();
}

pub(crate) fn file_text(path: &Path) -> String {
    let mut text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(
        &std::fs::read(path.with_extension("db-wal")).unwrap_or_default(),
    ));
    text
}

/// A token superseded through one runtime stops working on another at once, not at its
/// expiry: an agent that registers again through runtime b loses the session it held on
/// runtime a, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_superseded_through_another_runtime_stops_working_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayHandle::start(options(&dir.path().join("state"), vec![data()]))
        .await
        .unwrap();
    let a = RuntimeHandle::start(gateway.runtime_config(dir.path().join("a"))).unwrap();
    let b = RuntimeHandle::start(gateway.runtime_config(dir.path().join("b"))).unwrap();
    // One key directory: the same agent, through two runtimes.
    let on_a = client(dir.path(), &a.socket, Mode::Enforce);
    let on_b = client(dir.path(), &b.socket, Mode::Enforce);
    let revoked_on = async |c: &Client, agent: &Agent| {
        eventually(Duration::from_secs(2), async || {
            let outcome = decide(c, agent, shell("ls")).await;
            outcome.verdict.decision == Decision::Deny
                && outcome.verdict.rule == "credential"
                && outcome
                    .verdict
                    .reason
                    .contains("not registered with this runtime")
        })
        .await
    };

    let first = register(&on_a, "bot", None).await;
    assert_eq!(
        decide(&on_a, &first, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let second = register(&on_b, "bot", None).await;
    assert_eq!(
        decide(&on_b, &second, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    assert!(
        revoked_on(&on_a, &first).await,
        "runtime a still takes the superseded token"
    );

    let third = register(&on_a, "bot", None).await;
    assert_eq!(
        decide(&on_a, &third, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    assert!(
        revoked_on(&on_b, &second).await,
        "runtime b still takes the superseded token"
    );
    // The current token is untouched: revocation ends only the sessions holding an old one.
    assert_eq!(
        decide(&on_a, &third, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

/// A runtime with the wrong token is refused by the gateway, and its agents are told the
/// gateway is out of reach, not that their own credentials are bad (which would stop their
/// SDKs from renewing them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_with_a_wrong_token_is_refused_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayHandle::start(options(&dir.path().join("state"), vec![data()]))
        .await
        .unwrap();
    let mut config = gateway.runtime_config(dir.path().join("rt"));
    config.gateway_token = "not-the-token".into();
    let runtime = RuntimeHandle::start(config).unwrap();
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let refused = c
        .register(AgentSpec {
            agent_id: "bot".into(),
            ..AgentSpec::default()
        })
        .await
        .unwrap_err();
    assert!(!refused.is_unauthenticated(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("the gateway refuses this runtime"),
        "{refused}"
    );
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

/// `close()` ends a client and its clones: the call under way and every later one end with
/// `Closed`, and its connection goes (the runtime, serving one at a time, takes another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_client_ends_its_calls_and_frees_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RuntimeSettings {
        max_connections: Some(1),
        ..RuntimeSettings::default()
    };
    let up = Up::start(options(&dir.path().join("state"), vec![data()]), settings)
        .await
        .unwrap();
    let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
    let agent = register(&c, "bot", None).await;
    let other = client(&dir.path().join("other"), &up.runtime.socket, Mode::Enforce);
    let turned_away = other.register(AgentSpec {
        agent_id: "other".into(),
        ..AgentSpec::default()
    });
    assert!(turned_away.await.is_err(), "one connection at most");

    let pending = decide(&c, &agent, shell("rm -r x")).await;
    assert_eq!(pending.verdict.decision, Decision::Pending);
    let waiting = c.await_approval(&agent, pending, Duration::from_secs(60));
    let clone = c.clone();
    clone.close();
    assert!(c.is_closed());
    assert!(matches!(waiting.await, Err(ClientError::Closed)));
    assert!(matches!(
        c.check(&agent, shell("ls"), None).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(
        c.report(&agent, vec![], vec![]).await,
        Err(ClientError::Closed)
    ));
    let answer = check_blocking(&c, &agent, shell("ls")).await;
    assert!(matches!(answer, Err(ClientError::Closed)), "{answer:?}");

    let served = eventually(Duration::from_secs(5), async || {
        other
            .register(AgentSpec {
                agent_id: "other".into(),
                ..AgentSpec::default()
            })
            .await
            .is_ok()
    })
    .await;
    assert!(served, "the closed client's connection was not let go");
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_database_unredacted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, c, agent) = start_bot(dir.path(), &state).await;
    let secret_action = shell(&format!("aws s3 ls --key {AWS_KEY}"));
    decide(&c, &agent, secret_action.clone()).await;
    let report = Report {
        kind: EventKind::Error,
        action: secret_action,
        // `EMP-` numbers are the test policy's custom pattern (`spec.data.patterns`).
        detail: Some(
            json!({ "error": "login failed for jane.doe@example.com", "token": AWS_KEY, "badge": "EMP-123456" }),
        ),
        session_id: Some(format!("run {AWS_KEY}")),
    };
    c.report(&agent, vec![report], vec![]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || stored_events(&up.gateway)
            .await
            .len()
            >= 2)
        .await
    );
    up.stop().await.unwrap();

    for db in ["gateway.db", "runtime.db"] {
        let text = file_text(&state.join(db));
        assert!(!text.is_empty());
        assert!(!text.contains(AWS_KEY), "{db} holds the key");
        assert!(
            !text.contains("jane.doe@example.com"),
            "{db} holds the email"
        );
        assert!(!text.contains("EMP-123456"), "{db} holds the badge number");
    }
    let stored = rusqlite::Connection::open(state.join("gateway.db")).unwrap();
    let events: Vec<String> = stored
        .prepare("SELECT event FROM audit_records")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().any(|e| e.contains("[REDACTED:employee_id]")));
    // Receipts are keyed with the deployment's runtime token: the key's digest that anyone
    // could compute is in none of them, the one `aasm audit digest` gives with the token is.
    let looked_up = crate::aasm_with_stdin(
        &["audit", "digest", "--state-dir", state.to_str().unwrap()],
        format!("{AWS_KEY}\n").as_bytes(),
    );
    assert!(looked_up.status.success(), "{}", crate::stderr(&looked_up));
    let keyed = String::from_utf8(looked_up.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let plain = aa_security::Scanner::new()
        .unwrap()
        .receipt_digest(AWS_KEY.as_bytes());
    assert_ne!(keyed, plain);
    let nothing = crate::aasm_with_stdin(
        &["audit", "digest", "--state-dir", state.to_str().unwrap()],
        b"\n",
    );
    assert_eq!(nothing.status.code(), Some(2));
    assert!(crate::stderr(&nothing).contains("no value on stdin"));
    let no_token = crate::aasm_with_stdin(
        &[
            "audit",
            "digest",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ],
        AWS_KEY.as_bytes(),
    );
    assert_eq!(no_token.status.code(), Some(2));
    assert!(crate::stderr(&no_token).contains("no runtime token"));
    for event in events {
        assert!(event.contains("[REDACTED:aws_access_key]"), "{event}");
        assert!(
            event.contains(&format!("\"sha256_prefix\":\"{keyed}\"")),
            "the key's receipt is keyed: {event}"
        );
        assert!(!event.contains(&plain), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_gets_its_lineage_and_an_unapproved_pending_check_denies() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path()).await;
    let c = client(dir.path(), &up.runtime.socket, Mode::Enforce);
    let root = register(&c, "root", Some("ops")).await;
    assert_eq!(root.context().depth, 0);
    let spec = |id: &str| AgentSpec {
        agent_id: id.into(),
        parent_agent_id: Some("root".into()),
        delegation_reason: Some("triage".into()),
        ..AgentSpec::default()
    };
    // A client without the root's key cannot hang a child under it: naming a parent is no
    // consent.
    let stranger = client(
        &dir.path().join("elsewhere"),
        &up.runtime.socket,
        Mode::Enforce,
    );
    let refused = stranger.register(spec("squatter")).await.unwrap_err();
    assert!(refused.is_unauthenticated(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("carries neither parent_signature"),
        "{refused}"
    );
    // Where the root's key is not (another host), a child registers with a grant the root
    // signed ahead of time: the client's, or `aasm agents grant`'s.
    let with_grant = async |id: &str, grant: String| {
        stranger
            .register(AgentSpec {
                spawn_grant: Some(grant),
                ..spec(id)
            })
            .await
            .unwrap()
    };
    let granted = c
        .grant_spawn("root", "remote", Duration::from_secs(60))
        .unwrap();
    let remote = with_grant("remote", granted).await;
    assert_eq!(remote.context().parent.as_deref(), Some("root"));
    let aasm_grant = |child: &str, keys: &Path| {
        let args = [
            "agents",
            "grant",
            "--parent",
            "root",
            "--child",
            child,
            "--state-dir",
        ];
        let mut args = args.to_vec();
        args.push(keys.to_str().unwrap());
        crate::aasm(&args)
    };
    let printed = aasm_grant("remote-2", &dir.path().join("sdk"));
    assert!(printed.status.success(), "{}", crate::stderr(&printed));
    let granted = String::from_utf8(printed.stdout).unwrap().trim().to_owned();
    assert_eq!(with_grant("remote-2", granted).await.context().depth, 1);
    // Where the parent's key is not, no grant is signed.
    let unsigned = aasm_grant("remote-3", &dir.path().join("elsewhere"));
    assert_eq!(unsigned.status.code(), Some(2));
    assert!(
        crate::stderr(&unsigned).contains("no key for agent \"root\""),
        "{}",
        crate::stderr(&unsigned)
    );
    let child = c.register(spec("child")).await.unwrap();
    // The gateway counts the depth and hands down the parent's team.
    let context = child.context();
    assert_eq!(
        (
            context.depth,
            context.parent.as_deref(),
            context.team.as_deref()
        ),
        (1, Some("root"), Some("ops"))
    );

    let pending = decide(&c, &child, shell("rm -r x")).await;
    assert_eq!(pending.verdict.decision, Decision::Pending);
    let started = std::time::Instant::now();
    let resolved = c
        .await_approval(&child, pending.clone(), Duration::from_millis(200))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(resolved.verdict.decision, Decision::Deny);
    assert_eq!(resolved.verdict.rule, pending.verdict.rule);
    assert!(
        resolved
            .verdict
            .reason
            .starts_with("no decision within 0.2 s"),
        "{resolved:?}"
    );
    assert!(!resolved.resolved_locally);
    let allowed = decide(&c, &child, shell("ls")).await;
    assert_eq!(
        c.await_approval(&child, allowed.clone(), Duration::from_secs(60))
            .await
            .unwrap(),
        allowed
    );

    // An edge's metadata is an event field like any other: stored, and scanned.
    let edge = aa_core::TopologyEdge {
        from_agent_id: "root".into(),
        to_agent_id: "child".into(),
        kind: aa_core::EdgeKind::Messaged,
        tool: None,
        created_at_ms: 1,
        metadata: Some(json!({ "note": format!("use {AWS_KEY}") })),
    };
    assert_eq!(c.report(&root, vec![], vec![edge]).await.unwrap(), 1);
    assert!(
        eventually(Duration::from_secs(5), async || {
            stored_events(&up.gateway).await.iter().any(|e| {
                e["kind"] == "edge"
                    && e["detail"]["kind"] == "messaged"
                    && e["detail"]["metadata"]["note"] == "use [REDACTED:aws_access_key]"
            })
        })
        .await
    );
    up.stop().await.unwrap();
}

/// A hostile export is refused at once: a checkpoint naming a gateway by a did a megabyte
/// long (base58 decodes in quadratic time: minutes for this one), and a line longer than any
/// record could be (held whole in memory before).
#[test]
fn a_hostile_export_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = json!({"checkpoint": {
        "id": 1,
        "created_at_ms": 1,
        "heads": [],
        "gateway_did": format!("did:key:z{}", "2".repeat(1_000_000)),
        "signature": "00",
    }});
    let file = dir.path().join("did.jsonl");
    std::fs::write(&file, format!("{checkpoint}\n")).unwrap();
    let out = crate::aasm(&["audit", "verify", "--export", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::stderr(&out));
    assert!(
        crate::stdout(&out).contains("TAMPERED"),
        "{}",
        crate::stdout(&out)
    );
    let file = dir.path().join("long.jsonl");
    let mut long = std::fs::File::create(&file).unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..65 {
        long.write_all(&chunk).unwrap();
    }
    drop(long);
    let out = crate::aasm(&["audit", "verify", "--export", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::stderr(&out));
    assert!(
        crate::stderr(&out).contains("a line longer than 64 MiB"),
        "{}",
        crate::stderr(&out)
    );
}

fn verify(state: &Path) -> (i32, String) {
    let out = crate::aasm(&["audit", "verify", "--state-dir", state.to_str().unwrap()]);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn audit_tail_prints_in_append_order_and_follows_every_stream() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = SqliteStore::open(&gateway_database(state)).unwrap();
    let append = async |stream: &str, n: u64| {
        let event = NewEvent::new(format!("{stream}/{n}"), n, &json!({"n": n}));
        store.append_events(stream, vec![event]).await.unwrap();
    };
    for n in 1..=3 {
        append("rt-b", n).await;
    }
    append("rt-a", 1).await;
    let ids = |out: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"].to_string())
            .collect()
    };
    let dir_arg = state.to_str().unwrap();
    let last = crate::aasm(&["audit", "tail", "-n", "2", "--state-dir", dir_arg]);
    assert_eq!(ids(&last.stdout), [r#""rt-b/3""#, r#""rt-a/1""#]);

    // Following: a record appended to the stream that sorts first comes out once, after what
    // was printed, and nothing printed before comes again.
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_aasm"))
        .args([
            "audit",
            "tail",
            "-n",
            "1",
            "--follow",
            "--state-dir",
            dir_arg,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines.send(line.unwrap());
        }
    });
    let next = || printed.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(next().contains(r#""rt-a/1""#));
    append("rt-a", 2).await;
    append("rt-b", 4).await;
    assert!(next().contains(r#""rt-a/2""#));
    assert!(next().contains(r#""rt-b/4""#));
    assert!(printed.recv_timeout(Duration::from_secs(1)).is_err());
    tail.kill().unwrap();
    let _ = tail.wait();
}

/// A gateway and runtime whose bot reported `n` events ("step 0" …), once all are stored.
async fn stored_steps(dir: &Path, state: &Path, n: usize) -> Up {
    let (up, c, agent) = start_bot(dir, state).await;
    report(&c, &agent, n, "step").await;
    assert!(
        eventually(Duration::from_secs(5), async || stored_events(&up.gateway)
            .await
            .len()
            >= n)
        .await
    );
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_by_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = stored_steps(dir.path(), &state, 6).await;
    up.stop().await.unwrap();

    let (code, out) = verify(&state);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 records"), "{out}");
    assert!(!out.contains(" 0 checkpoints"), "{out}");
    // The gateway signed its heads as it stopped: nothing is left unsigned.
    assert!(
        out.contains("; 0 records after the last checkpoint"),
        "{out}"
    );

    // An export verifies as the database does; an edit or a cut in it is named.
    let exported = crate::aasm(&["audit", "export", "--state-dir", state.to_str().unwrap()]);
    let export = String::from_utf8(exported.stdout).unwrap();
    let export_file = dir.path().join("audit.jsonl");
    let verify_export = |text: &str| {
        std::fs::write(&export_file, text).unwrap();
        let out = crate::aasm(&["audit", "verify", "--export", export_file.to_str().unwrap()]);
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(verify_export(&export), (0, out.clone()));
    // Pinned to the gateway's key, an export must be signed by it, and be signed at all.
    let pinned = |text: &str, did: &str| {
        std::fs::write(&export_file, text).unwrap();
        let file = export_file.to_str().unwrap();
        let out = crate::aasm(&["audit", "verify", "--export", file, "--gateway-did", did]);
        (
            out.status.code().unwrap(),
            crate::stdout(&out),
            crate::stderr(&out),
        )
    };
    let own = aa_identity::keyfile::load_or_create(&state.join("gateway.key"))
        .unwrap()
        .public()
        .did();
    assert_eq!(pinned(&export, &own).0, 0);
    let other = aa_identity::Keypair::generate().unwrap().public().did();
    let (code, foreign, _) = pinned(&export, &other);
    assert_eq!(code, 1, "{foreign}");
    assert!(
        foreign.contains(&format!("not by this gateway ({other})")),
        "{foreign}"
    );
    let unsigned: Vec<&str> = export
        .lines()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .collect();
    assert_eq!(verify_export(&unsigned.join("\n")).0, 0);
    let (code, unsigned, _) = pinned(&unsigned.join("\n"), &own);
    assert_eq!(code, 1, "{unsigned}");
    assert!(unsigned.contains("no checkpoint signed by"), "{unsigned}");
    // Emptied whole, it holds no checkpoint either.
    let (code, emptied, _) = pinned("", &own);
    assert_eq!(code, 1, "{emptied}");
    assert!(emptied.contains("no checkpoint signed by"), "{emptied}");
    let (code, _, bad) = pinned(&export, "did:key:nonsense");
    assert_eq!(code, 2, "{bad}");
    assert!(bad.contains("--gateway-did"), "{bad}");
    // The state directory a shell exports for the other commands does not stand in the way.
    let with_env = std::process::Command::new(env!("CARGO_BIN_EXE_aasm"))
        .args(["audit", "verify", "--export", export_file.to_str().unwrap()])
        .env("AASM_STATE_DIR", dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(
        (
            with_env.status.code(),
            String::from_utf8_lossy(&with_env.stdout)
        ),
        (Some(0), out.clone().into()),
        "{}",
        String::from_utf8_lossy(&with_env.stderr)
    );
    // A pipe is read once, and verifies the same.
    let piped = crate::aasm_with_stdin(
        &["audit", "verify", "--export", "/dev/stdin"],
        export.as_bytes(),
    );
    assert_eq!(
        (
            piped.status.code().unwrap(),
            String::from_utf8_lossy(&piped.stdout).into_owned()
        ),
        (0, out.clone())
    );
    let piped = crate::aasm_with_stdin(
        &["audit", "verify", "--export", "/dev/stdin"],
        export.replace("step 2", "step 9").as_bytes(),
    );
    assert_eq!(piped.status.code(), Some(1));
    let (code, edited) = verify_export(&export.replace("step 2", "step 9"));
    assert_eq!(code, 1, "{edited}");
    assert!(
        edited.contains("TAMPERED") && edited.contains("sequence 3"),
        "{edited}"
    );
    // An edit that parses back to the same value is named too: a key given twice, the
    // original last (which this parser keeps, and others would not).
    let doubled = export.replace("\"event\":{", "\"event\":{\"kind\":\"forged\",");
    assert_ne!(doubled, export);
    let (code, edited) = verify_export(&doubled);
    assert_eq!(code, 1, "{edited}");
    assert!(
        edited.contains("TAMPERED") && edited.contains("(edited)"),
        "{edited}"
    );
    let mut lines: Vec<&str> = export.lines().collect();
    let last_record = lines
        .iter()
        .rposition(|l| !l.starts_with("{\"checkpoint\""))
        .unwrap();
    lines.remove(last_record);
    let (code, cut) = verify_export(&lines.join("\n"));
    assert_eq!(code, 1, "{cut}");
    assert!(cut.contains("truncated or deleted"), "{cut}");

    // A database away from its gateway's key is checked against a key given, never against
    // the keys its checkpoints name themselves.
    let copied = dir.path().join("copied");
    std::fs::create_dir_all(&copied).unwrap();
    std::fs::copy(state.join("gateway.db"), copied.join("gateway.db")).unwrap();
    let keyless = crate::aasm(&["audit", "verify", "--state-dir", copied.to_str().unwrap()]);
    assert_eq!(
        keyless.status.code(),
        Some(2),
        "{}",
        crate::stdout(&keyless)
    );
    assert!(
        crate::stderr(&keyless).contains("no gateway key at"),
        "{}",
        crate::stderr(&keyless)
    );
    let verify_copied = || {
        crate::aasm(&[
            "audit",
            "verify",
            "--state-dir",
            copied.to_str().unwrap(),
            "--gateway-did",
            &own,
        ])
    };
    let given = verify_copied();
    assert_eq!(given.status.code(), Some(0), "{}", crate::stdout(&given));

    // Verifying reads a database and changes nothing in it: one a migration behind is refused,
    // not brought up to date (its checkpoints' triggers, the latest migration, taken out).
    let behind = copied.join("gateway.db");
    let conn = rusqlite::Connection::open(&behind).unwrap();
    conn.execute_batch(
        "DROP TRIGGER checkpoints_no_update; DROP TRIGGER checkpoints_no_delete; \
         PRAGMA user_version = 8;",
    )
    .unwrap();
    drop(conn);
    let refused = verify_copied();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        crate::stdout(&refused)
    );
    assert!(
        crate::stderr(&refused).contains("schema version 8"),
        "{}",
        crate::stderr(&refused)
    );
    let conn = rusqlite::Connection::open(&behind).unwrap();
    let (version, triggers): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), \
             (SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'checkpoints_no_%')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (version, triggers),
        (8, 0),
        "verifying changed the database"
    );

    let db = state.join("gateway.db");
    let pristine = std::fs::read(&db).unwrap();
    let tamper = |sql: &str| {
        std::fs::write(&db, &pristine).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete; {sql}"
        ))
        .unwrap();
    };
    let attacks = [
        (
            "edit",
            "UPDATE audit_records SET event = replace(event, 'step 2', 'step 9') WHERE sequence = 3;",
            "sequence 3",
        ),
        (
            "delete",
            "DELETE FROM audit_records WHERE sequence = 4;",
            "sequence",
        ),
        (
            "reorder",
            "UPDATE audit_records SET sequence = 100 WHERE sequence = 2; UPDATE audit_records SET sequence = 2 WHERE sequence = 5; UPDATE audit_records SET sequence = 5 WHERE sequence = 100;",
            "sequence 2",
        ),
        // What the gateway never writes is named as the record it is, not a read error:
        // a row inserted ahead of every stream (the triggers stop updates, not inserts),
        // a sequence that is not a number, an event that is not text.
        (
            "insert before every stream",
            "INSERT INTO audit_records SELECT '', 0, 'forged', event, prev_hash, hash, 0 \
             FROM audit_records WHERE sequence = 1 LIMIT 1;",
            "event \"forged\"",
        ),
        (
            "sequence of text",
            "UPDATE audit_records SET sequence = 'x' WHERE sequence = 6;",
            "sequence 0",
        ),
        (
            "event of bytes",
            "UPDATE audit_records SET event = CAST(x'7bff7d' AS BLOB) WHERE sequence = 2;",
            "sequence 2",
        ),
    ];
    for (name, sql, named) in attacks {
        tamper(sql);
        let (code, out) = verify(&state);
        assert_eq!(code, 1, "{name} went unnoticed: {out}");
        assert!(
            out.contains("TAMPERED") && out.contains(named),
            "{name}: {out}"
        );
    }
}

/// Cutting the log back to an older checkpoint, the newer ones deleted with the records after
/// it, leaves a log that verifies on its own; a copy of the newest checkpoint kept elsewhere
/// (`aasm audit checkpoint`) names the cut, in the database and in an export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_back_with_its_checkpoints_is_named_against_a_kept_copy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = stored_steps(dir.path(), &state, 6).await;
    up.stop().await.unwrap();
    let state_dir = state.to_str().unwrap();
    let printed = crate::aasm(&["audit", "checkpoint", "--state-dir", state_dir]);
    assert_eq!(
        printed.status.code(),
        Some(0),
        "{}",
        crate::stderr(&printed)
    );
    let kept = dir.path().join("kept.json");
    std::fs::write(&kept, &printed.stdout).unwrap();
    let kept_file = kept.to_str().unwrap();
    let verify_kept = |args: &[&str]| {
        let out = crate::aasm(&[&["audit", "verify", "--checkpoint", kept_file], args].concat());
        (out.status.code().unwrap(), crate::stdout(&out))
    };
    let (code, whole) = verify_kept(&["--state-dir", state_dir]);
    assert_eq!(code, 0, "{whole}");

    // An export cut back: its checkpoints and its last record gone.
    let exported = crate::aasm(&["audit", "export", "--state-dir", state_dir]);
    let export = String::from_utf8(exported.stdout).unwrap();
    let mut records: Vec<&str> = export
        .lines()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .collect();
    records.pop();
    let cut_export = dir.path().join("cut.jsonl");
    std::fs::write(&cut_export, records.join("\n")).unwrap();
    let cut_file = cut_export.to_str().unwrap();
    let alone = crate::aasm(&["audit", "verify", "--export", cut_file]);
    assert_eq!(alone.status.code(), Some(0), "{}", crate::stdout(&alone));
    let (code, named) = verify_kept(&["--export", cut_file]);
    assert_eq!(code, 1, "{named}");
    assert!(
        named.contains("TAMPERED: checkpoint ")
            && named.contains(", kept outside the log, is missing from it (its last is none)"),
        "{named}"
    );

    // The database cut back the same way.
    let conn = rusqlite::Connection::open(state.join("gateway.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_records_no_delete; DROP TRIGGER checkpoints_no_delete; \
         DELETE FROM checkpoints; \
         DELETE FROM audit_records WHERE sequence = (SELECT MAX(sequence) FROM audit_records);",
    )
    .unwrap();
    drop(conn);
    let (code, alone) = verify(&state);
    assert_eq!(code, 0, "{alone}");
    assert!(alone.contains("5 records"), "{alone}");
    let (code, named) = verify_kept(&["--state-dir", state_dir]);
    assert_eq!(code, 1, "{named}");
    assert!(named.contains("is missing from it"), "{named}");

    // What is not a checkpoint is refused as such, before anything is read.
    std::fs::write(&kept, "{\"checkpoint\": 7}").unwrap();
    let refused = crate::aasm(&["audit", "verify", "--checkpoint", kept_file]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        crate::stderr(&refused).contains("not a checkpoint"),
        "{}",
        crate::stderr(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_pages_over_http_by_count_and_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = stored_steps(dir.path(), &state, 5).await;
    let token = std::fs::read_to_string(aa_cli::up::admin_token_file(&state)).unwrap();
    let get = |query: &str| {
        let path = format!("/api/v1/audit?{query}");
        crate::http(up.gateway.http, "GET", &path, Some(token.trim()), "")
    };
    let place = |r: &serde_json::Value| (r["stream_id"].clone(), r["sequence"].clone());
    let (code, whole) = get("limit=1000");
    assert_eq!(code, 200, "{whole}");
    let all: Vec<_> = whole["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(place)
        .collect();
    assert!(all.len() >= 5, "{whole}");
    assert_eq!(whole["next"], all.len());

    // Two at a time, by count and by cursor, read the same records in the same order.
    let (mut by_count, mut after) = (Vec::new(), 0);
    loop {
        let (code, page) = get(&format!("limit=2&after={after}"));
        assert_eq!(code, 200, "{page}");
        let records = page["records"].as_array().unwrap();
        if records.is_empty() {
            break;
        }
        by_count.extend(records.iter().map(place));
        assert!(
            by_count.len() <= all.len(),
            "a page came twice: {by_count:?}"
        );
        after = page["next"].as_u64().unwrap();
    }
    let (mut by_cursor, mut query) = (Vec::new(), "limit=2".to_owned());
    let last_cursor = loop {
        let (code, page) = get(&query);
        assert_eq!(code, 200, "{page}");
        assert!(page.get("next").is_none() || query == "limit=2", "{page}");
        let records = page["records"].as_array().unwrap();
        let cursor = page["cursor"].as_str().unwrap().to_owned();
        if records.is_empty() {
            break cursor;
        }
        by_cursor.extend(records.iter().map(place));
        assert!(
            by_cursor.len() <= all.len(),
            "a page came twice: {by_cursor:?}"
        );
        query = format!("limit=2&cursor={cursor}");
    };
    assert_eq!(by_count, all);
    assert_eq!(by_cursor, all);
    // An empty page gives back where it started, to ask again from later.
    let (stream, sequence) = all.last().unwrap();
    assert_eq!(
        last_cursor,
        format!("{}:{}", stream.as_str().unwrap(), sequence)
    );

    // Each refused naming what was wrong; a number past what the store holds is the
    // request's mistake, not the gateway's failure.
    for (bad, named) in [
        ("cursor=nowhere", "cursor"),
        ("cursor=rt-1:x", "cursor"),
        ("cursor=rt-1:9223372036854775808", "cursor"),
        ("after=0&cursor=rt-1:1", "cursor"),
        ("after=9223372036854775808", "after"),
    ] {
        let (code, body) = get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(named),
            "{bad}: {body}"
        );
    }
    up.stop().await.unwrap();
}

/// A check of `shell ls` by agent `bot` presenting `token`.
/// A check as a client writes it, its arguments as raw JSON text.
pub(crate) fn check_frame(agent: &str, token: &str, args_json: String) -> pb::Frame {
    let mut action = pb::Action::from(&shell("ls"));
    if let Some(pb::action::Kind::ToolCall(call)) = &mut action.kind {
        call.args_json = args_json;
    }
    pb::Frame {
        request_id: 3,
        body: Some(pb::frame::Body::Check(pb::CheckRequest {
            agent_id: agent.into(),
            credential_token: token.into(),
            action: Some(action),
            session_id: String::new(),
        })),
    }
}

/// The decision a frame carries; anything else fails the test.
pub(crate) fn decision_of(frame: Option<pb::Frame>) -> pb::PolicyDecision {
    match frame.and_then(|f| f.body) {
        Some(pb::frame::Body::Decision(d)) => d.decision.unwrap(),
        other => panic!("expected a decision, got {other:?}"),
    }
}

pub(crate) fn raw_frame(stream: &mut std::os::unix::net::UnixStream) -> Option<pb::Frame> {
    let mut decoder = FrameDecoder::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Ok(Some(frame)) = decoder.next_frame() {
            return Some(frame);
        }
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        decoder.extend(&buffer[..n]);
    }
}

fn error_code(frame: Option<pb::Frame>) -> Option<pb::ErrorCode> {
    match frame?.body? {
        pb::frame::Body::Error(e) => pb::ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_bad_tokens_are_refused_while_others_work() {
    let dir = tempfile::tempdir().unwrap();
    let (up, c, agent) = start_bot(dir.path(), &dir.path().join("state")).await;
    let socket = up.runtime.socket.clone();

    let socket_for_raw = socket.clone();
    let token = agent.credential_token();
    let raw = tokio::task::spawn_blocking(move || {
        let connect = || std::os::unix::net::UnixStream::connect(&socket_for_raw).unwrap();
        // Garbage in a well-sized frame.
        let mut s = connect();
        s.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let garbage = error_code(raw_frame(&mut s));
        // A header announcing more than the limit.
        let mut s = connect();
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let oversized = error_code(raw_frame(&mut s));
        // A truncated frame, then silence: the connection is simply dropped.
        let mut s = connect();
        s.write_all(&[0, 0, 1, 0, 1, 2]).unwrap();
        drop(s);
        // A check with a forged token on a healthy connection.
        let mut s = connect();
        s.write_all(&encode(&check_frame("bot", "aat1.forged.token", LS.into())).unwrap())
            .unwrap();
        let forged = raw_frame(&mut s);
        s.write_all(&encode(&check_frame("bot", &token, LS.into())).unwrap())
            .unwrap();
        let genuine = raw_frame(&mut s);
        (garbage, oversized, forged, genuine)
    })
    .await
    .unwrap();
    assert_eq!(raw.0, Some(pb::ErrorCode::MalformedFrame));
    assert_eq!(raw.1, Some(pb::ErrorCode::FrameTooLarge));
    let forged = decision_of(raw.2);
    assert_eq!(
        (forged.decision, forged.matched_rule.as_str()),
        (pb::Decision::Deny as i32, "credential")
    );
    assert_eq!(decision_of(raw.3).decision, pb::Decision::Allow as i32);

    // A renewed token supersedes the old one: replaying the old one is refused.
    let old = agent.credential_token();
    c.heartbeat(&agent).await.unwrap();
    assert_ne!(agent.credential_token(), old);
    let socket_for_replay = socket.clone();
    let replayed = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket_for_replay).unwrap();
        s.write_all(&encode(&check_frame("bot", &old, LS.into())).unwrap())
            .unwrap();
        raw_frame(&mut s)
    })
    .await
    .unwrap();
    let replayed = decision_of(replayed);
    assert_eq!(
        (replayed.decision, replayed.matched_rule.as_str()),
        (pb::Decision::Deny as i32, "credential")
    );

    // The healthy client never noticed.
    assert_eq!(
        decide(&c, &agent, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    // The two broken frames are in the audit log as refusals.
    let refusal_codes = async || -> Vec<String> {
        stored_events(&up.gateway)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "refusal")
            .filter_map(|e| e["detail"]["code"].as_str().map(str::to_owned))
            .collect()
    };
    let recorded = eventually(Duration::from_secs(10), async || {
        let codes = refusal_codes().await;
        ["MALFORMED_FRAME", "FRAME_TOO_LARGE"]
            .iter()
            .all(|c| codes.iter().any(|code| code == c))
    })
    .await;
    assert!(recorded, "{:?}", refusal_codes().await);
    up.stop().await.unwrap();
}

/// A client that sends many checks before reading any answer: the answers outgrow the
/// socket's buffer, so the runtime waits for room to write (its connections are registered
/// for input alone) and every answer still arrives, whole and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_client_reads_late_all_arrive() {
    const CHECKS: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let (up, c, agent) = start_bot(dir.path(), &dir.path().join("state")).await;
    let socket = up.runtime.socket.clone();
    let token = agent.credential_token();
    let answered = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let mut sending = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            for id in 1..=CHECKS {
                let mut frame = check_frame("bot", &token, LS.into());
                frame.request_id = id;
                sending.write_all(&encode(&frame).unwrap()).unwrap();
            }
        });
        // Long enough for the answers to fill the socket's buffer before any is read.
        std::thread::sleep(Duration::from_millis(500));
        let mut decoder = FrameDecoder::new();
        let mut buffer = [0u8; 16 * 1024];
        let mut ids = Vec::new();
        let mut answer_bytes = 0;
        while (ids.len() as u64) < CHECKS {
            match decoder.next_frame().unwrap() {
                Some(frame) => {
                    ids.push(frame.request_id);
                    decision_of(Some(frame));
                }
                None => {
                    let n = stream.read(&mut buffer).unwrap();
                    assert!(n > 0, "closed after {} answers", ids.len());
                    answer_bytes += n;
                    decoder.extend(&buffer[..n]);
                }
            }
        }
        sender.join().unwrap();
        (ids, answer_bytes)
    })
    .await
    .unwrap();
    let (mut ids, answer_bytes) = answered;
    // More than a Unix socket buffers by default (net.core.wmem_default, 208 KiB).
    assert!(answer_bytes > 256 * 1024, "{answer_bytes} bytes of answers");
    ids.sort_unstable();
    assert_eq!(ids, (1..=CHECKS).collect::<Vec<_>>());
    // The connection's reader and the healthy client carry on.
    assert_eq!(
        decide(&c, &agent, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_the_runtime_does_not_serve_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayHandle::start(options(&dir.path().join("state"), vec![data()]))
        .await
        .unwrap();
    let mut config = gateway.runtime_config(dir.path().join("runtime"));
    let own_uid = std::fs::metadata(dir.path())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    // Serve only another uid: this process is now the foreign peer.
    config.allowed_uids = vec![own_uid.wrapping_add(1)];
    let runtime = RuntimeHandle::start(config).unwrap();
    // Only its owner may connect at all: the socket is 0600, in a directory that is 0700.
    let mode = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&runtime.socket), 0o600);
    assert_eq!(mode(runtime.socket.parent().unwrap()), 0o700);
    let socket = runtime.socket.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        raw_frame(&mut s).and_then(|f| f.body)
    })
    .await
    .unwrap();
    match refused {
        Some(pb::frame::Body::Error(e)) => {
            assert_eq!(e.code, pb::ErrorCode::Unauthenticated as i32);
            assert!(
                e.message.contains(&format!("uid {own_uid}")),
                "{}",
                e.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let c = client(dir.path(), &runtime.socket, Mode::Enforce);
    let err = c
        .register(AgentSpec {
            agent_id: "bot".into(),
            ..AgentSpec::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not served"), "{err}");
    // Both refusals are in the audit log, under the peer's uid.
    let recorded = eventually(Duration::from_secs(10), async || {
        let refusals: Vec<serde_json::Value> = stored_events(&gateway)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "refusal")
            .collect();
        refusals.len() == 2
            && refusals.iter().all(|e| {
                e["agent"]["id"] == format!("uid:{own_uid}")
                    && e["detail"]["code"] == "UNAUTHENTICATED"
                    && e["verdict"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("not served"))
            })
    })
    .await;
    assert!(recorded, "{:?}", stored_events(&gateway).await);
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

/// `aasm up` checks its runtime's settings before its gateway binds or writes anything.
#[test]
fn aasm_up_names_a_bad_socket_limit_before_starting_its_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = crate::aasm(&[
        "up",
        "--state-dir",
        state.to_str().unwrap(),
        "--grpc",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--max-connections",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        crate::stderr(&out).contains("max_connections: must be at least 1"),
        "{}",
        crate::stderr(&out)
    );
    assert!(!aa_cli::up::gateway_address_file(&state).exists());
}

/// `aasm up` whose runtime fails once started (its database is not one) stops, saying why,
/// rather than staying up with its gateway alone.
#[test]
fn aasm_up_stops_when_its_runtime_fails() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("runtime.db"), "not a database ".repeat(100)).unwrap();
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_aasm"))
        .args(["up", "--state-dir", state.to_str().unwrap()])
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded, so that a process that stays up fails the test rather than hanging it.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > until {
            up.kill().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: the runtime failed: outbox:"),
        "{stderr}"
    );
}

/// `aasm runtime` takes its socket's limits from flags, validated before anything is bound:
/// a bad value exits 2 naming the setting. Without the gateway's runtime token it does not
/// start either.
#[test]
fn aasm_runtime_names_a_bad_socket_limit() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let out = crate::aasm(&[
        "runtime",
        "--state-dir",
        state,
        "--gateway",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        crate::stderr(&out).contains("no runtime token")
            && crate::stderr(&out).contains("--gateway-token-file"),
        "{}",
        crate::stderr(&out)
    );
    std::fs::write(aa_cli::up::runtime_token_file(dir.path()), "0123abcd\n").unwrap();
    for (flag, value, named) in [
        (
            "--max-connections",
            "0",
            "max_connections: must be at least 1",
        ),
        (
            "--frame-timeout",
            "0",
            "frame_timeout: must be more than zero",
        ),
        (
            "--frame-timeout",
            "soon",
            "\"soon\" is not a number of seconds",
        ),
        (
            "--frame-timeout",
            "1e19",
            "frame_timeout: must be at most an hour",
        ),
        (
            "--max-connections",
            "18446744073709551615",
            "max_connections: must be at most 1048576",
        ),
        (
            "--max-request-bytes",
            "1000",
            "max_request_bytes: must hold at least one frame",
        ),
    ] {
        let args = [
            "runtime",
            "--state-dir",
            state,
            "--gateway",
            "http://127.0.0.1:1",
            flag,
            value,
        ];
        let out = crate::aasm(&args);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(
            crate::stderr(&out).contains(named),
            "{}",
            crate::stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_up_on_a_state_directory_in_use_leaves_the_first_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = start_up(&state).await;
    let address = aa_cli::up::gateway_address_file(&state);
    let written = std::fs::read_to_string(&address).unwrap();
    let second = Up::start(options(&state, vec![data()]), RuntimeSettings::default()).await;
    let Err(refused) = second else {
        panic!("a second runtime served the same socket");
    };
    assert!(
        format!("{refused:#}").contains("another runtime is serving this socket"),
        "{refused:#}"
    );
    // The operator commands still find the running gateway.
    assert_eq!(std::fs::read_to_string(&address).unwrap(), written);
    up.stop().await.unwrap();
}
