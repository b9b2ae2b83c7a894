//! A served gateway checks and stores the events runtimes append on threads of their own,
//! under `SCHED_IDLE` by default, so a runtime's checks on the same host are not queued
//! behind them (BENCHMARKS.md). Linux's alone, read from `/proc`; the test needs a host that grants
//! `SCHED_IDLE` (any Linux does, unless a sandbox filters the call).

use std::collections::HashMap;
use std::sync::Arc;

use aa_gateway::{GatewayConfig, Store as _};
use aa_proto::pb;
use tokio::net::TcpListener;

use crate::gateway::{event_in, gateway};

/// The name the appends' threads carry.
const APPENDS_THREAD: &str = "aa-gw-appends";

/// Linux's number for `SCHED_IDLE`, as `/proc` reports a thread's policy.
const SCHED_IDLE: u32 = 5;

/// Each appends thread of this process: its processor time so far (ns) and its policy.
fn appends_threads() -> HashMap<String, (u64, u32)> {
    let mut threads = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        // A thread may end between the listing and the reads.
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if name.trim_end() != APPENDS_THREAD {
            continue;
        }
        let (Ok(schedstat), Ok(stat)) = (
            std::fs::read_to_string(dir.join("schedstat")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        let on_cpu: u64 = schedstat
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // After the command in parentheses, which may hold spaces: the policy is field 41.
        let after_command = &stat[stat.rfind(')').unwrap() + 2..];
        let policy: u32 = after_command
            .split_whitespace()
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        threads.insert(dir.display().to_string(), (on_cpu, policy));
    }
    threads
}

#[tokio::test]
async fn a_served_gateway_checks_and_stores_appends_on_idle_threads() {
    let gw = Arc::new(gateway(GatewayConfig {
        runtime_token: Some("runtime-secret".into()),
        admin_token: Some("admin-secret".into()),
        ..GatewayConfig::default()
    }));
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(aa_gateway::run(grpc, http, Arc::clone(&gw), async {
        let _ = stopped.await;
    }));
    let mut client = pb::audit_service_client::AuditServiceClient::connect(url)
        .await
        .unwrap();

    // Long enough to be checked in parts on the blocking pool as well.
    let text = "deploy the service and report what changed; ".repeat(20);
    let events: Vec<pb::AuditEvent> = (1..=1_000)
        .map(|n| (&event_in("rt-idle", n, &format!("{text} #{n}"))).into())
        .collect();
    let request = |token: Option<&str>, events: Vec<pb::AuditEvent>| {
        let mut request = tonic::Request::new(pb::AppendEventsRequest { events });
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    // Only a runtime (or an operator) appends: an agent's process that dials the port is
    // refused before its batch is read.
    for token in [None, Some("guess")] {
        let refused = client
            .append_events(request(token, events.clone()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    // An event that no resend can make acceptable (here an action of a kind this gateway does
    // not know, as it reads one from a newer runtime) refuses the batch, named by its sequence
    // so that its runtime can set it aside.
    let mut unknown_action = events.clone();
    unknown_action[700].action = Some(pb::Action { kind: None });
    let refused = client
        .append_events(request(Some("runtime-secret"), unknown_action))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let named = refused.metadata().get(aa_proto::REFUSED_SEQUENCE_METADATA);
    assert_eq!(
        named.and_then(|v| v.to_str().ok()),
        Some("701"),
        "{refused:?}"
    );
    assert!(gw.store().heads().await.unwrap().is_empty());
    let before = appends_threads();
    let answer = client
        .append_events(request(Some("runtime-secret"), events.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 1_000);
    let after = appends_threads();
    // Sent again, the stream's head is refused but not named: the store holds an event at its
    // place (this very one, stored before its runtime heard so), which its runtime must not
    // replace.
    let mut stored_then_unknown = events;
    stored_then_unknown[999].action = Some(pb::Action { kind: None });
    let refused = client
        .append_events(request(Some("runtime-secret"), stored_then_unknown))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .metadata()
            .get(aa_proto::REFUSED_SEQUENCE_METADATA)
            .is_none(),
        "{refused:?}"
    );

    assert!(!after.is_empty(), "no appends thread among this process's");
    assert!(
        after.values().all(|&(_, policy)| policy == SCHED_IDLE),
        "{after:?}"
    );
    let worked: u64 = after
        .iter()
        .map(|(id, (now, _))| now.saturating_sub(before.get(id).map_or(0, |&(then, _)| then)))
        .sum();
    // Idle, they would have spent nothing: checking a thousand events takes milliseconds.
    assert!(worked > 1_000_000, "the appends threads worked {worked} ns");

    let next = vec![(&event_in("rt-idle", 1_001, "one more")).into()];
    let by_operator = client
        .append_events(request(Some("admin-secret"), next))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_operator.accepted, 1);

    let _ = stop.send(());
    served.await.unwrap().unwrap();
    assert_eq!(gw.store().heads().await.unwrap()[0].sequence, 1_001);
}
