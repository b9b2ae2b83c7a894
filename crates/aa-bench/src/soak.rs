//! The soak: checks and events together at fixed rates for minutes, read at every interval —
//! check latency and failures, events acknowledged, the gateway's backlog, and each process's
//! resident memory and open descriptors — then drained, so every recorded event can be
//! counted in the gateway's store. [`SoakReport::problems`] says what went wrong: errors,
//! events lost or duplicated, growth.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aa_sdk_client::{Agent, Call, Client};

use crate::checks::{self, CheckLoad, Sample};
use crate::pace::Schedule;
use crate::stack::Stack;
use crate::stats::Percentiles;
use crate::{BenchError, registered_client};

/// How long the gateway has to store the backlog once the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the store may stand still, short of everything, before the rest is called lost.
const DRAIN_STALL: Duration = Duration::from_secs(10);
/// Open descriptors a process may gain over the measured part: one the operator HTTP read in
/// flight may hold, and one for a database file opened late.
const FD_SLACK: usize = 2;
/// Resident memory a process may gain over the second half of the measured part, beyond
/// which it is called growth: allocators and SQLite's page cache settle in the first half.
const RSS_SLACK: u64 = 8 << 20;

/// A soak load.
#[derive(Debug, Clone)]
pub struct SoakLoad {
    /// Checking clients, each with its own connection and agent.
    pub check_clients: usize,
    /// Checks per second, all checking clients together.
    pub check_rate: f64,
    /// Reporting clients, each with its own connection and agent.
    pub event_clients: usize,
    /// Events per second, all reporting clients together.
    pub event_rate: f64,
    /// Events in one report call.
    pub batch: usize,
    /// Report calls each reporting client keeps in flight, as an SDK that flushes in the
    /// background does; when that many are waiting, the client waits for the oldest.
    pub in_flight: usize,
    /// How long the measured part lasts.
    pub duration: Duration,
    /// How long the load runs first, unmeasured.
    pub warmup: Duration,
    /// How often everything is read.
    pub interval: Duration,
}

/// A process's resources at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: usize,
}

/// One interval of the soak.
#[derive(Debug, Clone)]
pub struct Window {
    /// When it ended, from the start of the load.
    pub end: Duration,
    /// Whether it lies after the warm-up.
    pub measured: bool,
    /// Checks answered in it.
    pub checks: usize,
    /// Checks not answered by the runtime, or not allowed.
    pub check_failures: usize,
    /// From send to answer, answered checks only.
    pub latency: Option<Percentiles>,
    /// Events the runtime acknowledged in it.
    pub events: u64,
    /// Report calls that failed or were not accepted in full.
    pub event_failures: usize,
    /// Events recorded at the runtime (checks' decisions and reported events) and not yet
    /// stored by the gateway, at its end.
    pub backlog: u64,
    /// The runtime at its end.
    pub runtime: Usage,
    /// The gateway at its end.
    pub gateway: Usage,
}

/// What a soak measured.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// Every interval, warm-up included.
    pub windows: Vec<Window>,
    /// Events the gateway should hold: one decision for every answered check, and every
    /// acknowledged event.
    pub expected: u64,
    /// Events the gateway held once drained.
    pub stored: u64,
    /// From the end of the load until the gateway held them all (or gave up).
    pub drained_in: Duration,
    /// Check latency over the first and the second half of the measured part.
    pub halves: [Option<Percentiles>; 2],
}

struct EventSample {
    accepted: u64,
    failed: bool,
}

impl SoakReport {
    fn measured(&self) -> Vec<&Window> {
        self.windows.iter().filter(|w| w.measured).collect()
    }

