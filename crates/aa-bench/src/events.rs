//! Events as fast as the runtime takes them: each client keeps a few report calls in flight,
//! each a batch of tool events; the load ends when the gateway has stored every one.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use aa_core::{Action, EventKind};
use aa_sdk_client::{Call, Report};

use crate::stats::Percentiles;
use crate::{BenchError, registered_client};

/// How long the gateway has to store everything after the runtime acknowledged it.
const STORE_TIMEOUT: Duration = Duration::from_secs(300);
/// One event in this many carries a credential for the runtime to redact.
const SECRET_EVERY: u64 = 100;

/// An event load.
#[derive(Debug, Clone)]
pub struct EventLoad {
    /// The runtime's socket.
    pub socket: PathBuf,
    /// Where the clients keep their agents' keys.
    pub state_dir: PathBuf,
    /// Concurrent clients, each with its own connection and agent.
    pub clients: usize,
    /// Events in one report call.
    pub batch: usize,
    /// Report calls each client keeps in flight.
    pub in_flight: usize,
    /// Events in all.
    pub events: u64,
}

/// What an event load measured.
#[derive(Debug, Clone)]
pub struct EventReport {
    /// Events sent, all acknowledged.
    pub events: u64,
    /// From the first send until the runtime had acknowledged all (on disk in its outbox).
    pub acknowledged_in: Duration,
    /// From the first send until the gateway had stored all.
    pub stored_in: Duration,
    /// One report call, from send to acknowledgement.
    pub batch_latency: Option<Percentiles>,
}

impl EventReport {
    /// Events per second acknowledged by the runtime.
    pub fn acknowledged_rate(&self) -> f64 {
        self.events as f64 / self.acknowledged_in.as_secs_f64()
    }

    /// Events per second from SDK client to the gateway's store.
    pub fn stored_rate(&self) -> f64 {
        self.events as f64 / self.stored_in.as_secs_f64()
    }
}

/// A tool's end as agents report it: a few hundred bytes of arguments and result.
pub(crate) fn tool_end(n: u64) -> Report {
    let mut result = format!(
        "read 42 lines from module_{m}.rs: fn handle_{n}(request: Request) -> Response {{ \
         let started = Instant::now(); let body = request.body(); \
         tracing::info!(bytes = body.len(), \"handling request {n}\"); respond(body) }}",
        m = n % 50
    );
    if n.is_multiple_of(SECRET_EVERY) {
        result.push_str(" # aws_secret_access_key = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY'");
        result.push_str(" AKIAQ3EGRTXK5MZLN2PW");
    }
    Report {
        kind: EventKind::ToolEnd,
        action: Action::ToolCall {
            tool: "read_file".into(),
            args: serde_json::json!({"path": format!("/workspace/src/module_{}.rs", n % 50)}),
        },
        detail: Some(serde_json::json!({"result": result, "duration_ms": n % 97})),
        session_id: Some("bench-session".into()),
    }
}

/// Waits for one report call; records how long it took and returns how many it accepted.
fn settle(
    (sent, call): (Instant, Call<u64>),
    latencies: &mut Vec<Duration>,
) -> Result<u64, BenchError> {
    let accepted = call.wait()?;
    latencies.push(sent.elapsed());
    Ok(accepted)
}

/// Runs the load; `stored` reads how many events the gateway holds.
pub fn run(
    load: &EventLoad,
    stored: impl Fn() -> Result<u64, BenchError>,
) -> Result<EventReport, BenchError> {
    if load.clients == 0 || load.batch == 0 || load.in_flight == 0 || load.events == 0 {
        return Err(BenchError::Invalid(
            "clients, batch, in-flight and events must be positive".into(),
        ));
    }
    let sessions = (0..load.clients)
        .map(|i| {
            registered_client(
                &load.socket,
                &load.state_dir,
                format!("bench-events-{i}"),
                Duration::from_secs(30),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let baseline = stored()?;
    let barrier = Arc::new(Barrier::new(load.clients + 1));

    let (started, outcomes) = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .iter()
            .enumerate()
            .map(|(index, (client, agent))| {
                let barrier = Arc::clone(&barrier);
                // Client i sends events i, i + clients, i + 2·clients, ...
                let mine: Vec<u64> = (index as u64..load.events).step_by(load.clients).collect();
                scope.spawn(move || -> Result<(u64, Vec<Duration>), BenchError> {
                    barrier.wait();
                    let mut pending = VecDeque::new();
                    let mut latencies = Vec::new();
                    let mut accepted = 0u64;
                    for chunk in mine.chunks(load.batch) {
                        if pending.len() >= load.in_flight
                            && let Some(oldest) = pending.pop_front()
                        {
                            accepted += settle(oldest, &mut latencies)?;
                        }
                        let reports = chunk.iter().map(|&n| tool_end(n)).collect();
                        pending.push_back((Instant::now(), client.report(agent, reports, vec![])));
                    }
                    while let Some(oldest) = pending.pop_front() {
                        accepted += settle(oldest, &mut latencies)?;
                    }
                    Ok((accepted, latencies))
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let outcomes: Vec<_> = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(BenchError::Invalid("a client thread panicked".into())))
            })
            .collect();
        (started, outcomes)
    });
    let acknowledged_in = started.elapsed();
    let mut accepted = 0;
    let mut latencies = Vec::new();
    for outcome in outcomes {
        let (n, l) = outcome?;
        accepted += n;
        latencies.extend(l);
    }
    if accepted != load.events {
        return Err(BenchError::Invalid(format!(
            "the runtime accepted {accepted} of {} events",
            load.events
        )));
    }

    let expected = baseline + load.events;
    let deadline = Instant::now() + STORE_TIMEOUT;
    loop {
        let now = stored()?;
        if now >= expected {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Undelivered {
                stored: now - baseline,
                expected: load.events,
                seconds: STORE_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(EventReport {
        events: load.events,
        acknowledged_in,
        stored_in: started.elapsed(),
        batch_latency: Percentiles::of(latencies),
    })
}
