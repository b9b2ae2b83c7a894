//! The socket: binding it owner-only, checking each peer's uid, and serving frames. One
//! connection carries concurrent calls; a bad frame closes only its own connection, and so
//! does a frame left unfinished past `frame_timeout`, or answers left unread that long. Idle
//! connections cost a task and a read buffer each; past `max_connections`, new ones are
//! answered `UNAVAILABLE` and closed.

use std::fs;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aa_background::Background;
use aa_proto::ProtoError;
use aa_proto::frame::{FrameDecoder, encode_into, error_frame};
use aa_proto::pb::frame::Body;
use aa_proto::pb::{self, ErrorCode};
use aa_security::Scanner;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::RuntimeConfig;
use crate::error::RuntimeError;
use crate::link::{self, GatewayLink};
use crate::outbox::Outbox;
use crate::pipeline::{self, CurrentScanner, Job, OutboxHealth};
use crate::runtime::{Checked, GatewayCheck, Peer, Refusal, Runtime};

/// How long a stopping runtime keeps trying to hand its outbox to the gateway.
pub const DRAIN: Duration = Duration::from_secs(5);

fn socket_err(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Socket {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Binds the socket: the state directory is created owner-only (0700), a stale socket file
/// left by a dead runtime is replaced, a live one is refused, and the socket is made 0600.
pub fn bind(config: &RuntimeConfig) -> Result<UnixListener, RuntimeError> {
    config.validate()?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .map_err(|e| socket_err(&config.state_dir, e))?;
    let path = config.socket_path();
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| socket_err(parent, e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(socket_err(&path, "another runtime is serving this socket"));
        }
        fs::remove_file(&path).map_err(|e| socket_err(&path, e))?;
    }
    let listener = UnixListener::bind(&path).map_err(|e| socket_err(&path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| socket_err(&path, e))?;
    Ok(listener)
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, writes what is queued,
/// and spends up to [`DRAIN`] handing the outbox to the gateway.
pub async fn run(
    listener: UnixListener,
    config: RuntimeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RuntimeError> {
    config.validate()?;
    let outbox = Arc::new(Outbox::open(&config.database_path())?);
    let scanner = Arc::new(CurrentScanner::new(Arc::new(
        Scanner::new().map_err(|e| RuntimeError::Setup(e.to_string()))?,
    )));
    let link = GatewayLink::new(
        &config.gateway_url,
        &config.gateway_token,
        config.gateway_timeout,
    )?;
    let written = Arc::new(Notify::new());
    let (jobs_tx, jobs_rx) = pipeline::queue(4096);
    let outbox_health = Arc::new(OutboxHealth::default());
    let background = Background::start("aa-runtime-background", config.background_priority)
        .map_err(|e| RuntimeError::Setup(format!("background thread: {e}")))?;
    let writer = background.spawn(pipeline::write_loop(
        jobs_rx,
        Arc::clone(&outbox),
        Arc::clone(&scanner),
        config.limits,
        Arc::clone(&written),
        Arc::clone(&outbox_health),
    ));
    let served = config.served_uids();
    let runtime = Arc::new(Runtime::new(
        config.clone(),
        Arc::clone(&outbox),
        jobs_tx.clone(),
        outbox_health,
        scanner,
        link.clone(),
    )?);
    link::restore(&runtime);

    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(link::watch(
        Arc::clone(&runtime),
        link.clone(),
        stop_rx.clone(),
    ));
    // A channel of its own, whose worker runs in the background too.
    let forward_link = background.within(|| {
        GatewayLink::new(
            &config.gateway_url,
            &config.gateway_token,
            config.gateway_timeout,
        )
    })?;
    let forwarder = background.spawn(link::forward(
        Arc::clone(&outbox),
        forward_link,
        config.forward_batch,
        written,
        stop_rx,
        DRAIN,
    ));

    let mut connections = JoinSet::new();
    let open = Arc::new(Semaphore::new(config.max_connections));
    let budget = Arc::new(Semaphore::new(
        config.max_unfinished_frame_bytes / BUDGET_UNIT,
    ));
    let detached = Detached::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let runtime = Arc::clone(&runtime);
                    let served = served.clone();
                    let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                        connections.spawn(turn_away(Arc::clone(&runtime), stream, config.max_connections));
                        continue;
                    };
                    let (budget, detached) = (Arc::clone(&budget), detached.clone());
                    connections.spawn(async move {
                        admit(runtime, stream, &served, budget, detached).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    // No call answers after the last flush: a decision it recorded then would not be written.
    detached.stop().await;
    // Jobs are written in order: once this one is done, everything queued before it is too.
    let (done, flushed) = oneshot::channel();
    if jobs_tx
        .send(Job {
            events: Vec::new(),
            aliases: Vec::new(),
            done: Some(done),
            _charge: None,
        })
        .await
        .is_ok()
    {
        let _ = flushed.await;
    }
    drop(jobs_tx);
    drop(runtime);
    let _ = stop_tx.send(true);
    let _ = forwarder.await;
    let _ = watcher.await;
    writer.abort();
    drop(background);
    let _ = fs::remove_file(config.socket_path());
    Ok(())
}

fn peer_of(stream: &UnixStream) -> Option<Peer> {
    stream.peer_cred().ok().map(|cred| Peer {
        uid: cred.uid(),
        pid: cred.pid().unwrap_or(0),
    })
}

/// Refuses at the socket: logs it, records it in the audit log, and appends the error frame
/// that tells the peer why before its connection is closed.
fn refuse_at_socket(
    runtime: &Runtime,
    peer: Peer,
    code: ErrorCode,
    message: String,
    out: &mut Vec<u8>,
) {
    tracing::warn!(uid = peer.uid, pid = peer.pid, code = code.as_str_name(), %message, "refused at the socket");
    runtime.record_refusal(peer, code, &message);
    push_frame(&error_frame(0, code, message), out);
}

/// Answers a connection past the limit and closes it.
async fn turn_away(runtime: Arc<Runtime>, mut stream: UnixStream, limit: usize) {
    let Some(peer) = peer_of(&stream) else { return };
    let mut bytes = Vec::new();
    let message = format!("the runtime serves {limit} connections at most; try again later");
    refuse_at_socket(&runtime, peer, ErrorCode::Unavailable, message, &mut bytes);
    let _ = stream.write_all(&bytes).await;
}

async fn admit(
    runtime: Arc<Runtime>,
    mut stream: UnixStream,
    served: &[u32],
    budget: Arc<Semaphore>,
    detached: Detached,
) {
    let Some(peer) = peer_of(&stream) else { return };
    if !served.contains(&peer.uid) {
        let mut bytes = Vec::new();
        let message = format!("uid {} is not served by this runtime", peer.uid);
        refuse_at_socket(
            &runtime,
            peer,
            ErrorCode::Unauthenticated,
            message,
            &mut bytes,
        );
        let _ = stream.write_all(&bytes).await;
        return;
    }
    serve(runtime, stream, peer, budget, detached).await;
}

/// The tasks connections hand their slower calls to (those that wait on the gateway or the
/// disk). At shutdown they are stopped before the outbox's queue is flushed for the last time,
/// so that none answers after it: an answer whose decision would never be written.
#[derive(Debug, Clone, Default)]
struct Detached(Arc<std::sync::Mutex<JoinSet<()>>>);

impl Detached {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Only ever spawned into and taken whole: a panic elsewhere leaves it usable.
        let mut tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Finished tasks are let go as new ones come, not kept to the end.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    async fn stop(&self) {
        let mut tasks = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// A served connection, registered with the async runtime for input alone. A Unix socket
/// signals room to write each time its peer reads what it was sent, so a connection also
/// registered for output woke a parked worker for nothing after every answer a client took.
/// Room to write is waited for only when a write finds none, on a duplicate registered for
/// that wait alone.
struct Connection {
    io: AsyncFd<std::os::unix::net::UnixStream>,
    /// Held for each write of whole frames, so that frames never interleave.
    writing: Mutex<()>,
    /// How long a write may wait for the peer to read ([`send`]).
    answer_timeout: Duration,
}

impl Connection {
    fn new(stream: UnixStream, answer_timeout: Duration) -> std::io::Result<Connection> {
        Ok(Connection {
            io: register(stream.into_std()?, Interest::READABLE)?,
            writing: Mutex::new(()),
            answer_timeout,
        })
    }

    async fn read(&self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.io.readable().await?;
            if let Ok(read) = ready.try_io(|io| std::io::Read::read(&mut io.get_ref(), buffer)) {
                return read;
            }
        }
    }

    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        let _writing = self.writing.lock().await;
        while !bytes.is_empty() {
            match std::io::Write::write(&mut self.io.get_ref(), bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let duplicate = self.io.get_ref().try_clone()?;
                    let output = register(duplicate, Interest::WRITABLE)?;
                    // Registering reports room that is there already, so none is missed.
                    let _room = output.writable().await?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Registers a socket for `interest`. Tokio deprecates this safe form because a type that can
/// close or replace its descriptor through a shared reference would break the registration;
/// a standard `UnixStream` owned by the `AsyncFd` cannot.
#[allow(deprecated)]
fn register(
    stream: std::os::unix::net::UnixStream,
    interest: Interest,
) -> std::io::Result<AsyncFd<std::os::unix::net::UnixStream>> {
    AsyncFd::with_interest(stream, interest)
}

/// A connection as its reader, which answers checks in place, and the tasks answering slower
/// calls share it.
type Shared = Arc<Connection>;

/// Writes whole frames; false once the connection is gone. A peer that leaves its answers
/// unread past the frame timeout has its connection shut down: a writer blocked on it would
/// otherwise hold the connection, and what the frames it answers were decoded into, for ever.
async fn send(connection: &Shared, bytes: &[u8]) -> bool {
    match tokio::time::timeout(connection.answer_timeout, connection.write_all(bytes)).await {
        Ok(written) => written.is_ok(),
        Err(_) => {
            tracing::warn!(
                timeout_s = connection.answer_timeout.as_secs_f64(),
                "a peer left its answers unread; connection closed"
            );
            let _ = connection.io.get_ref().shutdown(std::net::Shutdown::Both);
            false
        }
    }
}

/// Appends `frame`; one too large to send becomes an error frame saying so.
fn push_frame(frame: &pb::Frame, out: &mut Vec<u8>) {
    if let Err(error) = encode_into(frame, out) {
        let _ = encode_into(
            &error_frame(frame.request_id, ErrorCode::Internal, error.to_string()),
            out,
        );
    }
}

/// The budget of unfinished frames is counted in these; the first unit of every frame is
/// free (each connection's read buffer is that big anyway), so small frames never wait.
const BUDGET_UNIT: usize = 64 * 1024;

/// Units of the budget a frame with `pending` bytes received so far needs.
fn budget_units(pending: usize) -> usize {
    pending.saturating_sub(1) / BUDGET_UNIT
}

async fn serve(
    runtime: Arc<Runtime>,
    stream: UnixStream,
    peer: Peer,
    budget: Arc<Semaphore>,
    detached: Detached,
) {
    let frame_timeout = runtime.config().frame_timeout;
    let connection: Shared = match Connection::new(stream, frame_timeout) {
        Ok(connection) => Arc::new(connection),
        Err(error) => {
            tracing::warn!(uid = peer.uid, pid = peer.pid, %error, "connection dropped: it could not be registered");
            return;
        }
    };
    let in_flight = Arc::new(Semaphore::new(runtime.config().max_in_flight));
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // The answers to everything one read brought in go out in one write.
    let mut answers = Vec::new();
    // When the frame now arriving must be complete; none while between frames, where a
    // connection may idle as long as it likes.
    let mut deadline: Option<tokio::time::Instant> = None;
    // The budget the frame now arriving holds; it goes with that frame until it is answered.
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        let read = connection.read(&mut buffer);
        let n = match deadline {
            None => read.await,
            Some(at) => match tokio::time::timeout_at(at, read).await {
                Ok(read) => read,
                Err(_) => {
                    let message = format!(
                        "frame not completed within {} s; connection closed",
                        frame_timeout.as_secs_f64()
                    );
                    refuse_at_socket(
                        &runtime,
                        peer,
                        ErrorCode::MalformedFrame,
                        message,
                        &mut answers,
                    );
                    let _ = send(&connection, &answers).await;
                    break;
                }
            },
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decoder.extend(&buffer[..n]);
        let broken = loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    deadline = None;
                    // Only the first frame this read completes can be the one the budget was
                    // taken for: the others arrived whole within it, so are small.
                    let share = held.take();
                    let answer = dispatch(
                        &runtime,
                        frame,
                        share,
                        peer,
                        &connection,
                        &in_flight,
                        &detached,
                    );
                    if let Some(answer) = answer.await {
                        push_frame(&answer, &mut answers);
                    }
                }
                Ok(None) => break false,
                Err(error) => {
                    let code = match error {
                        ProtoError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
                        _ => ErrorCode::MalformedFrame,
                    };
                    refuse_at_socket(&runtime, peer, code, error.to_string(), &mut answers);
                    break true;
                }
            }
        };
        if !answers.is_empty() {
            if !send(&connection, &answers).await {
                break;
            }
            answers.clear();
        }
        if broken {
            break;
        }
        if decoder.pending_bytes() > 0 && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + frame_timeout);
        }
        // The unfinished frame holds its share of the budget before more of it is read: the
        // whole of what its header announced, taken at once. Taken a read at a time, frames
        // each holding part of the budget could all wait on each other until they timed out.
        let needed = budget_units(decoder.announced_bytes());
        let holding = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if needed < holding {
            if needed == 0 {
                held = None;
            } else if let Some(permit) = held.as_mut() {
                drop(permit.split(holding - needed));
            }
        } else if needed > holding {
            let more = u32::try_from(needed - holding).unwrap_or(u32::MAX);
            let wanted = Arc::clone(&budget).acquire_many_owned(more);
            let at = deadline.unwrap_or_else(|| tokio::time::Instant::now() + frame_timeout);
            match tokio::time::timeout_at(at, wanted).await {
                Ok(Ok(permit)) => match held.as_mut() {
                    Some(held) => held.merge(permit),
                    None => held = Some(permit),
                },
                _ => {
                    let message = format!(
                        "frame not completed within {} s: the runtime holds as many \
                         unfinished frames as it will; connection closed",
                        frame_timeout.as_secs_f64()
                    );
                    refuse_at_socket(
                        &runtime,
                        peer,
                        ErrorCode::Unavailable,
                        message,
                        &mut answers,
                    );
                    let _ = send(&connection, &answers).await;
                    break;
                }
            }
        }
    }
}

fn answer<T>(id: u64, result: Result<T, Refusal>, body: impl FnOnce(T) -> Body) -> pb::Frame {
    match result {
        Ok(value) => pb::Frame {
            request_id: id,
            body: Some(body(value)),
        },
        Err(refusal) => error_frame(id, refusal.code, refusal.message),
    }
}

/// What a spawned task answers: a call, or a check that needs the gateway.
// One value per call in flight, moved once into its task: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Work {
    Call(Body),
    Check(GatewayCheck),
    /// A check whose action is too big to decide on the connection's reader.
    Heavy(pb::CheckRequest),
}

/// Arguments longer than this are decided off the connection's reader: turning megabytes of
/// JSON into policy values takes long enough to stall every connection on the same thread.
const HEAVY_CHECK_BYTES: usize = 64 * 1024;

fn is_heavy(check: &pb::CheckRequest) -> bool {
    matches!(
        check.action.as_ref().and_then(|a| a.kind.as_ref()),
        Some(pb::action::Kind::ToolCall(call)) if call.args_json.len() > HEAVY_CHECK_BYTES
    )
}

/// Answers a check in place (no IO, microseconds) unless it needs the gateway. The other calls
/// wait on the gateway or the disk, so they run beside the connection's later frames and
/// write their own answer.
/// `share` is the frame's part of the budget for big frames: what it was decoded into is held
/// until it is answered, so it stays taken until then, and no longer (not while the answer
/// waits for the peer to read it).
async fn dispatch(
    runtime: &Arc<Runtime>,
    frame: pb::Frame,
    mut share: Option<OwnedSemaphorePermit>,
    peer: Peer,
    connection: &Shared,
    in_flight: &Arc<Semaphore>,
    detached: &Detached,
) -> Option<pb::Frame> {
    let id = frame.request_id;
    let Some(body) = frame.body else {
        return Some(error_frame(
            id,
            ErrorCode::InvalidRequest,
            "frame has no body",
        ));
    };
    let work = match body {
        Body::Check(check) if is_heavy(&check) => Work::Heavy(check),
        Body::Check(check) => match runtime.check(check, peer, runtime.decision_slot().await) {
            Checked::Done(decision) => {
                return Some(pb::Frame {
                    request_id: id,
                    body: Some(Body::Decision(decision)),
                });
            }
            Checked::Gateway(check) => Work::Check(*check),
        },
        other => Work::Call(other),
    };
    // Bounded per connection: past the bound, reading waits.
    let Ok(permit) = Arc::clone(in_flight).acquire_owned().await else {
        return Some(error_frame(id, ErrorCode::Internal, "connection closing"));
    };
    let runtime = Arc::clone(runtime);
    let connection = Arc::clone(connection);
    detached.spawn(async move {
        let decision = |decision| pb::Frame {
            request_id: id,
            body: Some(Body::Decision(decision)),
        };
        let frame = match work {
            Work::Check(check) => decision(runtime.finish(check).await),
            Work::Heavy(check) => {
                let deciding = Arc::clone(&runtime);
                let slot = runtime.decision_slot().await;
                match tokio::task::spawn_blocking(move || deciding.check(check, peer, slot)).await {
                    Ok(Checked::Done(d)) => decision(d),
                    Ok(Checked::Gateway(check)) => decision(runtime.finish(*check).await),
                    Err(_) => error_frame(id, ErrorCode::Internal, "the check failed"),
                }
            }
            Work::Call(Body::Register(r)) => {
                answer(id, runtime.register(r, peer).await, Body::Registered)
            }
            Work::Call(Body::Heartbeat(r)) => {
                answer(id, runtime.heartbeat(r, peer).await, Body::HeartbeatAck)
            }
            Work::Call(Body::Deregister(r)) => {
                answer(id, runtime.deregister(r, peer).await, Body::Deregistered)
            }
            Work::Call(Body::Events(batch)) => {
                answer(id, runtime.report(batch, peer).await, |accepted| {
                    Body::EventsAck(pb::EventAck { accepted })
                })
            }
            Work::Call(Body::AwaitApproval(r)) => {
                decision(runtime.await_approval(r, peer, share.take()).await)
            }
            Work::Call(_) => error_frame(
                id,
                ErrorCode::InvalidRequest,
                "this frame is an answer, not a request",
            ),
        };
        drop((permit, share));
        let mut bytes = Vec::new();
        push_frame(&frame, &mut bytes);
        let _ = send(&connection, &bytes).await;
    });
    None
}