    /// What went wrong, each in a sentence; empty when the soak was clean.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let sum = |f: fn(&Window) -> usize| self.windows.iter().map(f).sum::<usize>();
        let check_failures = sum(|w| w.check_failures);
        if check_failures > 0 {
            problems.push(format!(
                "{check_failures} checks were not answered allow by the runtime"
            ));
        }
        let event_failures = sum(|w| w.event_failures);
        if event_failures > 0 {
            problems.push(format!(
                "{event_failures} report calls failed or were not accepted in full"
            ));
        }
        if self.stored != self.expected {
            let what = if self.stored < self.expected {
                "lost"
            } else {
                "duplicated"
            };
            problems.push(format!(
                "the gateway stored {} of {} events ({} {what})",
                self.stored,
                self.expected,
                self.stored.abs_diff(self.expected)
            ));
        }
        let measured = self.measured();
        let (Some(first), Some(last)) = (measured.first(), measured.last()) else {
            problems.push("no interval was measured".into());
            return problems;
        };
        let middle = measured[(measured.len() - 1) / 2];
        for (name, first, middle, last) in [
            ("runtime", first.runtime, middle.runtime, last.runtime),
            ("gateway", first.gateway, middle.gateway, last.gateway),
        ] {
            if last.fds > first.fds + FD_SLACK {
                problems.push(format!(
                    "the {name}'s open descriptors grew from {} to {}",
                    first.fds, last.fds
                ));
            }
            if last.rss > middle.rss + RSS_SLACK {
                problems.push(format!(
                    "the {name}'s memory grew over the second half, {} to {}",
                    mib(middle.rss),
                    mib(last.rss)
                ));
            }
        }
        // A gateway slower than the load falls behind for good: its backlog climbs each
        // interval instead of settling at the batches in flight.
        let allowed = last.checks as u64 + last.events;
        if last.backlog > middle.backlog + allowed {
            problems.push(format!(
                "the gateway fell behind: {} events waiting at the middle, {} at the end",
                middle.backlog, last.backlog
            ));
        }
        problems
    }
}

/// Mebibytes with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Reads both processes and the gateway's store; the backlog is what was recorded and is not
/// stored yet.
fn read(stack: &Stack, recorded: u64) -> Result<(u64, Usage, Usage), BenchError> {
    let runtime = Usage {
        rss: stack.runtime_memory()?.rss,
        fds: stack.runtime_fds()?,
    };
    let gateway = Usage {
        rss: stack.gateway_memory()?.rss,
        fds: stack.gateway_fds()?,
    };
    let stored = stack.events_stored()?;
    Ok((recorded.saturating_sub(stored), runtime, gateway))
}

/// Waits until the gateway's store stops moving: what it holds before the load starts.
fn settled(stack: &Stack) -> Result<u64, BenchError> {
    let mut last = stack.events_stored()?;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = stack.events_stored()?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Err(BenchError::Invalid(
        "the gateway's store did not settle before the load".into(),
    ))
}

