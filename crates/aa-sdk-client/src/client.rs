//! [`Client`]: connects lazily, reconnects after a broken connection, runs every call on its
//! own background runtime, and resolves failures by the configured mode.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aa_core::ids::IdSequence;
use aa_core::{Action, AgentContext, AuditEvent, Decision, EventKind, Mode, TopologyEdge, Verdict};
use aa_identity::Keypair;
use aa_proto::pb;
use aa_proto::pb::frame::Body;
use serde_json::Value;
use tokio::sync::{Mutex, oneshot};

use crate::connection::{BlockingConnection, Connection};
use crate::error::ClientError;

/// The environment variable naming the runtime socket.
pub const SOCKET_ENV: &str = "AASM_SOCKET";
/// The environment variable naming the state directory (where agent keys live).
pub const STATE_DIR_ENV: &str = "AASM_STATE_DIR";
/// The environment variable holding a spawn grant ([`Client::grant_spawn`]) for a child
/// registered where its parent's key is not, when its [`AgentSpec`] carries none.
pub const SPAWN_GRANT_ENV: &str = "AASM_SPAWN_GRANT";
/// The socket path when neither an argument nor `AASM_SOCKET` names one.
pub const DEFAULT_SOCKET: &str = ".aasm/runtime.sock";
/// Where agent keys are kept when no state directory is given.
pub const DEFAULT_STATE_DIR: &str = ".aasm";

/// The socket to use: the argument, else `AASM_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn resolve_socket(argument: Option<&Path>) -> PathBuf {
    resolve_socket_or(argument, Path::new(DEFAULT_SOCKET))
}

/// The socket to use: the argument, else `AASM_SOCKET`, else `default`.
pub fn resolve_socket_or(argument: Option<&Path>, default: &Path) -> PathBuf {
    argument
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| default.to_path_buf())
}

/// The state directory to use: the argument, else `AASM_STATE_DIR`, else
/// [`DEFAULT_STATE_DIR`] (the one `aasm up` uses when started in the same folder).
pub fn resolve_state_dir(argument: Option<&Path>) -> PathBuf {
    argument
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(STATE_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// How the client is set up.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The runtime socket; `None` resolves by [`resolve_socket`].
    pub socket_path: Option<PathBuf>,
    /// Where agent keys live (`<state_dir>/agents/<id>.key`).
    pub state_dir: PathBuf,
    /// How failures resolve: under `enforce` every failure denies; otherwise it allows.
    pub mode: Mode,
    /// How long one call may take.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            socket_path: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            mode: Mode::Enforce,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What an agent presents when it registers.
#[derive(Debug, Clone, Default)]
pub struct AgentSpec {
    /// Stable id.
    pub agent_id: String,
    /// Display name (defaults to the id).
    pub name: Option<String>,
    /// e.g. `langchain`, `custom`.
    pub framework: Option<String>,
    /// Its team.
    pub team_id: Option<String>,
    /// The agent that spawned it. A child's first registration carries the parent's consent:
    /// signed by this client with the parent's key where its state directory keeps it, else
    /// the parent's [`spawn_grant`](Self::spawn_grant).
    pub parent_agent_id: Option<String>,
    /// A grant the parent signed ahead of time for this child ([`Client::grant_spawn`],
    /// `aasm agents grant`), for a child registered where its parent's key is not (another
    /// host); else `AASM_SPAWN_GRANT`, if set. Not used when the parent's key is here.
    pub spawn_grant: Option<String>,
    /// Why it was spawned.
    pub delegation_reason: Option<String>,
    /// The parent's tool that spawned it.
    pub spawned_by_tool: Option<String>,
}

/// A registered agent: its id, its lineage as the gateway recorded it, and its current
/// credential, renewed in the background.
#[derive(Debug, Clone)]
pub struct Agent {
    id: String,
    context: AgentContext,
    credential: Arc<StdMutex<Credential>>,
    /// Held while the token is renewed, or registered again, and while the agent is
    /// deregistered: a deregistration never presents a token a renewal is replacing.
    renewal: Arc<tokio::sync::Mutex<()>>,
}

/// An [`Agent`] that does not keep it alive: what its renewal holds.
#[derive(Debug)]
struct WeakAgent {
    id: String,
    context: AgentContext,
    credential: std::sync::Weak<StdMutex<Credential>>,
    renewal: std::sync::Weak<tokio::sync::Mutex<()>>,
}

impl WeakAgent {
    fn upgrade(&self) -> Option<Agent> {
        Some(Agent {
            id: self.id.clone(),
            context: self.context.clone(),
            credential: self.credential.upgrade()?,
            renewal: self.renewal.upgrade()?,
        })
    }
}

#[derive(Clone)]
struct Credential {
    token: String,
    expires_at_ms: i64,
    /// Deregistered: never renewed or registered again in the background.
    ended: bool,
}

/// Written without the token, so that logging an [`Agent`] (`{agent:?}`) never writes it:
/// whoever read it could act as the agent.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Agent {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn downgrade(&self) -> WeakAgent {
        WeakAgent {
            id: self.id.clone(),
            context: self.context.clone(),
            credential: Arc::downgrade(&self.credential),
            renewal: Arc::downgrade(&self.renewal),
        }
    }

    /// Its team, parent and depth as the gateway recorded them (the gateway, not the
    /// agent, counts the depth).
    pub fn context(&self) -> &AgentContext {
        &self.context
    }

    /// The current credential token (what every call presents).
    pub fn credential_token(&self) -> String {
        self.token()
    }

    fn token(&self) -> String {
        self.credential
            .lock()
            .map(|c| c.token.clone())
            .unwrap_or_default()
    }

    /// When the current token expires, ms since the epoch.
    pub fn expires_at_ms(&self) -> i64 {
        self.credential.lock().map_or(0, |c| c.expires_at_ms)
    }

    fn renew(&self, token: String, expires_at_ms: i64) {
        if let Ok(mut c) = self.credential.lock() {
            c.token = token;
            c.expires_at_ms = expires_at_ms;
        }
    }

    fn set_ended(&self, ended: bool) {
        if let Ok(mut c) = self.credential.lock() {
            c.ended = ended;
        }
    }

    fn ended(&self) -> bool {
        self.credential.lock().map_or(true, |c| c.ended)
    }
}

