//! Checks at a fixed rate: each client sends on its own schedule and waits for each answer
//! on its thread, as an agent does before running a tool. A slow answer delays that client's
//! next send; how late sends were against the schedule is reported beside the latency, so a
//! schedule that slipped shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aa_core::{Action, Decision};
use aa_sdk_client::{Agent, Client};

use crate::cpu::{CpuShare, CpuTimes, ProcessUse, Used, UsedPer};
use crate::pace::Schedule;
use crate::stats::Percentiles;
use crate::{BenchError, registered_client};

/// How long the runtime has to allow the first check (it needs the gateway's bundle).
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A check load.
#[derive(Debug, Clone)]
pub struct CheckLoad {
    /// The runtime's socket.
    pub socket: PathBuf,
    /// Where the clients keep their agents' keys.
    pub state_dir: PathBuf,
    /// Concurrent clients, each with its own connection and agent.
    pub clients: usize,
    /// Checks per second, all clients together.
    pub rate: f64,
    /// How long the measured part lasts.
    pub duration: Duration,
    /// How long the load runs first, unmeasured.
    pub warmup: Duration,
    /// What every check asks.
    pub action: Action,
    /// Processes whose processor time is read over the measured part, by name.
    pub processes: Vec<(&'static str, u32)>,
}

impl CheckLoad {
    /// A read of a workspace file, which the default (balanced) policy allows after
    /// evaluating its `deny_if` condition.
    pub fn default_action() -> Action {
        Action::ToolCall {
            tool: "read_file".into(),
            args: serde_json::json!({"path": "/workspace/src/main.rs"}),
        }
    }
}

/// What a check load measured.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Checks sent in the measured part.
    pub sent: usize,
    /// Of those, answered by the runtime (not resolved locally by the client).
    pub answered: usize,
    /// Answered allow.
    pub allowed: usize,
    /// Resolved by the client without the runtime: timeouts, refusals, lost connections.
    pub failed: usize,
    /// Answered checks per second over the measured part.
    pub throughput: f64,
    /// From send to answer, answered checks only.
    pub latency: Option<Percentiles>,
    /// How late sends were against their schedule: the sleep's own error, plus any slip a
    /// slow answer caused.
    pub lateness: Option<Percentiles>,
    /// From the scheduled send to the answer (lateness plus latency), answered checks only:
    /// what the latency would be had nothing slipped.
    pub from_schedule: Option<Percentiles>,
    /// What the machine's processors did over the measured part, where `/proc/stat` tells.
    pub machine: Option<CpuShare>,
    /// What each watched process used over the measured part, where `/proc` tells.
    pub cpu: Vec<(&'static str, Used)>,
}

impl CheckReport {
    /// What each watched process spent on one answered request.
    pub fn cpu_per_answer(&self) -> Vec<(&'static str, UsedPer)> {
        self.cpu
            .iter()
            .map(|&(name, used)| (name, used.per(self.answered as u64)))
            .collect()
    }
}

/// One check as the load made it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When it was due, from the load's origin.
    pub(crate) due: Duration,
    /// Answered by the runtime (not resolved locally by the client).
    pub(crate) answered: bool,
    /// Answered allow.
    pub(crate) allowed: bool,
    /// From send to answer.
    pub(crate) latency: Duration,
    /// How late it was sent.
    pub(crate) lateness: Duration,
}

impl Sample {
    /// Sends one check and waits for it on this thread, as an agent waits before running
    /// its tool.
    pub(crate) fn take(
        client: &Client,
        agent: &Agent,
        action: &Action,
        due: Duration,
        lateness: Duration,
    ) -> Sample {
        Sample::timed(due, lateness, || {
            match client.check_blocking(agent, action.clone(), None) {
                Ok(o) => (
                    !o.resolved_locally,
                    !o.resolved_locally && o.verdict.decision == Decision::Allow,
                ),
                Err(_) => (false, false),
            }
        })
    }

    /// Times `ask`, which sends one request, waits for its answer and says whether it was
    /// answered and allowed.
    pub(crate) fn timed(
        due: Duration,
        lateness: Duration,
        ask: impl FnOnce() -> (bool, bool),
    ) -> Sample {
        let start = Instant::now();
        let (answered, allowed) = ask();
        Sample {
            due,
            answered,
            allowed,
            latency: start.elapsed(),
            lateness,
        }
    }
}

