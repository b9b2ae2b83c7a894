//! Work no caller waits on runs here, on a thread and blocking pool of its own, at a lower
//! scheduling priority ([`BackgroundPriority`]) than the threads that answer callers: the
//! runtime's outbox writer and forwarder, below the threads that answer checks; the gateway's
//! appends, below its other calls and below a runtime on the same host. On a
//! busy host the scheduler then gives a caller's thread the processor before a group commit
//! or a batch of events, so calls are not queued behind them; the background still gets
//! whatever the callers leave. Its users await what they hand it ([`Background::run`]) or hand
//! it through a bounded queue, so a background that falls behind slows its producers.
//!
//! One module: [`Background`] (the thread, its async runtime and blocking pool),
//! [`BackgroundPriority`] (how far below) and [`runs_idle`] (whether a thread is under
//! `SCHED_IDLE`). The crate knows nothing of what runs on it.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinError, JoinHandle};

/// How background work gives way to the threads that answer callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackgroundPriority {
    /// Linux's `SCHED_IDLE`: the background runs on what the other threads of its scheduling
    /// group leave, and a caller's thread woken meanwhile takes the processor at once. A
    /// process in a cgroup of its own (a container, a systemd unit) gives way only to itself;
    /// one that shares a cgroup with busy processes gets little of the processor while they
    /// run (its queues then fill and callers wait for room), which [`Lower`](Self::Lower)
    /// avoids. Where `SCHED_IDLE` is missing or refused, the same as `Lower`.
    #[default]
    Idle,
    /// Ten nice levels below the callers' threads: about a tenth of the processor against
    /// each busy thread of normal priority, but a woken caller may wait for the background's
    /// time slice to end.
    Lower,
}

impl BackgroundPriority {
    /// The name used in flags and messages.
    pub fn name(self) -> &'static str {
        match self {
            BackgroundPriority::Idle => "idle",
            BackgroundPriority::Lower => "lower",
        }
    }
}

impl fmt::Display for BackgroundPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackgroundPriority {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [BackgroundPriority::Idle, BackgroundPriority::Lower]
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| format!("{text:?} is not a background priority: idle or lower"))
    }
}

/// How much less of the processor the background gets under [`BackgroundPriority::Lower`]:
/// Linux's nice value, which weighs a thread at about a tenth of a nice-0 thread (CFS weights
/// 110 against 1024).
const NICENESS: i32 = 10;

/// A thread running a one-thread async runtime, whose tasks and blocking pool run at the
/// priority it was started with. Dropping it stops the thread: tasks still pending are
/// dropped, blocking work under way is waited for.
#[derive(Debug)]
pub struct Background {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Background {
    /// Starts the thread `name` (which its blocking threads share) at `priority`.
    pub fn start(name: &str, priority: BackgroundPriority) -> std::io::Result<Background> {
        // Fixed now, from the caller's: a blocking thread is started by the background thread
        // and inherits its priority, to which lowering again would add a second step.
        let nice = rustix::process::getpriority_process(None)
            .map(|now| now + NICENESS)
            .ok();
        let lower = move || lower_priority(priority, nice);
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .on_thread_start(lower)
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            lower();
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(Background {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `task` in the background.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Runs `task` in the background for a caller that waits for it: the returned future
    /// resolves to its output, and dropping it (the caller gave up) stops the task at its
    /// next await point, as if the caller had run it itself.
    pub fn run<F>(&self, task: F) -> impl Future<Output = Result<F::Output, JoinError>> + Send
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.handle.spawn(task);
        let abort = AbortOnDrop(task.abort_handle());
        async move {
            let output = task.await;
            drop(abort);
            output
        }
    }

    /// Runs `make` inside the background runtime, for what spawns its own tasks on creation
    /// (a gRPC channel's worker).
    pub fn within<T>(&self, make: impl FnOnce() -> T) -> T {
        let _entered = self.handle.enter();
        make()
    }
}

/// Whether the calling thread runs under `SCHED_IDLE` (never off Linux): there, any thread
/// woken beside it takes the processor at once, so it need not offer it.
pub fn runs_idle() -> bool {
    idle::is_idle()
}

/// Aborts a task when dropped; a task that has ended is left as it is.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// Lowers the calling thread to `priority`; under [`BackgroundPriority::Lower`], or where
/// `SCHED_IDLE` cannot be had, to the nice value `nice` ([`NICENESS`] above the thread that
/// started the background; none if its own could not be read). Linux applies `setpriority`
/// for a process id of 0 to the calling thread alone. A failure leaves the thread as it was:
/// only latency suffers.
fn lower_priority(priority: BackgroundPriority, nice: Option<i32>) {
    if priority == BackgroundPriority::Idle && idle::enter() {
        return;
    }
    let Some(nice) = nice else {
        return;
    };
    if let Err(error) = rustix::process::setpriority_process(None, nice) {
        tracing::debug!(%error, "could not lower the background thread's priority");
    }
}

#[cfg(target_os = "linux")]
mod idle {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
    };

    const IDLE: ThreadSchedulePolicy =
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);