/// A decision and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// The decision to apply, with its rule and reason.
    pub verdict: Verdict,
    /// Set when the decision is pending a human's approval.
    pub approval_id: Option<String>,
    /// The action checked, kept while the decision is pending: the wait presents it, and the
    /// runtime releases only the action the approval was asked for.
    pub action: Option<Action>,
    /// True when the runtime did not decide (unreachable, timed out, refused) and the client
    /// resolved by its mode.
    pub resolved_locally: bool,
}

/// Something an agent reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// What happened.
    pub kind: EventKind,
    /// The action it concerns.
    pub action: Action,
    /// Result, error, duration, usage: free-form JSON.
    pub detail: Option<Value>,
    /// The run it belongs to.
    pub session_id: Option<String>,
}

/// An answer being computed on the client's runtime: `.await` it from any executor, or
/// [`Call::wait`] for it from a plain thread.
#[derive(Debug)]
pub struct Call<T> {
    /// Until the answer is taken: asked again after, a call says so rather than poll a spent
    /// channel (which panics).
    answer: Option<oneshot::Receiver<Result<T, ClientError>>>,
}

impl<T> Future for Call<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(answer) = self.answer.as_mut() else {
            return Poll::Ready(Err(answer_taken()));
        };
        let answer = Pin::new(answer)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)));
        if answer.is_ready() {
            self.answer = None;
        }
        answer
    }
}

fn answer_taken() -> ClientError {
    ClientError::InvalidArgument {
        field: "call",
        message: "its answer was already taken".into(),
    }
}

/// `Instant::now() + after`, or a century from now for a longer wait (which the addition
/// would overflow, and panic at): a caller's timeout can be any number.
fn deadline_in(after: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl<T> Call<T> {
    /// Blocks the thread until the answer. From inside an async runtime, `.await` instead:
    /// blocking there is refused with an error.
    pub fn wait(self) -> Result<T, ClientError> {
        refuse_inside_runtime("wait()")?;
        match self.answer {
            Some(answer) => answer.blocking_recv().unwrap_or(Err(ClientError::Closed)),
            None => Err(answer_taken()),
        }
    }

    /// Blocks the thread for at most `limit`: the answer if it came, `None` if not yet (wait
    /// again, or drop the call to abandon it). Lets a binding wait in slices and handle its
    /// language's interrupts in between.
    pub fn wait_for(&mut self, limit: Duration) -> Option<Result<T, ClientError>> {
        let waker = std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let deadline = deadline_in(limit);
        loop {
            if let Poll::Ready(answer) = Pin::new(&mut *self).poll(&mut context) {
                return Some(answer);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            std::thread::park_timeout(left);
        }
    }

    /// Waits in slices of `slice`, asking `interrupted` after each whether to give up
    /// ([`ClientError::Interrupted`]).
    fn wait_until(
        mut self,
        slice: Duration,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<T, ClientError> {
        loop {
            if let Some(answer) = self.wait_for(slice) {
                return answer;
            }
            if interrupted() {
                return Err(ClientError::Interrupted);
            }
        }
    }
}

impl Shared {
    /// Refuses a client carried into a child process by `fork` ([`ClientError::Forked`]).
    fn same_process(&self) -> Result<(), ClientError> {
        let here = std::process::id();
        if here == self.pid {
            Ok(())
        } else {
            Err(ClientError::Forked {
                made_in: self.pid,
                used_in: here,
            })
        }
    }
}

/// Blocking a thread of an async runtime would stall every task on it.
fn refuse_inside_runtime(what: &str) -> Result<(), ClientError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(ClientError::Internal(format!(
            "{what} called inside an async runtime; await the call instead"
        ))),
        Err(_) => Ok(()),
    }
}

/// Wakes a thread parked in [`Call::wait_for`].
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

#[derive(Debug)]
struct Shared {
    /// The process that made the client ([`ClientError::Forked`]).
    pid: u32,
    config: ClientConfig,
    socket: PathBuf,
    connection: Mutex<Option<Arc<Connection>>>,
    /// For [`Client::check_blocking`]; opened on its first use.
    blocking: StdMutex<Option<BlockingConnection>>,
    event_ids: IdSequence,
}

/// The client's own async runtime, gone once the client is closed. Shut down without
/// waiting, so the last clone of a client may go away anywhere, an async context included,
/// without blocking or panicking.
#[derive(Debug)]
struct Background(StdMutex<Option<tokio::runtime::Runtime>>);

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Background {
    /// Runs `work` on the runtime; drops it when the client is closed.
    fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Ok(Some(runtime)) = self.0.lock().as_deref() {
            runtime.spawn(work);
        }
    }

    /// Stops the runtime: its tasks (connections, token renewals, calls under way) are
    /// dropped, which closes their sockets.
    fn stop(&self) {
        let runtime = match self.0.lock() {
            Ok(mut runtime) => runtime.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }

    fn is_stopped(&self) -> bool {
        self.0.lock().map_or(true, |runtime| runtime.is_none())
    }
}

/// The client. Cheap to clone; clones share one connection and one background runtime.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    runtime: Arc<Background>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The ids of this client's events: a random start drawn once, then a count. Without
/// randomness the clock stands in: the ids need only differ from another client's.
fn event_ids() -> IdSequence {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        seed = (nanos as u64).to_be_bytes();
    }
    IdSequence::new(seed)
}

