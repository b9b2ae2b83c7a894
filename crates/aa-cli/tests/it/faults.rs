//! Faults with real processes: the gateway and the runtime are separate `aasm` processes,
//! killed with SIGKILL and started again on the same state, or cut apart for minutes. After each, every event the
//! runtime acknowledged is in the gateway's store exactly once and the audit log verifies.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aa_bench::stack::{Service, Signal, Stack, StackOptions};
use aa_core::{Decision, EventKind, Mode};
use aa_sdk_client::{Agent, Client, Report};
use serde_json::{Value, json};

use crate::governed::{client, decide, eventually, register, tool};
use crate::{aasm, stdout};

/// Sends `n` events in batches of 100, each marked `<phase>-<i>`; returns the marks the
/// runtime acknowledged (a batch that fails is not acknowledged, and counts for nothing).
async fn send(c: &Client, agent: &Agent, phase: &str, n: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for start in (0..n).step_by(100) {
        let marks: Vec<String> = (start..(start + 100).min(n))
            .map(|i| format!("{phase}-{i}"))
            .collect();
        let reports = marks
            .iter()
            .map(|mark| Report {
                kind: EventKind::ToolEnd,
                action: tool("shell", json!({ "command": format!("echo {mark}") })),
                detail: Some(json!({ "mark": mark })),
                session_id: None,
            })
            .collect();
        if let Ok(accepted) = c.report(agent, reports, vec![]).await {
            assert_eq!(accepted, marks.len() as u64);
            acknowledged.extend(marks);
        }
    }
    acknowledged
}

/// How many times each mark is in the gateway's audit export.
fn stored_marks(gateway_state: &Path) -> HashMap<String, usize> {
    let out = aasm(&[
        "audit",
        "export",
        "--state-dir",
        &gateway_state.display().to_string(),
    ]);
    assert!(out.status.success());
    let mut marks = HashMap::new();
    for line in stdout(&out).lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        if let Some(mark) = record["event"]["detail"]["mark"].as_str() {
            *marks.entry(mark.to_owned()).or_insert(0) += 1;
        }
    }
    marks
}

/// Waits (a minute at most) until every acknowledged mark is in the gateway's store, then
/// asserts each is there exactly once and that `aasm audit verify` passes.
async fn delivered_once(stack: &Stack, acknowledged: &[String]) {
    let gateway_state = stack.gateway_state_dir();
    let arrived = eventually(Duration::from_secs(60), async || {
        let stored = stored_marks(&gateway_state);
        acknowledged.iter().all(|m| stored.contains_key(m))
    })
    .await;
    let stored = stored_marks(&gateway_state);
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|m| !stored.contains_key(*m))
        .collect();
    assert!(
        arrived && missing.is_empty(),
        "{} acknowledged events missing",
        missing.len()
    );
    let twice: Vec<(&String, &usize)> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let verify = aasm(&[
        "audit",
        "verify",
        "--state-dir",
        &gateway_state.display().to_string(),
    ]);
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        crate::stderr(&verify)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_runtime_killed_mid_stream_lose_no_acknowledged_event() {
    let mut stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let mut acknowledged = Vec::new();

    // The gateway is killed while the runtime is forwarding a backlog of 2,000 events.
    acknowledged.extend(send(&c, &bot, "before", 2000).await);
    stack.crash_gateway().unwrap();
    // With the gateway gone, events are acknowledged from the outbox.
    acknowledged.extend(send(&c, &bot, "gateway-down", 1000).await);
    assert_eq!(
        acknowledged.len(),
        3000,
        "the runtime acknowledged every event"
    );

    // The runtime is killed with a full outbox, and a batch sent meanwhile is not acknowledged.
    stack.crash_runtime().unwrap();
    assert!(send(&c, &bot, "runtime-down", 100).await.is_empty());
    stack.restart_runtime().unwrap();
    acknowledged.extend(send(&c, &bot, "after-restart", 500).await);
    assert_eq!(acknowledged.len(), 3500, "the session survived the restart");
    stack.restart_gateway().unwrap();

    delivered_once(&stack, &acknowledged).await;
    drop(c);
    stack.stop().unwrap();
}

