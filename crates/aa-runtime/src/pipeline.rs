//! The outbox writer: one task that redacts events and commits them, many batches to a
//! transaction (group commit), so throughput does not hang on one fsync per event. When a
//! commit fails (a full disk, a locked database), the SDK's batches are refused, the
//! runtime's own decision events are held in memory and tried again, and [`OutboxHealth`]
//! says so, for `enforce` to deny until a commit succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aa_core::AuditEvent;
use aa_security::{Limits, Scanner};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::RuntimeError;
use crate::memory::Charge;
use crate::outbox::Outbox;

/// The scanner events are redacted with: the built-in rules until a policy bundle is in
/// force, then the bundle's, which adds its policies' custom patterns to them.
#[derive(Debug)]
pub(crate) struct CurrentScanner {
    built_in: Arc<Scanner>,
    current: RwLock<Arc<Scanner>>,
}

impl CurrentScanner {
    pub(crate) fn new(built_in: Arc<Scanner>) -> CurrentScanner {
        CurrentScanner {
            current: RwLock::new(Arc::clone(&built_in)),
            built_in,
        }
    }

    /// The built-in rules, which a bundle's scanner adds to.
    pub(crate) fn built_in(&self) -> &Arc<Scanner> {
        &self.built_in
    }

    pub(crate) fn get(&self) -> Arc<Scanner> {
        // Only ever replaced whole: a panic elsewhere leaves it usable.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn set(&self, scanner: Arc<Scanner>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = scanner;
    }
}

/// Events to write, and who waits for them (nobody, for the runtime's own decision events).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) events: Vec<AuditEvent>,
    /// Another id each event may be held under already (an agent's events: see
    /// [`Outbox::append`]); empty for the runtime's own.
    pub(crate) aliases: Vec<Option<String>>,
    pub(crate) done: Option<oneshot::Sender<Result<u64, String>>>,
    /// A decision's part of the memory budget of decisions waiting for the outbox, held until
    /// its event is committed (or given up): held, never read.
    pub(crate) _charge: Option<Charge>,
}

/// The writer's queue as its senders hold it. A job someone waits on wakes a lingering writer;
/// the runtime's own decision events do not, so the writer wakes about once a group rather
/// than once a decision.
#[derive(Debug, Clone)]
pub(crate) struct Jobs {
    queue: mpsc::Sender<Job>,
    waited: Arc<Notify>,
}

/// The writer's end of the queue.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) jobs: mpsc::Receiver<Job>,
    waited: Arc<Notify>,
}

/// A queue of at most `capacity` jobs.
pub(crate) fn queue(capacity: usize) -> (Jobs, Queue) {
    let (queue, jobs) = mpsc::channel(capacity);
    let waited = Arc::new(Notify::new());
    (
        Jobs {
            queue,
            waited: Arc::clone(&waited),
        },
        Queue { jobs, waited },
    )
}

impl Jobs {
    pub(crate) async fn send(&self, job: Job) -> Result<(), mpsc::error::SendError<Job>> {
        let waited = job.done.is_some();
        self.queue.send(job).await?;
        if waited {
            self.waited.notify_one();
        }
        Ok(())
    }

    pub(crate) fn try_send(&self, job: Job) -> Result<(), mpsc::error::TrySendError<Job>> {
        let waited = job.done.is_some();
        self.queue.try_send(job)?;
        if waited {
            self.waited.notify_one();
        }
        Ok(())
    }

    /// Room for one job nobody waits on (a decision's event): sending through the permit
    /// does not wake a lingering writer.
    pub(crate) async fn reserve(
        &self,
    ) -> Result<mpsc::OwnedPermit<Job>, mpsc::error::SendError<()>> {
        self.queue.clone().reserve_owned().await
    }

    pub(crate) fn max_capacity(&self) -> usize {
        self.queue.max_capacity()
    }
}

/// Jobs merged into one transaction at most.
const GROUP: usize = 256;
/// How long a group nobody waits on (the runtime's own decision events) gathers more jobs,
/// so one sync of the disk covers many decisions. A job someone waits on ends the wait.
const LINGER: Duration = Duration::from_millis(2);

/// Decision events held in memory while the outbox cannot be written, at most (about a
/// kilobyte each).
const HELD_MAX: usize = 20_000;
/// How often held events are tried again when nothing else comes to write.
const RETRY: Duration = Duration::from_secs(1);

/// Whether the outbox can be written: the last commit's error, while commits fail.
#[derive(Debug, Default)]
pub(crate) struct OutboxHealth {
    failing: AtomicBool,
    /// How, in words for a client ([`RuntimeError::fault`]); the log has the rest.
    fault: Mutex<&'static str>,
}

impl OutboxHealth {
    /// Why the outbox cannot be written, while it cannot.
    pub(crate) fn failure(&self) -> Option<&'static str> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        Some(self.fault.lock().map_or("the outbox failed", |f| *f))
    }

    fn record(&self, commit: Result<(), &RuntimeError>) {
        match commit {
            Ok(()) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("the outbox is written again");
                }
            }
            Err(error) => {
                if let Ok(mut last) = self.fault.lock() {
                    *last = error.fault();
                }
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(%error, "the outbox cannot be written: enforce denies until it can");
                }
            }
        }
    }
}