/// Registers `clients` clients, each with its own connection and agent `<prefix>-<i>`, and
/// waits until the runtime allows `action` (its bundle has arrived).
pub(crate) fn sessions(
    socket: &Path,
    state_dir: &Path,
    prefix: &str,
    clients: usize,
    action: &Action,
) -> Result<Vec<(Client, Agent)>, BenchError> {
    let sessions = (0..clients)
        .map(|i| {
            registered_client(
                socket,
                state_dir,
                format!("{prefix}-{i}"),
                Duration::from_secs(5),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((client, agent)) = sessions.first() {
        ready(client, agent, action)?;
    }
    Ok(sessions)
}

/// Waits until the runtime allows the action: its bundle has arrived.
fn ready(client: &Client, agent: &Agent, action: &Action) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let outcome = client.check_blocking(agent, action.clone(), None)?;
        if outcome.verdict.decision == Decision::Allow && !outcome.resolved_locally {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::NotReady {
                seconds: READY_TIMEOUT.as_secs(),
                reason: outcome.verdict.reason,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks one after another from one client against a runtime that is already running:
/// the latency an agent sees when it is the only one asking. `warmup` checks go first,
/// unmeasured; every measured check must be answered allow by the runtime. Each is a
/// `check_blocking`, as the Python binding's checks are, so that this stays the baseline the
/// binding's own overhead is measured against.
pub fn serial(
    socket: &Path,
    state_dir: &Path,
    agent_id: &str,
    action: &Action,
    count: usize,
    warmup: usize,
) -> Result<Percentiles, BenchError> {
    let (client, agent) = registered_client(socket, state_dir, agent_id.to_owned(), READY_TIMEOUT)?;
    ready(&client, &agent, action)?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let started = Instant::now();
        let outcome = client.check_blocking(&agent, action.clone(), None)?;
        let took = started.elapsed();
        if outcome.verdict.decision != Decision::Allow || outcome.resolved_locally {
            return Err(BenchError::NotReady {
                seconds: 0,
                reason: outcome.verdict.reason,
            });
        }
        if i >= warmup {
            samples.push(took);
        }
    }
    Percentiles::of(samples).ok_or_else(|| BenchError::Invalid("count must be positive".into()))
}

/// Runs the load and reports.
pub fn run(load: &CheckLoad) -> Result<CheckReport, BenchError> {
    // Checked before anyone registers.
    Schedule::new(load.clients, load.rate, Instant::now(), load.duration)?;
    let sessions = sessions(
        &load.socket,
        &load.state_dir,
        "bench",
        load.clients,
        &load.action,
    )?;
    paced(
        &sessions,
        load.rate,
        load.warmup,
        load.duration,
        &load.processes,
        |(client, agent), due, lateness| Sample::take(client, agent, &load.action, due, lateness),
    )
}

/// Sends from each of `senders` on its own thread, together at `rate` for `warmup` and then
/// `duration` more; `send(sender, due, lateness)` sends one request and waits for it. Reports
/// on the part after the warm-up, with what the machine's processors and each of `processes`
/// did meanwhile.
pub(crate) fn paced<S: Sync>(
    senders: &[S],
    rate: f64,
    warmup: Duration,
    duration: Duration,
    processes: &[(&'static str, u32)],
    send: impl Fn(&S, Duration, Duration) -> Sample + Sync,
) -> Result<CheckReport, BenchError> {
    let origin = Instant::now();
    let schedule = Schedule::new(senders.len(), rate, origin, warmup + duration)?;
    let (samples, machine, cpu) = std::thread::scope(|scope| {
        let pacers: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(index, sender)| {
                let send = &send;
                scope.spawn(move || {
                    let mut samples = Vec::new();
                    schedule.run(index, |due, lateness| {
                        samples.push(send(sender, due, lateness));
                        true
                    });
                    samples
                })
            })
            .collect();
        std::thread::sleep(warmup.saturating_sub(origin.elapsed()));
        let before = (CpuTimes::read(), ProcessUse::read(processes));
        let samples: Vec<Sample> = pacers
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_default())
            .collect();
        let machine = before
            .0
            .zip(CpuTimes::read())
            .map(|(b, a)| b.share_until(&a));
        let cpu = before.1.until(&ProcessUse::read(processes));
        (samples, machine, cpu)
    });

    let measured: Vec<&Sample> = samples.iter().filter(|s| s.due >= warmup).collect();
    let answered: Vec<&&Sample> = measured.iter().filter(|s| s.answered).collect();
    Ok(CheckReport {
        sent: measured.len(),
        answered: answered.len(),
        allowed: answered.iter().filter(|s| s.allowed).count(),
        failed: measured.len() - answered.len(),
        throughput: answered.len() as f64 / duration.as_secs_f64(),
        latency: Percentiles::of(answered.iter().map(|s| s.latency).collect()),
        lateness: Percentiles::of(measured.iter().map(|s| s.lateness).collect()),
        from_schedule: Percentiles::of(answered.iter().map(|s| s.lateness + s.latency).collect()),
        machine,
        cpu,
    })
}
