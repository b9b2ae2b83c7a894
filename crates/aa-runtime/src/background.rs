//! Work no caller waits on (writing the outbox, forwarding it to the gateway) runs on its own
//! thread and blocking pool, at a lower scheduling priority than the threads that answer the
//! socket. On a busy host the scheduler then gives a check the processor before a group
//! commit or a batch for the gateway, so checks are not queued behind them; the background
//! still gets whatever the checks leave, and a queue that fills makes checks wait for room
//! (`Runtime::decision_slot`), so nothing is dropped when it falls behind.

use std::future::Future;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::RuntimeError;

/// How much less of the processor the background gets when both want it: Linux's nice value,
/// which weighs a thread at about a tenth of a nice-0 thread (CFS weights 110 against 1024).
const NICENESS: i32 = 10;

/// A single-threaded async runtime on a thread of its own; its tasks stop when it is dropped.
#[derive(Debug)]
pub(crate) struct Background {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Background {
    pub(crate) fn start() -> Result<Background, RuntimeError> {
        let setup = |e: std::io::Error| RuntimeError::Setup(format!("background thread: {e}"));
        // Fixed now, from the caller's: a blocking thread is started by the background thread
        // and inherits its priority, to which lowering again would add a second step.
        let target = rustix::process::getpriority_process(None)
            .map(|now| now + NICENESS)
            .ok();
        let lower = move || lower_priority(target);
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name("aa-runtime-background")
            .on_thread_start(lower)
            .build()
            .map_err(setup)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("aa-runtime-background".into())
            .spawn(move || {
                lower();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(setup)?;
        Ok(Background {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Runs `make` inside the background runtime, for what spawns its own tasks on creation
    /// (a gRPC channel's worker).
    pub(crate) fn within<T>(&self, make: impl FnOnce() -> T) -> T {
        let _entered = self.handle.enter();
        make()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sets the calling thread's nice value to `target` ([`NICENESS`] above the thread that
/// started the background; none if its own could not be read). Linux applies `setpriority`
/// for a process id of 0 to the calling thread alone. A failure leaves the thread as it was:
/// only latency suffers.
fn lower_priority(target: Option<i32>) {
    let Some(target) = target else {
        return;
    };
    if let Err(error) = rustix::process::setpriority_process(None, target) {
        tracing::debug!(%error, "could not lower the background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn background_tasks_and_blocking_work_run_at_a_lower_priority() {
        let caller = rustix::process::getpriority_process(None).unwrap();
        let lowered = (caller + NICENESS).min(19);
        let background = Background::start().unwrap();
        // Blocking work is started from the background thread, as the outbox writer starts
        // it, so its thread is created by one already lowered.
        let answers = background.spawn(async {
            let own = rustix::process::getpriority_process(None);
            let blocking =
                tokio::task::spawn_blocking(|| rustix::process::getpriority_process(None));
            (own, blocking.await)
        });
        let (own, blocking) = Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(answers)
            .unwrap();
        assert_eq!(
            (own.unwrap(), blocking.unwrap().unwrap()),
            (lowered, lowered)
        );
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), caller);
    }
}