/// Adds queued jobs to `group` without waiting, up to [`GROUP`].
fn take_queued(jobs: &mut mpsc::Receiver<Job>, group: &mut Vec<Job>) {
    while group.len() < GROUP {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// Lets a group nobody waits on gather for up to [`LINGER`], or until a job someone waits on
/// is queued. What was queued meanwhile is taken at the end, not as it comes.
async fn linger(queue: &mut Queue, group: &mut Vec<Job>) {
    if group.len() >= GROUP || group.iter().any(|j| j.done.is_some()) {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(LINGER) => {}
        () = queue.waited.notified() => {}
    }
    take_queued(&mut queue.jobs, group);
}

/// A group scanned and redacted, ready to commit: each job's events and their aliases, and
/// why a job failed.
struct Scanned {
    group: Vec<Job>,
    outcomes: Vec<Result<(), String>>,
    batches: Vec<Vec<AuditEvent>>,
    aliases: Vec<Vec<Option<String>>>,
}

/// Redacts every event of a group; an event the scanner cannot put back together fails its
/// whole job, loudly, and nothing of that job is written.
fn scan(mut group: Vec<Job>, scanner: &Scanner, limits: &Limits) -> Scanned {
    let mut outcomes: Vec<Result<(), String>> = Vec::with_capacity(group.len());
    for job in &mut group {
        let mut outcome = Ok(());
        for event in &mut job.events {
            if let Err(e) = scanner.redact_audit_event(event, limits) {
                outcome = Err(e.to_string());
            }
        }
        if outcome.is_err() {
            job.events.clear();
            job.aliases.clear();
        }
        outcomes.push(outcome);
    }
    let batches = group
        .iter_mut()
        .map(|j| std::mem::take(&mut j.events))
        .collect();
    let aliases = group
        .iter_mut()
        .map(|j| std::mem::take(&mut j.aliases))
        .collect();
    Scanned {
        group,
        outcomes,
        batches,
        aliases,
    }
}

/// Commits a scanned group in one transaction. A failed group's events are kept, for its
/// decision events to be held.
fn commit(mut scanned: Scanned, outbox: &Outbox) -> Committed {
    let counts = outbox.append(&mut scanned.batches, &scanned.aliases);
    (scanned, counts)
}

/// Answers everyone waiting on a committed group. If the commit failed, the group's decision
/// events (nobody waits on them) are held to be tried again; one the scanner refused is
/// logged.
fn answer(
    (scanned, counts): Committed,
    written: &Notify,
    health: &OutboxHealth,
    held: &mut Vec<AuditEvent>,
) {
    health.record(counts.as_ref().map(drop));
    let jobs = scanned.group.into_iter().zip(scanned.outcomes);
    for (i, ((job, outcome), batch)) in jobs.zip(scanned.batches).enumerate() {
        let answer = match (&counts, outcome) {
            (Err(e), _) => Err(format!("the events could not be written: {}", e.fault())),
            (Ok(_), Err(e)) => Err(e),
            (Ok(counts), Ok(())) => Ok(counts.get(i).copied().unwrap_or(0)),
        };
        match (job.done, answer) {
            (Some(done), answer) => {
                let _ = done.send(answer);
            }
            (None, Ok(_)) => {}
            (None, Err(_)) if counts.is_err() && held.len() + batch.len() <= HELD_MAX => {
                held.extend(batch);
            }
            (None, Err(error)) => {
                tracing::error!(%error, events = batch.len(), "decision events could not be written");
            }
        }
    }
    written.notify_one();
}

/// Runs the writer until every sender is gone and the queue is drained. Two stages overlap:
/// while one group is committed (its disk sync mostly waits), the next is gathered and
/// scanned; commits stay in order, one at a time.
pub(crate) async fn write_loop(
    mut queue: Queue,
    outbox: Arc<Outbox>,
    scanner: Arc<CurrentScanner>,
    limits: Limits,
    written: Arc<Notify>,
    health: Arc<OutboxHealth>,
) {
    let mut committing: Option<JoinHandle<Committed>> = None;
    let mut held: Vec<AuditEvent> = Vec::new();
    loop {
        // A finished commit is answered at once, not when the next group comes.
        let first = tokio::select! {
            biased;
            committed = async {
                match committing.as_mut() {
                    Some(commit) => commit.await,
                    None => std::future::pending().await,
                }
            }, if committing.is_some() => {
                committing = None;
                answered(committed, &written, &health, &mut held);
                continue;
            }
            job = queue.jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
            () = tokio::time::sleep(RETRY), if !held.is_empty() && committing.is_none() => Job {
                events: std::mem::take(&mut held),
                aliases: Vec::new(),
                done: None,
                _charge: None,
            },
        };
        let mut group = vec![first];
        if !held.is_empty() {
            group.push(Job {
                events: std::mem::take(&mut held),
                aliases: Vec::new(),
                done: None,
                _charge: None,
            });
        }
        take_queued(&mut queue.jobs, &mut group);
        linger(&mut queue, &mut group).await;
        let scanner = scanner.get();
        let Ok(scanned) = tokio::task::spawn_blocking(move || scan(group, &scanner, &limits)).await
        else {
            tracing::error!("outbox scanning task failed");
            continue;
        };
        if let Some(previous) = committing.take() {
            answered(previous.await, &written, &health, &mut held);
        }
        let outbox = Arc::clone(&outbox);
        committing = Some(tokio::task::spawn_blocking(move || {
            commit(scanned, &outbox)
        }));
    }
    if let Some(last) = committing {
        answered(last.await, &written, &health, &mut held);
    }
    if !held.is_empty() {
        tracing::error!(
            events = held.len(),
            "stopping with decision events the outbox could not take"
        );
    }
}

type Committed = (Scanned, Result<Vec<u64>, RuntimeError>);

fn answered(
    committed: Result<Committed, tokio::task::JoinError>,
    written: &Notify,
    health: &OutboxHealth,
    held: &mut Vec<AuditEvent>,
) {
    match committed {
        Ok(committed) => answer(committed, written, health, held),
        Err(_) => tracing::error!("outbox writer task failed"),
    }
}