    /// Puts the calling thread under `SCHED_IDLE`; whether it is now.
    pub(super) fn enter() -> bool {
        // After setting the policy the crate also sets the thread's nice value to 0, which is
        // refused to a thread above it without privilege; `SCHED_IDLE` ignores nice values, so
        // what counts is the policy read back.
        let set = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, IDLE);
        let now = is_idle();
        if !now {
            tracing::debug!(?set, "could not put the background thread under SCHED_IDLE");
        }
        now
    }

    /// Whether the calling thread runs under `SCHED_IDLE`.
    pub(super) fn is_idle() -> bool {
        thread_schedule_policy().is_ok_and(|policy| policy == IDLE)
    }
}

#[cfg(not(target_os = "linux"))]
mod idle {
    /// `SCHED_IDLE` is Linux's alone.
    pub(super) fn enter() -> bool {
        false
    }

    pub(super) fn is_idle() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The background thread's and a blocking thread's (nice value, under `SCHED_IDLE`).
    /// Blocking work is started from the background thread, as the outbox writer starts it,
    /// so its thread is created by one already lowered.
    fn background_and_blocking(priority: BackgroundPriority) -> [(i32, bool); 2] {
        let read = || {
            let nice = rustix::process::getpriority_process(None).unwrap();
            (nice, runs_idle())
        };
        let background = Background::start("background-test", priority).unwrap();
        let answers = background.spawn(async move {
            let blocking = tokio::task::spawn_blocking(read);
            [read(), blocking.await.unwrap()]
        });
        Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(answers)
            .unwrap()
    }

    #[test]
    fn background_tasks_and_blocking_work_run_at_a_lower_nice_value() {
        let caller = rustix::process::getpriority_process(None).unwrap();
        let lowered = (caller + NICENESS).min(19);
        assert_eq!(
            background_and_blocking(BackgroundPriority::Lower),
            [(lowered, false); 2]
        );
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), caller);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn background_tasks_and_blocking_work_run_idle() {
        let [own, blocking] = background_and_blocking(BackgroundPriority::Idle);
        assert!(own.1 && blocking.1, "{own:?} {blocking:?}");
        assert!(!runs_idle());
    }

    #[test]
    fn a_run_awaited_gives_its_output_and_one_given_up_stops() {
        /// Says when the task holding it is dropped.
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let background = Background::start("background-test", BackgroundPriority::Lower).unwrap();
        let caller = Builder::new_current_thread().build().unwrap();
        assert_eq!(caller.block_on(background.run(async { 7 })).unwrap(), 7);

        let (tx, dropped) = std::sync::mpsc::channel();
        let held = Dropped(tx);
        let waiting = background.run(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(waiting);
        dropped
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the task was stopped");
    }

    #[test]
    fn priorities_read_back_their_names() {
        for priority in [BackgroundPriority::Idle, BackgroundPriority::Lower] {
            assert_eq!(priority.name().parse::<BackgroundPriority>(), Ok(priority));
        }
        let err = "nice".parse::<BackgroundPriority>().unwrap_err();
        assert!(
            err.contains("\"nice\"") && err.contains("idle or lower"),
            "{err}"
        );
    }
}
