//! Faults with real processes: the gateway and the runtime are separate `aasm` processes,
//! killed with SIGKILL and started again on the same state. After each, every event the
//! runtime acknowledged is in the gateway's store exactly once and the audit log verifies.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aa_bench::stack::Stack;
use aa_core::{EventKind, Mode};
use aa_sdk_client::{Agent, Client, Report};
use serde_json::{Value, json};

use crate::governed::{client, eventually, register, tool};
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
    drop(c);
    stack.stop().unwrap();
}
