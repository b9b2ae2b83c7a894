//! The outbox writer: one task that redacts events and commits them, many batches to a
//! transaction (group commit), so throughput does not hang on one fsync per event.

use std::sync::Arc;
use std::time::Duration;

use aa_core::AuditEvent;
use aa_security::{Limits, Scanner};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::outbox::Outbox;

/// Events to write, and who waits for them (nobody, for the runtime's own decision events).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) events: Vec<AuditEvent>,
    pub(crate) done: Option<oneshot::Sender<Result<u64, String>>>,
}

/// Jobs merged into one transaction at most.
const GROUP: usize = 256;
/// How long a group nobody waits on (the runtime's own decision events) gathers more jobs,
/// so one sync of the disk covers many decisions. A job someone waits on ends the wait.
const LINGER: Duration = Duration::from_millis(2);

/// Adds queued jobs to `group` without waiting, up to [`GROUP`].
fn take_queued(jobs: &mut mpsc::Receiver<Job>, group: &mut Vec<Job>) {
    while group.len() < GROUP {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// Lets a group nobody waits on gather for up to [`LINGER`].
async fn linger(jobs: &mut mpsc::Receiver<Job>, group: &mut Vec<Job>) {
    let deadline = tokio::time::sleep(LINGER);
    tokio::pin!(deadline);
    while group.len() < GROUP && group.iter().all(|j| j.done.is_none()) {
        tokio::select! {
            () = &mut deadline => break,
            job = jobs.recv() => match job {
                Some(job) => {
                    group.push(job);
                    take_queued(jobs, group);
                }
                None => break,
            },
        }
    }
}

/// Runs the writer until every sender is gone and the queue is drained.
pub(crate) async fn write_loop(
    mut jobs: mpsc::Receiver<Job>,
    outbox: Arc<Outbox>,
    scanner: Arc<Scanner>,
    limits: Limits,
    written: Arc<Notify>,
) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        take_queued(&mut jobs, &mut group);
        linger(&mut jobs, &mut group).await;
        let outbox = Arc::clone(&outbox);
        let scanner = Arc::clone(&scanner);
        let result = tokio::task::spawn_blocking(move || {
            let mut outcomes: Vec<Result<(), String>> = Vec::with_capacity(group.len());
            for job in &mut group {
                let mut outcome = Ok(());
                for event in &mut job.events {
                    // Nothing is written before it is redacted; an event the scanner cannot
                    // put back together fails its whole batch, loudly.
                    if let Err(e) = scanner.redact_audit_event(event, &limits) {
                        outcome = Err(e.to_string());
                    }
                }
                if outcome.is_err() {
                    job.events.clear();
                }
                outcomes.push(outcome);
            }
            let mut batches: Vec<Vec<AuditEvent>> = group
                .iter_mut()
                .map(|j| std::mem::take(&mut j.events))
                .collect();
            let counts = outbox.append(&mut batches).map_err(|e| e.to_string());
            (group, outcomes, counts)
        })
        .await;
        let Ok((group, outcomes, counts)) = result else {
            tracing::error!("outbox writer task failed");
            continue;
        };
        for (i, (job, outcome)) in group.into_iter().zip(outcomes).enumerate() {
            let answer = match (&counts, outcome) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Err(e)) => Err(e),
                (Ok(counts), Ok(())) => Ok(counts.get(i).copied().unwrap_or(0)),
            };
            match job.done {
                Some(done) => {
                    let _ = done.send(answer);
                }
                None => {
                    if let Err(error) = answer {
                        tracing::error!(%error, "a decision event could not be written");
                    }
                }
            }
        }
        written.notify_one();
    }
}