impl Client {
    /// A client; nothing is dialled until the first call.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("aasm-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Internal(format!("background runtime: {e}")))?;
        let socket = resolve_socket(config.socket_path.as_deref());
        Ok(Client {
            shared: Arc::new(Shared {
                pid: std::process::id(),
                config,
                socket,
                connection: Mutex::new(None),
                blocking: StdMutex::new(None),
                event_ids: event_ids(),
            }),
            runtime: Arc::new(Background(StdMutex::new(Some(runtime)))),
        })
    }

    /// The socket this client uses.
    pub fn socket_path(&self) -> &Path {
        &self.shared.socket
    }

    /// The configured mode.
    pub fn mode(&self) -> Mode {
        self.shared.config.mode
    }

    /// Runs `work` on the client's runtime; in a fork of the process that made the client,
    /// where that runtime's threads are not, answers [`ClientError::Forked`] instead.
    fn spawn<T, F>(&self, work: F) -> Call<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        if let Err(forked) = self.shared.same_process() {
            let _ = tx.send(Err(forked));
            return Call { answer: Some(rx) };
        }
        // Once closed, the task and the sender in it are dropped: the call answers `Closed`.
        self.runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        Call { answer: Some(rx) }
    }

    /// Closes the client, and every clone of it: the connections to the runtime close, token
    /// renewals stop, calls under way end with [`ClientError::Closed`], and so does any call
    /// made after. A blocking check under way finishes and then closes its connection. It
    /// never waits: it may be called from a signal handler run in the middle of a blocking
    /// check on the same thread. Dropping the last clone does the same.
    pub fn close(&self) {
        self.runtime.stop();
        // Free now, or the check holding it closes it when it is done.
        if let Ok(mut blocking) = self.shared.blocking.try_lock() {
            blocking.take();
        }
    }

    /// Whether [`close`](Self::close) was called (on this client or a clone).
    pub fn is_closed(&self) -> bool {
        self.runtime.is_stopped()
    }

    /// Connects now (otherwise the first call does), so a missing runtime shows at start-up.
    pub fn connect(&self) -> Call<()> {
        let shared = Arc::clone(&self.shared);
        self.spawn(async move { shared.connection().await.map(|_| ()) })
    }

    /// Registers an agent: loads or creates its key under the state directory, answers the
    /// gateway's challenge, and keeps its token renewed until the client is dropped.
    pub fn register(&self, spec: AgentSpec) -> Call<Agent> {
        let shared = Arc::clone(&self.shared);
        self.spawn(async move {
            let agent = shared.register(&spec).await?;
            tokio::spawn(renew(Arc::downgrade(&shared), agent.downgrade(), spec));
            Ok(agent)
        })
    }

    /// [`grant_spawn`] with this client's state directory.
    pub fn grant_spawn(
        &self,
        parent_id: &str,
        child_id: &str,
        ttl: Duration,
    ) -> Result<String, ClientError> {
        grant_spawn(&self.shared.config.state_dir, parent_id, child_id, ttl)
    }

    /// Asks whether `agent` may perform `action`. Fails only once the client is closed: any
    /// other failure resolves by the mode (`enforce` denies, `observe` and `disabled` allow),
    /// marked `resolved_locally`.
    pub fn check(
        &self,
        agent: &Agent,
        action: Action,
        session_id: Option<String>,
    ) -> Call<CheckOutcome> {
        let shared = Arc::clone(&self.shared);
        if let Err(forked) = shared.same_process() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(resolve_forked(shared.config.mode, forked)));
            return Call { answer: Some(rx) };
        }
        let agent = agent.clone();
        self.spawn(async move {
            let mode = shared.config.mode;
            if mode == Mode::Disabled {
                return Ok(checks_disabled());
            }
            let request = check_request(&agent, &action, session_id);
            let answer = shared.call_as(&agent, request, true).await;
            Ok(resolve_check(
                mode,
                answer.and_then(|a| check_outcome(a, &action)),
            ))
        })
    }

    /// [`check`](Self::check) waited for on the calling thread, which writes the request and
    /// reads the answer itself over a connection of its own: no thread of the client's runtime
    /// wakes on the way, as three do for `check(..).wait()`. The answer is the same, failures
    /// resolved by the mode. One thread at a time uses that connection; a call made while
    /// another thread is on it goes through the shared connection instead. From inside an
    /// async runtime it is refused, as [`Call::wait`] is: `.await` [`check`](Self::check).
    pub fn check_blocking(
        &self,
        agent: &Agent,
        action: Action,
        session_id: Option<String>,
    ) -> Result<CheckOutcome, ClientError> {
        let timeout = self.shared.config.timeout;
        self.check_blocking_until(agent, action, session_id, timeout, &mut || false)
    }

    /// [`check_blocking`](Self::check_blocking) that asks `interrupted` after each `slice` of
    /// waiting whether to give up, for a binding to handle its language's interrupts: giving
    /// up is [`ClientError::Interrupted`], not an outcome, as the runtime did not fail.
    pub fn check_blocking_until(
        &self,
        agent: &Agent,
        action: Action,
        session_id: Option<String>,
        slice: Duration,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<CheckOutcome, ClientError> {
        refuse_inside_runtime("check_blocking()")?;
        let mode = self.shared.config.mode;
        // Before anything of the client is touched: in a fork its connection is the parent's,
        // and a lock a parent's thread held at the fork stays held.
        if let Err(forked) = self.shared.same_process() {
            return Ok(resolve_forked(mode, forked));
        }
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if mode == Mode::Disabled {
            return Ok(checks_disabled());
        }
        let Ok(mut connection) = self.shared.blocking.try_lock() else {
            return self
                .check(agent, action, session_id)
                .wait_until(slice, interrupted);
        };
        let request = check_request(agent, &action, session_id.clone());
        let answer = self
            .shared
            .call_blocking(&mut connection, request, slice, interrupted);
        // Refused with a token a renewal has replaced (or is replacing): the shared path waits
        // for the renewal and asks again with the new one.
        if refused_for_its_token(&answer) {
            drop(connection);
            return self
                .check(agent, action, session_id)
                .wait_until(slice, interrupted);
        }
        // Closed meanwhile (perhaps by this very thread, from the interrupt check).
        if self.is_closed() {
            connection.take();
        }
        match answer {
            Err(ClientError::Interrupted) => Err(ClientError::Interrupted),
            answer => Ok(resolve_check(
                mode,
                answer.and_then(|a| check_outcome(a, &action)),
            )),
        }
    }

    /// Resolves a pending outcome: waits for a human's decision on it, through the runtime,
    /// and denies when none comes within `timeout` (or the approval expires first). Any other
    /// outcome comes back as it is. A runtime that cannot be reached resolves by the mode.
    pub fn await_approval(
        &self,
        agent: &Agent,
        outcome: CheckOutcome,
        timeout: Duration,
    ) -> Call<CheckOutcome> {
        let shared = Arc::clone(&self.shared);
        let agent = agent.clone();
        self.spawn(async move {
            if outcome.verdict.decision != Decision::Pending {
                return Ok(outcome);
            }
            let mode = shared.config.mode;
            match shared.await_approval(&agent, &outcome, timeout).await {
                Ok(resolved) => Ok(resolved),
                Err(error) => Ok(CheckOutcome {
                    approval_id: outcome.approval_id,
                    ..local(
                        fail_by_mode(mode),
                        mode,
                        format!("the runtime did not answer the approval wait: {error}"),
                    )
                }),
            }
        })
    }

    /// Reports events as `agent`'s; returns how many were new once the runtime has them on
    /// disk. A failure is returned, never swallowed. The events get their ids here, in the
    /// call: the client's own second try after a broken connection sends the same ids (the
    /// runtime counts them once), but a caller that reports again after a timeout sends new
    /// ones, and events the runtime did store before the timeout are then stored twice.
    pub fn report(
        &self,
        agent: &Agent,
        reports: Vec<Report>,
        edges: Vec<TopologyEdge>,
    ) -> Call<u64> {
        let shared = Arc::clone(&self.shared);
        let agent = agent.clone();
        self.spawn(async move {
            let now = now_ms();
            let mut events = Vec::with_capacity(reports.len());
            for report in reports {
                let event = AuditEvent {
                    event_id: shared.event_ids.next_id(),
                    timestamp_ms: now,
                    agent: aa_core::AgentContext::new(agent.id.clone()),
                    session_id: report.session_id,
                    action: report.action,
                    verdict: None,
                    redactions: Vec::new(),
                    kind: report.kind,
                    detail: report.detail,
                    origin: None,
                };
                events.push(pb::AuditEvent::from(&event));
            }
            let batch = pb::EventBatch {
                events,
                edges: edges.iter().map(Into::into).collect(),
                agent_id: agent.id.clone(),
                credential_token: agent.token(),
            };
            match shared.call_as(&agent, Body::Events(batch), true).await? {
                Body::EventsAck(ack) => Ok(ack.accepted),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// Renews `agent`'s token now (the client also does this on its own before expiry).
    pub fn heartbeat(&self, agent: &Agent) -> Call<()> {
        let shared = Arc::clone(&self.shared);
        let agent = agent.clone();
        self.spawn(async move {
            // As a renewal: a call refused for the token this replaces waits for the new one.
            let _renewal = agent.renewal.lock().await;
            shared.heartbeat(&agent).await
        })
    }

    /// Ends `agent`'s registration; its token stops working.
    pub fn deregister(&self, agent: &Agent, reason: &str) -> Call<()> {
        let shared = Arc::clone(&self.shared);
        let agent = agent.clone();
        let reason = reason.to_owned();
        self.spawn(async move {
            let request = |credential_token: String| {
                Body::Deregister(pb::DeregisterRequest {
                    agent_id: agent.id.clone(),
                    credential_token,
                    reason: reason.clone(),
                })
            };
            // Ended before it is asked for, so that a renewal refused meanwhile does not
            // register it again; taken back if the runtime does not deregister it.
            agent.set_ended(true);
            // Not while a renewal replaces the token this call presents; no longer than a call.
            let timeout = shared.config.timeout;
            let Ok(_renewal) = tokio::time::timeout(timeout, agent.renewal.lock()).await else {
                agent.set_ended(false);
                return Err(ClientError::Timeout(timeout));
            };
            let answer = shared.call(request(agent.token()), false).await;
            match answer {
                Ok(Body::Deregistered(_)) => {
                    // Again, under the lock: another deregistration that failed meanwhile
                    // took it back.
                    agent.set_ended(true);
                    Ok(())
                }
                other => {
                    agent.set_ended(false);
                    Err(other.map_or_else(|e| e, |body| unexpected(&body)))
                }
            }
        })
    }
}

/// Whether `answer` refuses its request's token: reports are refused as unauthenticated,
/// checks denied by the rule `credential`.
fn refused_for_its_token(answer: &Result<Body, ClientError>) -> bool {
    match answer {
        Err(error) => error.is_unauthenticated(),
        Ok(Body::Decision(pb::CheckResponse {
            decision: Some(decision),
        })) => {
            decision.decision == pb::Decision::Deny as i32 && decision.matched_rule == "credential"
        }
        Ok(_) => false,
    }
}

/// The token a request made as an agent carries.
fn credential_of(request: &Body) -> Option<String> {
    match request {
        Body::Check(check) => Some(check.credential_token.clone()),
        Body::Events(batch) => Some(batch.credential_token.clone()),
        _ => None,
    }
}

fn set_credential(request: &mut Body, token: String) {
    match request {
        Body::Check(check) => check.credential_token = token,
        Body::Events(batch) => batch.credential_token = token,
        _ => {}
    }
}

fn check_request(agent: &Agent, action: &Action, session_id: Option<String>) -> Body {
    Body::Check(pb::CheckRequest {
        agent_id: agent.id.clone(),
        credential_token: agent.token(),
        action: Some(action.into()),
        session_id: session_id.unwrap_or_default(),
    })
}

fn check_outcome(answer: Body, action: &Action) -> Result<CheckOutcome, ClientError> {
    match answer {
        Body::Decision(pb::CheckResponse {
            decision: Some(decision),
        }) => {
            let approval_id = Some(decision.approval_id.clone()).filter(|a| !a.is_empty());
            let verdict = Verdict::from(decision);
            let action = (verdict.decision == Decision::Pending).then(|| action.clone());
            Ok(CheckOutcome {
                verdict,
                approval_id,
                action,
                resolved_locally: false,
            })
        }
        other => Err(unexpected(&other)),
    }
}

fn checks_disabled() -> CheckOutcome {
    local(
        Decision::Allow,
        Mode::Disabled,
        "checks are disabled in this client".into(),
    )
}

/// A check's outcome; a failure resolves by the mode.
fn resolve_check(mode: Mode, outcome: Result<CheckOutcome, ClientError>) -> CheckOutcome {
    outcome.unwrap_or_else(|error| {
        local(
            fail_by_mode(mode),
            mode,
            format!("the runtime did not decide: {error}"),
        )
    })
}

/// A check in a fork of the process that made the client: resolved by the mode, unasked
/// (checks that are disabled stay so).
fn resolve_forked(mode: Mode, forked: ClientError) -> CheckOutcome {
    if mode == Mode::Disabled {
        return checks_disabled();
    }
    resolve_check(mode, Err(forked))
}

/// What a failure resolves to: `enforce` fails closed.
fn fail_by_mode(mode: Mode) -> Decision {
    if mode == Mode::Enforce {
        Decision::Deny
    } else {
        Decision::Allow
    }
}

fn local(decision: Decision, mode: Mode, reason: String) -> CheckOutcome {
    CheckOutcome {
        verdict: Verdict {
            decision,
            rule: "client".into(),
            reason,
            policy: String::new(),
            mode,
        },
        approval_id: None,
        action: None,
        resolved_locally: true,
    }
}

fn unexpected(body: &Body) -> ClientError {
    let name = match body {
        Body::Register(_) => "register",
        Body::Registered(_) => "registered",
        Body::Heartbeat(_) => "heartbeat",
        Body::HeartbeatAck(_) => "heartbeat_ack",
        Body::Deregister(_) => "deregister",
        Body::Deregistered(_) => "deregistered",
        Body::Check(_) => "check",
        Body::Decision(_) => "decision",
        Body::Events(_) => "events",
        Body::EventsAck(_) => "events_ack",
        Body::AwaitApproval(_) => "await_approval",
        Body::Error(_) => "error",
    };
    ClientError::Protocol(format!("unexpected answer {name}"))
}

/// How soon a renewal that failed is tried again.
const RENEW_AGAIN: Duration = Duration::from_secs(1);

/// Renews the token at half its remaining life until the client is gone or the agent is
/// deregistered. A token the runtime no longer takes (the answer to the last renewal was lost,
/// and the token it replaced is gone; or the agent registered again elsewhere) is replaced by
/// registering again, with the same key and lineage, rather than leaving every later call
/// refused.
async fn renew(shared: std::sync::Weak<Shared>, agent: WeakAgent, spec: AgentSpec) {
    // After a renewal that failed, the next is soon: its answer may be what was lost, the
    // runtime holding a new token the agent never got, and every call refused until then.
    let mut failed = false;
    loop {
        let Some(expires_at_ms) = agent.upgrade().map(|a| a.expires_at_ms()) else {
            return;
        };
        let left = expires_at_ms.saturating_sub(now_ms());
        let wait = if failed {
            RENEW_AGAIN
        } else {
            Duration::from_millis(u64::try_from(left / 2).unwrap_or(0).max(1000))
        };
        tokio::time::sleep(wait).await;
        // Once the client, or every handle of the agent, is gone, so is the renewal: an agent
        // its program dropped is left to expire, not kept (and taken back from another client
        // that registers it meanwhile) for the client's whole life.
        let (Some(shared), Some(agent)) = (shared.upgrade(), agent.upgrade()) else {
            return;
        };
        let _renewal = agent.renewal.lock().await;
        if agent.ended() {
            return;
        }
        let Err(error) = shared.heartbeat(&agent).await else {
            failed = false;
            continue;
        };
        failed = true;
        if !error.is_unauthenticated() || agent.ended() {
            continue;
        }
        match shared.register(&spec).await {
            Ok(fresh) => {
                agent.renew(fresh.token(), fresh.expires_at_ms());
                failed = false;
            }
            // Refused for itself (another key holds the id): nothing more to try.
            Err(error) if error.is_unauthenticated() => return,
            // The runtime is away: tried again soon.
            Err(_) => {}
        }
    }
}

impl Shared {
    async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let connection = Arc::new(Connection::open(&self.socket, self.config.timeout).await?);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// A call as `agent`: `request`, made with its token. Refused for that token because a
    /// renewal replaced it meanwhile (the runtime takes only the newest), it is made again with
    /// the new one once the renewal is done: a refusal at the door has no effect that asking
    /// again could repeat.
    async fn call_as(
        &self,
        agent: &Agent,
        request: Body,
        idempotent: bool,
    ) -> Result<Body, ClientError> {
        // One timeout for the call, the wait for a renewal and the second try.
        let started = tokio::time::Instant::now();
        let left = || self.config.timeout.saturating_sub(started.elapsed());
        let sent_with = credential_of(&request);
        let (answer, mut request) = self.call_keeping(request, idempotent, left()).await;
        if !refused_for_its_token(&answer) {
            return answer;
        }
        // A renewal in flight holds this until its answer is in.
        let renewed = tokio::time::timeout(left(), agent.renewal.lock()).await;
        drop(renewed);
        let current = agent.token();
        if sent_with.is_none_or(|sent| sent == current) {
            return answer;
        }
        set_credential(&mut request, current);
        self.call_within(request, idempotent, left()).await
    }

    /// One call; after a broken connection, idempotent calls are tried once more on a new one.
    async fn call(&self, body: Body, idempotent: bool) -> Result<Body, ClientError> {
        self.call_within(body, idempotent, self.config.timeout)
            .await
    }

    async fn call_within(
        &self,
        body: Body,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<Body, ClientError> {
        self.call_keeping(body, idempotent, timeout).await.0
    }

    /// [`call_within`](Self::call_within), giving the request back for another try. The
    /// second try after a broken connection has what is left of `timeout`.
    async fn call_keeping(
        &self,
        body: Body,
        idempotent: bool,
        timeout: Duration,
    ) -> (Result<Body, ClientError>, Body) {
        let started = tokio::time::Instant::now();
        let connection = match self.connection().await {
            Ok(connection) => connection,
            Err(error) => return (Err(error), body),
        };
        let answer = match connection.call(body.clone(), timeout).await {
            Err(ClientError::Disconnected) if idempotent => match self.connection().await {
                Ok(connection) => {
                    let left = timeout.saturating_sub(started.elapsed());
                    connection.call(body.clone(), left).await
                }
                Err(error) => Err(error),
            },
            other => other,
        };
        (answer, body)
    }

    async fn register(&self, spec: &AgentSpec) -> Result<Agent, ClientError> {
        file_name_id("agent_id", &spec.agent_id)?;
        if let Some(parent) = &spec.parent_agent_id {
            file_name_id("parent_agent_id", parent)?;
        }
        let agents = self.config.state_dir.join("agents");
        let key_path = agents.join(format!("{}.key", spec.agent_id));
        // A child's first registration carries its parent's consent, signed with the parent's
        // key where this client keeps it; without it there the gateway takes only a child it
        // already knows.
        let parent_key_path = spec
            .parent_agent_id
            .as_ref()
            .map(|parent| agents.join(format!("{parent}.key")));
        let (key, parent_key) = tokio::task::spawn_blocking(move || {
            let key = aa_identity::keyfile::load_or_create(&key_path)?;
            let parent_key = match parent_key_path.filter(|path| path.exists()) {
                Some(path) => Some(aa_identity::keyfile::load(&path)?),
                None => None,
            };
            Ok::<_, aa_identity::IdentityError>((key, parent_key))
        })
        .await
        .map_err(|e| ClientError::Internal(e.to_string()))?
        .map_err(|e| ClientError::Identity(e.to_string()))?;
        let request = |answer: Option<Answer>| Body::Register(register_request(spec, &key, answer));
        let challenge = match self.call(request(None), false).await? {
            Body::Registered(r) if !r.challenge.is_empty() => r.challenge,
            other => return Err(unexpected(&other)),
        };
        let consent = match (&parent_key, &spec.parent_agent_id) {
            (Some(parent_key), Some(_)) => Consent::Key(parent_key),
            (None, Some(_)) => spec
                .spawn_grant
                .clone()
                .or_else(|| {
                    std::env::var(SPAWN_GRANT_ENV)
                        .ok()
                        .filter(|g| !g.is_empty())
                })
                .map_or(Consent::None, Consent::Grant),
            (_, None) => Consent::None,
        };
        let answer = Answer::new(spec, &key, consent, challenge);
        // The gateway keeps each request's challenge apart and takes the one named.
        match self.call(request(Some(answer)), false).await? {
            Body::Registered(r) if !r.credential_token.is_empty() => Ok(Agent {
                id: spec.agent_id.clone(),
                context: match r.agent {
                    Some(recorded) => AgentContext::try_from(recorded)
                        .map_err(|e| ClientError::Protocol(format!("registered agent: {e}")))?,
                    None => AgentContext::new(spec.agent_id.clone()),
                },
                credential: Arc::new(StdMutex::new(Credential {
                    token: r.credential_token,
                    expires_at_ms: r.expires_at.map_or(0, aa_proto::convert::millis),
                    ended: false,
                })),
                renewal: Arc::default(),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// One call from a plain thread over `slot`'s connection (opened when there is none);
    /// after a broken connection, tried once more on a new one, as checks are idempotent.
    fn call_blocking(
        &self,
        slot: &mut Option<BlockingConnection>,
        body: Body,
        slice: Duration,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Body, ClientError> {
        let mut retried = false;
        // One deadline for connecting, the call and its one retry.
        let timeout = self.config.timeout;
        let deadline = deadline_in(timeout);
        loop {
            let connection = match slot {
                Some(connection) => connection,
                None => slot.insert(BlockingConnection::open(
                    &self.socket,
                    deadline,
                    interrupted,
                )?),
            };
            match connection.call(body.clone(), deadline, timeout, slice, interrupted) {
                Err(error @ ClientError::Refused { .. }) => return Err(error),
                Err(error) => {
                    *slot = None;
                    if retried || !matches!(error, ClientError::Disconnected) {
                        return Err(error);
                    }
                    retried = true;
                }
                answer => return answer,
            }
        }
    }

    async fn await_approval(
        &self,
        agent: &Agent,
        outcome: &CheckOutcome,
        timeout: Duration,
    ) -> Result<CheckOutcome, ClientError> {
        let (Some(approval_id), Some(action)) = (&outcome.approval_id, &outcome.action) else {
            return Err(ClientError::InvalidArgument {
                field: "outcome",
                message: "a pending outcome without its approval id and action".into(),
            });
        };
        let request = pb::AwaitApprovalRequest {
            agent_id: agent.id.clone(),
            credential_token: agent.token(),
            approval_id: approval_id.clone(),
            action: Some(action.into()),
            timeout: aa_proto::convert::duration_to_wire(timeout),
        };
        // The runtime answers by the timeout itself; the client waits a little longer so that
        // answer, not a client timeout, is what the caller sees.
        let patience = timeout.saturating_add(self.config.timeout);
        match self
            .call_within(Body::AwaitApproval(request), false, patience)
            .await?
        {
            Body::Decision(pb::CheckResponse {
                decision: Some(decision),
            }) => Ok(CheckOutcome {
                verdict: Verdict::from(decision),
                approval_id: outcome.approval_id.clone(),
                action: None,
                resolved_locally: false,
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn heartbeat(&self, agent: &Agent) -> Result<(), ClientError> {
        let request = pb::HeartbeatRequest {
            agent_id: agent.id.clone(),
            credential_token: agent.token(),
        };
        match self.call(Body::Heartbeat(request), false).await? {
            Body::HeartbeatAck(ack) => {
                agent.renew(
                    ack.credential_token,
                    ack.expires_at.map_or(0, aa_proto::convert::millis),
                );
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// A grant for the child `child_id` of the agent `parent_id`, valid for `ttl`: the parent's
/// consent, signed now with its key from the state directory `state_dir` (where it
/// registered), for a child registered where that key is not (another host), which passes it
/// as its [`AgentSpec::spawn_grant`] or in `AASM_SPAWN_GRANT`. It is good for that child's id,
/// whoever presents it, until it expires: hand it over as a secret, and keep `ttl` short (at
/// most a day, [`aa_identity::MAX_GRANT_SECS`]). No call to the runtime is made.
pub fn grant_spawn(
    state_dir: &Path,
    parent_id: &str,
    child_id: &str,
    ttl: Duration,
) -> Result<String, ClientError> {
    file_name_id("parent_agent_id", parent_id)?;
    file_name_id("agent_id", child_id)?;
    let path = state_dir.join("agents").join(format!("{parent_id}.key"));
    if !path.exists() {
        return Err(ClientError::InvalidArgument {
            field: "parent_agent_id",
            message: format!(
                "no key for agent {parent_id:?} at {}: a grant is signed where the parent \
                 registered",
                path.display()
            ),
        });
    }
    let key =
        aa_identity::keyfile::load(&path).map_err(|e| ClientError::Identity(e.to_string()))?;
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    // Whole seconds, rounded up: half a second is not none.
    let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    aa_identity::grant(&key, parent_id, child_id, now, ttl_secs)
        .map(|(grant, _)| grant)
        .map_err(|e| ClientError::InvalidArgument {
            field: "ttl",
            message: e.to_string(),
        })
}

/// An agent id, which names a key file: non-empty, and no path separators.
fn file_name_id(field: &'static str, id: &str) -> Result<(), ClientError> {
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if valid {
        Ok(())
    } else {
        Err(ClientError::InvalidArgument {
            field,
            message: "must be non-empty and use only letters, digits and - _ . : @".into(),
        })
    }
}

/// How a child's first registration shows its parent's consent.
enum Consent<'a> {
    /// Signed now with the parent's key, kept in this client's state directory.
    Key(&'a Keypair),
    /// A grant the parent signed ahead of time.
    Grant(String),
    /// None: an agent without a parent, or a child the gateway must already know.
    None,
}

/// The second registration step's proof: the challenge, the agent key's signature over it,
/// and for a child its parent's consent (empty without it).
#[derive(Default)]
struct Answer {
    challenge: Vec<u8>,
    signature: Vec<u8>,
    parent_signature: Vec<u8>,
    spawn_grant: String,
}

impl Answer {
    fn new(spec: &AgentSpec, key: &Keypair, consent: Consent<'_>, challenge: Vec<u8>) -> Answer {
        let signature = key.sign_challenge(&spec.agent_id, &challenge).to_vec();
        let (mut parent_signature, mut spawn_grant) = (Vec::new(), String::new());
        match (consent, &spec.parent_agent_id) {
            (Consent::Key(parent_key), Some(parent_id)) => {
                parent_signature = parent_key
                    .sign_spawn(&aa_identity::Spawn {
                        parent_id,
                        child_id: &spec.agent_id,
                        child_did: &key.public().did(),
                        challenge: &challenge,
                    })
                    .to_vec();
            }
            (Consent::Grant(grant), Some(_)) => spawn_grant = grant,
            _ => {}
        }
        Answer {
            challenge,
            signature,
            parent_signature,
            spawn_grant,
        }
    }
}

/// A registration step: the first without `answer`, the second with it.
fn register_request(
    spec: &AgentSpec,
    key: &Keypair,
    answer: Option<Answer>,
) -> pb::RegisterRequest {
    let public = key.public();
    let answer = answer.unwrap_or_default();
    pb::RegisterRequest {
        agent_id: spec.agent_id.clone(),
        name: spec.name.clone().unwrap_or_else(|| spec.agent_id.clone()),
        framework: spec.framework.clone().unwrap_or_else(|| "custom".into()),
        public_key: public.to_bytes().to_vec(),
        did_key: public.did(),
        parent_agent_id: spec.parent_agent_id.clone().unwrap_or_default(),
        team_id: spec.team_id.clone().unwrap_or_default(),
        delegation_reason: spec.delegation_reason.clone().unwrap_or_default(),
        spawned_by_tool: spec.spawned_by_tool.clone().unwrap_or_default(),
        depth: 0,
        challenge_signature: answer.signature,
        answered_challenge: answer.challenge,
        parent_signature: answer.parent_signature,
        spawn_grant: answer.spawn_grant,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_agent_is_logged_without_its_token() {
        let token = "eyJ0eXAiOiJhYS1jcmVkIn0.c2VjcmV0LWNsYWltcw.c2lnbmF0dXJl";
        let agent = Agent {
            id: "bot".into(),
            context: AgentContext::new("bot"),
            credential: Arc::new(StdMutex::new(Credential {
                token: token.into(),
                expires_at_ms: 7,
                ended: false,
            })),
            renewal: Arc::new(tokio::sync::Mutex::new(())),
        };
        let logged = format!("{agent:?}");
        assert!(!logged.contains(token), "{logged}");
        assert!(
            logged.contains("<redacted>") && logged.contains("bot"),
            "{logged}"
        );
        assert_eq!(agent.credential_token(), token);
    }

    /// An enforcing client keeping its keys in `dir`, talking to `socket`.
    fn enforcing(dir: &Path, socket: PathBuf, timeout: Duration) -> Client {
        Client::new(ClientConfig {
            socket_path: Some(socket),
            state_dir: dir.to_path_buf(),
            mode: Mode::Enforce,
            timeout,
        })
        .unwrap()
    }

    /// A socket that takes calls and never answers: the point is the waiting around it.
    fn silent_socket(dir: &Path) -> PathBuf {
        let path = dir.join("silent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for connection in listener.incoming() {
                held.push(connection);
            }
        });
        path
    }

    /// Any timeout a binding passes is taken (a century's wait and more), and a call asked
    /// for its answer again after giving it says so: neither panics across the boundary.
    /// An agent this client never registered (its token is no runtime's), and an action.
    fn unregistered(id: &str) -> (Agent, Action) {
        let agent = Agent {
            id: id.into(),
            context: AgentContext::new(id),
            credential: Arc::new(StdMutex::new(Credential {
                token: "token".into(),
                expires_at_ms: 0,
                ended: false,
            })),
            renewal: Arc::default(),
        };
        let action = Action::ToolCall {
            tool: "ls".into(),
            args: serde_json::json!({}),
        };
        (agent, action)
    }

    #[test]
    fn huge_timeouts_and_an_answer_asked_for_twice_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let client = enforcing(dir.path(), dir.path().join("absent.sock"), Duration::MAX);
        let (agent, action) = unregistered("bot");
        // No runtime there: denied at once, whatever the timeout.
        let denied = client.check_blocking(&agent, action.clone(), None).unwrap();
        assert_eq!(denied.verdict.decision, Decision::Deny);
        let mut call = client.check(&agent, action, None);
        let first = call.wait_for(Duration::MAX).unwrap().unwrap();
        assert_eq!(first.verdict.decision, Decision::Deny);
        let again = call.wait_for(Duration::from_millis(1)).unwrap();
        assert!(
            matches!(
                again,
                Err(ClientError::InvalidArgument { field: "call", .. })
            ),
            "{again:?}"
        );
        assert!(matches!(
            call.wait(),
            Err(ClientError::InvalidArgument { .. })
        ));
    }

    /// Ids name key files in the state directory, a parent's too: one that could leave the
    /// `agents` folder is refused before any file is touched.
    #[test]
    fn an_id_that_is_no_file_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let client = enforcing(
            dir.path(),
            dir.path().join("absent.sock"),
            Duration::from_secs(1),
        );
        for (spec, field) in [
            (
                AgentSpec {
                    agent_id: "../bot".into(),
                    ..AgentSpec::default()
                },
                "agent_id",
            ),
            (
                AgentSpec {
                    agent_id: "bot".into(),
                    parent_agent_id: Some("../../keys/lead".into()),
                    ..AgentSpec::default()
                },
                "parent_agent_id",
            ),
        ] {
            let refused = client.register(spec).wait().unwrap_err();
            assert!(
                matches!(&refused, ClientError::InvalidArgument { field: f, .. } if *f == field),
                "{refused:?}"
            );
        }
        assert!(!dir.path().join("agents").exists());
    }

    #[test]
    fn a_blocking_check_gives_up_when_interrupted_and_times_out_by_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let client = enforcing(
            dir.path(),
            silent_socket(dir.path()),
            Duration::from_millis(300),
        );
        let (agent, action) = unregistered("silent");
        let mut asked = 0;
        let given_up = client.check_blocking_until(
            &agent,
            action.clone(),
            None,
            Duration::from_millis(10),
            &mut || {
                asked += 1;
                asked == 3
            },
        );
        assert!(
            matches!(given_up, Err(ClientError::Interrupted)),
            "{given_up:?}"
        );
        assert_eq!(asked, 3);
        // Never interrupted, the wait ends at the timeout, which enforce resolves as a deny.
        let timed_out = client.check_blocking(&agent, action.clone(), None).unwrap();
        assert!(timed_out.resolved_locally, "{timed_out:?}");
        assert_eq!(timed_out.verdict.decision, Decision::Deny);
        assert!(timed_out.verdict.reason.contains("did not answer within"));

        // Closed from the interrupt check, as a signal handler would, on the checking thread:
        // no deadlock; the check gives up and its connection goes; later checks are refused.
        let closer = client.clone();
        let closed_midway = client.check_blocking_until(
            &agent,
            action.clone(),
            None,
            Duration::from_millis(10),
            &mut || {
                closer.close();
                true
            },
        );
        assert!(
            matches!(closed_midway, Err(ClientError::Interrupted)),
            "{closed_midway:?}"
        );
        assert!(client.shared.blocking.lock().unwrap().is_none());
        assert!(matches!(
            client.check_blocking(&agent, action, None),
            Err(ClientError::Closed)
        ));
    }
}