/// Runs the soak against `stack`, handing each interval to `on_window` as it ends.
pub fn run(
    stack: &Stack,
    load: &SoakLoad,
    mut on_window: impl FnMut(&Window),
) -> Result<SoakReport, BenchError> {
    if load.batch == 0 || load.interval.is_zero() || load.duration < load.interval * 2 {
        return Err(BenchError::Invalid(
            "batch and interval must be positive, and the soak at least two intervals long".into(),
        ));
    }
    let total = load.warmup + load.duration;
    let action = CheckLoad::default_action();
    let check_sessions = checks::sessions(
        &stack.socket,
        &stack.client_state_dir(),
        "soak",
        load.check_clients,
        &action,
    )?;
    let event_sessions = (0..load.event_clients)
        .map(|i| {
            registered_client(
                &stack.socket,
                &stack.client_state_dir(),
                format!("soak-events-{i}"),
                Duration::from_secs(30),
            )
        })
        .collect::<Result<Vec<(Client, Agent)>, _>>()?;
    let baseline = settled(stack)?;

    let origin = Instant::now();
    let check_schedule = Schedule::new(load.check_clients, load.check_rate, origin, total)?;
    let event_schedule = Schedule::new(
        load.event_clients,
        load.event_rate / load.batch as f64,
        origin,
        total,
    )?;
    let check_samples = Mutex::new(Vec::<Sample>::new());
    let event_samples = Mutex::new(Vec::<EventSample>::new());
    let next_event = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut recorded = baseline;
    let mut windows = Vec::new();
    let mut all_latencies = Vec::new();

    let mut take_window = |end: Duration| -> Result<Window, BenchError> {
        let checks = std::mem::take(&mut *lock(&check_samples));
        let events = std::mem::take(&mut *lock(&event_samples));
        let answered: Vec<&Sample> = checks.iter().filter(|s| s.answered).collect();
        let accepted: u64 = events.iter().map(|e| e.accepted).sum();
        recorded += answered.len() as u64 + accepted;
        let latencies: Vec<Duration> = answered.iter().map(|s| s.latency).collect();
        let measured = end.saturating_sub(load.interval) >= load.warmup;
        if measured {
            all_latencies.extend(answered.iter().map(|s| (s.due, s.latency)));
        }
        let (backlog, runtime, gateway) = read(stack, recorded)?;
        Ok(Window {
            end,
            measured,
            checks: answered.len(),
            check_failures: checks.iter().filter(|s| !s.allowed).count(),
            latency: Percentiles::of(latencies),
            events: accepted,
            event_failures: events.iter().filter(|e| e.failed).count(),
            backlog,
            runtime,
            gateway,
        })
    };

    let monitored = std::thread::scope(|scope| -> Result<(), BenchError> {
        for (index, (client, agent)) in check_sessions.iter().enumerate() {
            let (samples, stop, action) = (&check_samples, &stop, &action);
            scope.spawn(move || {
                check_schedule.run(index, |due, lateness| {
                    let sample = Sample::take(client, agent, action, due, lateness);
                    lock(samples).push(sample);
                    !stop.load(Ordering::Relaxed)
                });
            });
        }
        for (index, (client, agent)) in event_sessions.iter().enumerate() {
            let (samples, stop, next) = (&event_samples, &stop, &next_event);
            scope.spawn(move || {
                let settle = |call: Call<u64>| {
                    let sample = match call.wait() {
                        Ok(accepted) => EventSample {
                            accepted,
                            failed: accepted != load.batch as u64,
                        },
                        Err(_) => EventSample {
                            accepted: 0,
                            failed: true,
                        },
                    };
                    lock(samples).push(sample);
                };
                let mut waiting = VecDeque::new();
                event_schedule.run(index, |_, _| {
                    if waiting.len() >= load.in_flight
                        && let Some(oldest) = waiting.pop_front()
                    {
                        settle(oldest);
                    }
                    let first = next.fetch_add(load.batch as u64, Ordering::Relaxed);
                    let reports = (first..first + load.batch as u64)
                        .map(crate::events::tool_end)
                        .collect();
                    waiting.push_back(client.report(agent, reports, vec![]));
                    !stop.load(Ordering::Relaxed)
                });
                waiting.into_iter().for_each(settle);
            });
        }
        let watched = (|| {
            let mut end = load.interval;
            while end < total + load.interval {
                let end_now = end.min(total);
                std::thread::sleep(end_now.saturating_sub(origin.elapsed()));
                let window = take_window(end_now)?;
                on_window(&window);
                windows.push(window);
                end += load.interval;
            }
            Ok(())
        })();
        // The schedules end by themselves at `total`, and a client running behind still
        // sends what was due before it (the last window counts those); only a failed reading
        // stops them early.
        if watched.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        watched
    });
    monitored?;
    // Answers that came in after the last interval was read belong to it.
    let tail = take_window(total)?;
    if let Some(last) = windows.last_mut() {
        last.checks += tail.checks;
        last.check_failures += tail.check_failures;
        last.events += tail.events;
        last.event_failures += tail.event_failures;
    }

    let expected = recorded;
    let drained = Instant::now();
    let (mut stored, mut moved) = (stack.events_stored()?, Instant::now());
    while stored < expected && drained.elapsed() < DRAIN_TIMEOUT && moved.elapsed() < DRAIN_STALL {
        std::thread::sleep(Duration::from_millis(100));
        let now = stack.events_stored()?;
        if now != stored {
            (stored, moved) = (now, Instant::now());
        }
    }
    let drained_in = drained.elapsed();
    // Anything stored twice would arrive just after the rest.
    std::thread::sleep(Duration::from_millis(500));
    let stored = stack.events_stored()?;

    let half = load.warmup + load.duration / 2;
    let (first, second): (Vec<_>, Vec<_>) =
        all_latencies.into_iter().partition(|(due, _)| *due < half);
    let latencies =
        |v: Vec<(Duration, Duration)>| Percentiles::of(v.into_iter().map(|(_, l)| l).collect());
    Ok(SoakReport {
        windows,
        expected: expected - baseline,
        stored: stored - baseline,
        drained_in,
        halves: [latencies(first), latencies(second)],
    })
}

/// The samples' lock; a pacer that panicked holding it left whole samples behind.
fn lock<T>(samples: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