/// Writes into the stopped runtime's database, after its last event, a row holding what
/// `event` makes of the runtime's stream id and the row's sequence; returns the sequence.
fn plant(runtime_db: &Path, event: impl FnOnce(String, u64) -> rusqlite::types::Value) -> u64 {
    let conn = rusqlite::Connection::open(runtime_db).unwrap();
    let meta = |key: &str| -> String {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    };
    let stream = meta("stream_id");
    let sequence = meta("last_sequence").parse::<u64>().unwrap() + 1;
    conn.execute(
        "INSERT INTO outbox (sequence, event_id, event) VALUES (?1, ?2, ?3)",
        rusqlite::params![
            i64::try_from(sequence).unwrap(),
            format!("planted-{sequence}"),
            event(stream, sequence)
        ],
    )
    .unwrap();
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'last_sequence'",
        [sequence.to_string()],
    )
    .unwrap();
    sequence
}

/// An event the gateway refuses for good: an action of a kind it does not know, as a gateway
/// older than its runtime reads one (the unknown kind decodes as no action).
fn an_unknown_action(stream: String, sequence: u64) -> Vec<u8> {
    use prost::Message as _;
    aa_proto::pb::AuditEvent {
        event_id: format!("{stream}/~from-a-newer-runtime"),
        time: Some(prost_types::Timestamp::default()),
        agent: Some(aa_proto::pb::AgentRef {
            agent_id: "bot".into(),
            ..Default::default()
        }),
        action: Some(aa_proto::pb::Action { kind: None }),
        stream_id: stream,
        sequence,
        origin: Some(aa_proto::pb::Origin::default()),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Events that can never be delivered (one the gateway refuses for good, a row the runtime
/// cannot read back) do not hold back the events after them: the runtime sets each aside in
/// its quarantine table and sends a tombstone in its place, and the log stays gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_can_never_be_delivered_are_set_aside_and_the_rest_delivered() {
    let mut stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let mut acknowledged = send(&c, &bot, "before", 100).await;
    stack.stop_runtime().unwrap();
    let runtime_db = stack.runtime_state_dir().join("runtime.db");
    let mut wire = Vec::new();
    let refused = plant(&runtime_db, |stream, sequence| {
        wire = an_unknown_action(stream, sequence);
        rusqlite::types::Value::Blob(wire.clone())
    });
    let unreadable = plant(&runtime_db, |_, _| rusqlite::types::Value::Integer(12));
    stack.restart_runtime().unwrap();
    acknowledged.extend(send(&c, &bot, "after", 100).await);
    assert_eq!(
        acknowledged.len(),
        200,
        "the runtime acknowledged every event"
    );

    // Every event after them arrives, once, and the log verifies: no gap.
    delivered_once(&stack, &acknowledged).await;
    let out = aasm(&[
        "audit",
        "export",
        "--state-dir",
        &stack.gateway_state_dir().display().to_string(),
    ]);
    let exported: Vec<Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["event"].take())
        .collect();
    let tombstone = |sequence: u64| {
        exported
            .iter()
            .find(|e| e["origin"]["sequence"] == sequence && e["origin"]["stream_id"] != "gateway")
            .unwrap()
    };
    for (sequence, why) in [
        (refused, "missing field action.kind"),
        (unreadable, "cannot read it back: stored as Integer"),
    ] {
        let tombstone = tombstone(sequence);
        assert_eq!(tombstone["kind"], "refusal", "{tombstone}");
        assert_eq!(tombstone["verdict"]["rule"], "quarantine", "{tombstone}");
        let reason = tombstone["verdict"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{reason}");
    }
    // The runtime keeps what it set aside.
    let conn = rusqlite::Connection::open(&runtime_db).unwrap();
    let kept = |sequence: u64| -> rusqlite::types::Value {
        conn.query_row(
            "SELECT event FROM quarantine WHERE sequence = ?1",
            [i64::try_from(sequence).unwrap()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(kept(refused), rusqlite::types::Value::Blob(wire));
    assert_eq!(kept(unreadable), rusqlite::types::Value::Integer(12));
    // And lists it for an operator, while it runs.
    let listed = aasm(&[
        "audit",
        "quarantine",
        "--state-dir",
        &stack.runtime_state_dir().display().to_string(),
    ]);
    assert!(listed.status.success(), "{}", crate::stderr(&listed));
    let listed: Vec<Value> = stdout(&listed)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let sequences: Vec<&Value> = listed.iter().map(|l| &l["sequence"]).collect();
    assert_eq!(sequences, [refused, unreadable], "{listed:?}");
    assert!(
        listed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("missing field action.kind")),
        "{listed:?}"
    );
    assert!(
        listed[1]["unreadable"]
            .as_str()
            .is_some_and(|r| r.contains("stored as Integer")),
        "{listed:?}"
    );
    drop(c);
    stack.stop().unwrap();
}

/// How long the partition lasts: two minutes, or `AASM_TEST_PARTITION_SECONDS`.
fn partition_length() -> Duration {
    let seconds = std::env::var("AASM_TEST_PARTITION_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_minutes_holds_events_back_and_loses_none() {
    let options = StackOptions {
        partitionable: true,
        ..StackOptions::default()
    };
    let stack = Stack::start_with(Path::new(env!("CARGO_BIN_EXE_aasm")), options).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let read = || tool("read_file", json!({ "path": "/workspace/notes.md" }));
    let ready = eventually(Duration::from_secs(15), async || {
        decide(&c, &bot, read()).await.verdict.decision == Decision::Allow
    })
    .await;
    assert!(ready, "the bundle never arrived");
    let mut acknowledged = send(&c, &bot, "before", 500).await;
    let partition = stack.partition().unwrap();
    partition.cut();

    // Throughout: ten events and a check every second. Checks are decided from the bundle
    // the runtime holds; events are acknowledged from its outbox; none reaches the gateway.
    let length = partition_length();
    let cut_at = tokio::time::Instant::now();
    let mut stored_during = Vec::new();
    let mut second = 0;
    while cut_at.elapsed() < length {
        acknowledged.extend(send(&c, &bot, &format!("cut-{second}"), 10).await);
        let outcome = decide(&c, &bot, read()).await;
        assert_eq!(
            (outcome.verdict.decision, outcome.resolved_locally),
            (Decision::Allow, false),
            "{:?}",
            outcome.verdict
        );
        // What was in flight when the link was cut may land in the first seconds.
        if cut_at.elapsed() > Duration::from_secs(5) {
            stored_during.push(stack.events_stored().unwrap());
        }
        second += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        stored_during.windows(2).all(|w| w[0] == w[1]),
        "nothing crosses a cut link: {stored_during:?}"
    );
    assert_eq!(acknowledged.len(), 500 + 10 * second);

    partition.heal();
    acknowledged.extend(send(&c, &bot, "after", 500).await);
    delivered_once(&stack, &acknowledged).await;
    drop(c);
    stack.stop().unwrap();
}

/// Asserts that every acknowledged mark is in the gateway's store exactly once, now.
fn stored_once(gateway_state: &Path, acknowledged: &[String]) {
    let marks = stored_marks(gateway_state);
    let missing = acknowledged
        .iter()
        .filter(|m| !marks.contains_key(*m))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} marks missing",
        acknowledged.len()
    );
    assert!(marks.values().all(|&n| n == 1), "a mark stored twice");
}

/// SIGTERM drains the outbox before the runtime exits: events held back by a cut link are all
/// in the gateway's store once a runtime stopped just after the link heals has exited, cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_runtimes_outbox_before_it_exits() {
    let options = StackOptions {
        partitionable: true,
        ..StackOptions::default()
    };
    let mut stack = Stack::start_with(Path::new(env!("CARGO_BIN_EXE_aasm")), options).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let partition = stack.partition().unwrap().clone();
    partition.cut();
    let acknowledged = send(&c, &bot, "held", 2_000).await;
    assert_eq!(acknowledged.len(), 2_000);
    assert!(
        stored_marks(&stack.gateway_state_dir()).is_empty(),
        "nothing crosses a cut link"
    );
    partition.heal();
    stack.stop_runtime().unwrap();
    stored_once(&stack.gateway_state_dir(), &acknowledged);
    drop(c);
    stack.stop().unwrap();
}

/// `aasm up` stopped by SIGINT (Ctrl-C) hands its gateway every event its runtime
/// acknowledged, and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_aasm_up_with_every_event_stored() {
    let dir = crate::scratch_dir("sigint");
    let state = dir.path().join("state");
    let args: Vec<String> = [
        "up",
        "--state-dir",
        &state.display().to_string(),
        "--grpc",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    let (mut up, found) = Service::start(
        "aasm up",
        Path::new(env!("CARGO_BIN_EXE_aasm")),
        &args,
        &["runtime socket:"],
    )
    .unwrap();
    let c = client(dir.path(), Path::new(&found[0]), Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let acknowledged = send(&c, &bot, "burst", 5_000).await;
    assert_eq!(acknowledged.len(), 5_000);
    up.stop_by(Signal::INT).unwrap();
    stored_once(&state, &acknowledged);
}

/// Waits until the gateway holds a decision event for every one of the `answered` checks of
/// `agent`, and fails if it does not within 30 s.
async fn decisions_all_kept(stack: &Stack, agent: &str, answered: usize) {
    let gateway_state = stack.gateway_state_dir();
    let all_kept = eventually(Duration::from_secs(30), async || {
        stored_decisions(&gateway_state, agent) == answered
    })
    .await;
    assert!(
        all_kept,
        "{} decisions stored, {answered} answered",
        stored_decisions(&gateway_state, agent)
    );
}

/// How many decision events for `agent` are in the gateway's audit export.
fn stored_decisions(gateway_state: &Path, agent: &str) -> usize {
    let out = aasm(&[
        "audit",
        "export",
        "--state-dir",
        &gateway_state.display().to_string(),
    ]);
    assert!(out.status.success());
    stdout(&out)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|r| r["event"]["kind"] == "decision" && r["event"]["agent"]["id"] == agent)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_outbox_denies_under_enforce_and_every_decision_is_kept() {
    let stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let read = || tool("read_file", json!({ "path": "/workspace/notes.md" }));
    let mut answered = 0;
    let mut check = async || {
        let outcome = decide(&c, &bot, read()).await;
        assert!(!outcome.resolved_locally, "{:?}", outcome.verdict);
        answered += 1;
        outcome.verdict
    };
    let ready = eventually(Duration::from_secs(15), async || {
        check().await.decision == Decision::Allow
    })
    .await;
    assert!(ready, "the bundle never arrived");

    // Another process takes the database's write lock and keeps it: the writer waits out its
    // busy timeout (5 s), its commit fails, and from then on checks are denied saying why.
    let lock = rusqlite::Connection::open(stack.runtime_state_dir().join("runtime.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut denied = None;
    let noticed = eventually(Duration::from_secs(30), async || {
        let verdict = check().await;
        let audit = verdict.decision == Decision::Deny && verdict.rule == "audit";
        denied = Some(verdict);
        audit
    })
    .await;
    let denied = denied.unwrap();
    assert!(noticed, "{denied:?}");
    assert!(denied.reason.contains("locked"), "{}", denied.reason);
    // The SDK's events are refused, not acknowledged and lost.
    assert!(send(&c, &bot, "locked", 10).await.is_empty());

    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let recovered = eventually(Duration::from_secs(30), async || {
        check().await.decision == Decision::Allow
    })
    .await;
    assert!(
        recovered,
        "checks are allowed again once the outbox takes writes"
    );
    let acknowledged = send(&c, &bot, "unlocked", 100).await;
    assert_eq!(acknowledged.len(), 100);
    delivered_once(&stack, &acknowledged).await;
    // Every decision the runtime answered, the ones answered while the lock was being waited
    // out among them, was kept and reached the gateway.
    decisions_all_kept(&stack, "bot", answered).await;
    drop(c);
    stack.stop().unwrap();
}

/// A small tmpfs mounted on a temp directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None`, saying the test is skipped, where this process may not mount (it is not
    /// root); CI runs as root, so there it fails instead.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root, and this test mounts a tmpfs"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
        }
        mounted.then_some(SmallDisk { dir })
    }

    /// Writes a file until the disk refuses more.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_denies_under_enforce_and_every_decision_is_kept() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let options = StackOptions {
        runtime_state: Some(disk.dir.path().to_path_buf()),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(Path::new(env!("CARGO_BIN_EXE_aasm")), options).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let read = || tool("read_file", json!({ "path": "/workspace/notes.md" }));
    let mut answered = 0;
    let mut acknowledged = Vec::new();
    let ready = eventually(Duration::from_secs(15), async || {
        answered += 1;
        decide(&c, &bot, read()).await.verdict.decision == Decision::Allow
    })
    .await;
    assert!(ready, "the bundle never arrived");

    // The disk fills up. Writes go on into the space the database already holds until it
    // must grow; from the first commit that fails, checks are denied saying why.
    let filler = disk.fill();
    let mut denied = None;
    let mut batch = 0;
    let noticed = eventually(Duration::from_secs(60), async || {
        acknowledged.extend(send(&c, &bot, &format!("filling-{batch}"), 100).await);
        batch += 1;
        let outcome = decide(&c, &bot, read()).await;
        assert!(!outcome.resolved_locally, "{:?}", outcome.verdict);
        answered += 1;
        let audit = outcome.verdict.decision == Decision::Deny && outcome.verdict.rule == "audit";
        denied = Some(outcome.verdict);
        audit
    })
    .await;
    let denied = denied.unwrap();
    assert!(noticed, "{denied:?}");
    assert!(denied.reason.contains("full"), "{}", denied.reason);
    assert!(
        send(&c, &bot, "full", 10).await.is_empty(),
        "events are refused, not lost"
    );

    std::fs::remove_file(filler).unwrap();
    let recovered = eventually(Duration::from_secs(30), async || {
        answered += 1;
        decide(&c, &bot, read()).await.verdict.decision == Decision::Allow
    })
    .await;
    assert!(recovered, "checks are allowed again once the disk has room");
    acknowledged.extend(send(&c, &bot, "room-again", 100).await);
    delivered_once(&stack, &acknowledged).await;
    decisions_all_kept(&stack, "bot", answered).await;
    drop(c);
    stack.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_gateway_database_holds_events_back_and_loses_none() {
    let stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let mut acknowledged = send(&c, &bot, "before", 300).await;
    let stored = eventually(Duration::from_secs(30), async || {
        let marks = stored_marks(&stack.gateway_state_dir());
        acknowledged.iter().all(|m| marks.contains_key(m))
    })
    .await;
    assert!(stored);

    // Another process holds the gateway database's write lock for 8 s: appends wait out the
    // busy timeout (5 s) and fail; the runtime keeps acknowledging from its outbox and sends
    // again; nothing is stored while the lock is held.
    let lock = rusqlite::Connection::open(stack.gateway_state_dir().join("gateway.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let held_from = stack.events_stored().unwrap();
    for second in 0..8 {
        acknowledged.extend(send(&c, &bot, &format!("locked-{second}"), 50).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        stack.events_stored().unwrap(),
        held_from,
        "stored under the lock"
    );
    assert_eq!(acknowledged.len(), 300 + 8 * 50);
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);

    acknowledged.extend(send(&c, &bot, "after", 100).await);
    delivered_once(&stack, &acknowledged).await;
    drop(c);
    stack.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_disk_holds_events_back_and_loses_none() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let options = StackOptions {
        gateway_state: Some(disk.dir.path().to_path_buf()),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(Path::new(env!("CARGO_BIN_EXE_aasm")), options).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let mut acknowledged = send(&c, &bot, "before", 300).await;

    // The gateway's disk fills up. It goes on storing into the room its database already
    // has until it must grow; from then on the runtime acknowledges from its outbox and the
    // store stands still.
    let filler = disk.fill();
    let mut batch = 0;
    let stalled = eventually(Duration::from_secs(60), async || {
        acknowledged.extend(send(&c, &bot, &format!("full-{batch}"), 500).await);
        batch += 1;
        let first = stack.events_stored().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        first == stack.events_stored().unwrap()
    })
    .await;
    assert!(stalled, "the gateway never stopped storing");
    assert_eq!(
        acknowledged.len(),
        300 + 500 * batch,
        "the runtime acknowledged them all"
    );

    std::fs::remove_file(filler).unwrap();
    acknowledged.extend(send(&c, &bot, "room-again", 100).await);
    delivered_once(&stack, &acknowledged).await;
    drop(c);
    stack.stop().unwrap();
}
