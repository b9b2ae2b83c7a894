//! The load generator against the real `aasm` binary: a short, slow run of each load, to keep
//! the tool working. It asserts what was delivered, never how fast: speed is BENCHMARKS.md's.

use std::path::Path;
use std::time::Duration;

use aa_bench::checks::{self, CheckLoad};
use aa_bench::events::{self, EventLoad};
use aa_bench::soak::{self, SoakLoad};
use aa_bench::stack::Stack;

fn stack() -> Stack {
    Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap()
}

#[test]
fn check_load_is_answered_in_full_and_memory_is_read() {
    let stack = stack();
    let load = CheckLoad {
        socket: stack.socket.clone(),
        state_dir: stack.client_state_dir(),
        clients: 2,
        rate: 200.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        action: CheckLoad::default_action(),
        processes: stack.processes(),
    };
    let report = checks::run(&load).unwrap();
    // 2 clients × 100/s over the 1 s measured: one send a client each 10 ms.
    assert_eq!(report.sent, 200, "{report:?}");
    assert_eq!(report.answered, report.sent, "{report:?}");
    assert_eq!(report.allowed, report.sent, "{report:?}");
    assert_eq!(report.failed, 0);
    let latency = report.latency.unwrap();
    assert_eq!(latency.count, 200);
    assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    // Switches are counted for the services' threads; the load's own threads end before the
    // last reading, so its switches are unknown rather than short.
    let watched: Vec<(&str, bool)> = report
        .cpu
        .iter()
        .map(|&(name, used)| (name, used.switches.is_some()))
        .collect();
    assert_eq!(
        watched,
        [("runtime", true), ("gateway", true), ("aa-bench", false)]
    );
    let memory = stack.runtime_memory().unwrap();
    assert!(
        memory.rss > 1 << 20 && memory.peak >= memory.rss,
        "{memory:?}"
    );
    stack.stop().unwrap();
}

#[test]
fn event_load_reaches_the_gateway_store_in_full() {
    let stack = stack();
    let load = EventLoad {
        socket: stack.socket.clone(),
        state_dir: stack.client_state_dir(),
        clients: 2,
        batch: 50,
        in_flight: 2,
        events: 1_001,
    };
    let before = stack.events_stored().unwrap();
    let report = events::run(&load, || stack.events_stored()).unwrap();
    assert_eq!(report.events, 1_001);
    assert_eq!(stack.events_stored().unwrap() - before, 1_001);
    assert!(report.stored_in >= report.acknowledged_in);
    // 1,001 events over 2 clients, 501 and 500, in batches of 50: 11 calls and 10.
    assert_eq!(report.batch_latency.unwrap().count, 21);
    stack.stop().unwrap();
}

#[test]
fn approvals_are_released_one_by_one() {
    let stack = stack();
    let latency = aa_bench::approvals::run(&stack, 5, 1).unwrap();
    assert_eq!(latency.count, 5);
    assert!(latency.p50 <= latency.max);
    // Every one went through the gateway: requested, approved and used, six times.
    let token = stack.admin_token().unwrap();
    let (code, body) = stack
        .http("GET", "/api/v1/approvals?status=approved", Some(&token), "")
        .unwrap();
    assert_eq!(code, 200);
    let approvals: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(approvals.len(), 6);
    assert!(approvals.iter().all(|a| a["used_at_ms"].is_i64()));
    stack.stop().unwrap();
}

#[test]
fn a_short_soak_is_read_every_interval_and_counted_in_full() {
    let stack = stack();
    let load = SoakLoad {
        check_clients: 2,
        check_rate: 200.0,
        event_clients: 2,
        event_rate: 400.0,
        batch: 20,
        in_flight: 2,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        interval: Duration::from_secs(1),
    };
    let mut seen = 0;
    let report = soak::run(&stack, &load, |_| seen += 1).unwrap();
    assert_eq!(report.problems(), Vec::<String>::new(), "{report:?}");
    assert_eq!(seen, 5);
    assert_eq!(report.windows.len(), 5);
    assert!(!report.windows[0].measured && report.windows[1].measured);
    // 200 checks and 400 events a second for 5 s: each of the 1,000 checks records a decision.
    let checks: usize = report.windows.iter().map(|w| w.checks).sum();
    let events: u64 = report.windows.iter().map(|w| w.events).sum();
    assert_eq!((checks, events), (1_000, 2_000), "{report:?}");
    assert_eq!(report.stored, report.expected);
    assert_eq!(report.expected, 3_000);
    for w in &report.windows {
        assert!(w.runtime.rss > 1 << 20 && w.gateway.rss > 1 << 20, "{w:?}");
        assert!(w.runtime.fds > 4 && w.gateway.fds > 4, "{w:?}");
    }
    stack.stop().unwrap();
}
