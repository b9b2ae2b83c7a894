//! The socket: binding it owner-only, checking each peer's uid, and serving frames. One
//! connection carries concurrent calls; a bad frame closes only its own connection, and so
//! does a frame left unfinished past `frame_timeout`, or answers left unread that long. Idle
//! connections cost a task and a read buffer each; past `max_connections`, new ones are
//! answered `UNAVAILABLE` and closed. A connection's slot is held until its last call is
//! answered (a wait on an approval aside), and what requests hold comes out of one budget,
//! `max_request_bytes`, whoever sends them: a client that hangs up with calls in flight and
//! connects again gains nothing.

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
use aa_security::{ReceiptKey, Scanner};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::RuntimeConfig;
use crate::error::RuntimeError;
use crate::link::{self, GatewayLink};
use crate::memory::{PARSED_GROWTH, RequestCharge, RequestMemory};
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
    // Receipts are keyed with what the gateway's are: a key derived from the runtime token.
    let scanner = Arc::new(CurrentScanner::new(Arc::new(
        Scanner::new()
            .map_err(|e| RuntimeError::Setup(e.to_string()))?
            .with_receipt_key(ReceiptKey::derive(config.gateway_token.as_bytes())),
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
    let requests = RequestMemory::new(config.max_request_bytes);
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
                    let (requests, detached) = (requests.clone(), detached.clone());
                    connections.spawn(async move {
                        admit(runtime, stream, &served, Arc::new(permit), requests, detached).await;
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
    slot: Slot,
    requests: RequestMemory,
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
    let served = Served {
        runtime,
        peer,
        slot,
        requests,
        detached,
    };
    serve(served, stream).await;
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

/// A connection's place among `max_connections`, held by its reader and by each of its calls
/// still being answered (but a wait on an approval).
type Slot = Arc<OwnedSemaphorePermit>;

/// What a served connection's reader and the calls it hands off share.
struct Served {
    runtime: Arc<Runtime>,
    peer: Peer,
    slot: Slot,
    requests: RequestMemory,
    detached: Detached,
}

/// A connection's read buffer. Frames no bigger arrive in one read, and are charged to the
/// request memory only if they are answered off the reader ([`dispatch`]); a bigger frame is
/// charged as soon as its header is in, before the rest of it is read.
const READ_BYTES: usize = 64 * 1024;

/// What a request holds from the moment it arrives until it is answered, at most: the frame,
/// what its JSON is parsed into, and a task's worth besides.
fn request_bytes(frame_bytes: usize) -> usize {
    frame_bytes
        .saturating_mul(PARSED_GROWTH)
        .saturating_add(CALL_BYTES)
}

/// What a call answered off the reader holds beyond its frame: its task and its answer.
const CALL_BYTES: usize = 4096;

/// Room kept for the answers to one read between reads; more is given back.
const RETAINED_ANSWER_BYTES: usize = 64 * 1024;

async fn serve(served: Served, stream: UnixStream) {
    let (runtime, peer) = (&served.runtime, served.peer);
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
    let mut buffer = vec![0u8; READ_BYTES];
    // The answers to everything one read brought in go out in one write.
    let mut answers = Vec::new();
    // When the frame now arriving must be complete; none while between frames, where a
    // connection may idle as long as it likes.
    let mut deadline: Option<tokio::time::Instant> = None;
    // The big frame now arriving's part of the request memory; it goes with that frame until
    // it is answered.
    let mut held = RequestCharge::default();
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
                        runtime,
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
            let before = decoder.pending_bytes();
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let frame_bytes = before - decoder.pending_bytes();
                    deadline = None;
                    // Only the first frame this read completes can be the one the charge was
                    // taken for: the others arrived whole within it, so are small.
                    let share = std::mem::take(&mut held);
                    let answer = dispatch(
                        &served,
                        (frame, frame_bytes),
                        share,
                        &connection,
                        &in_flight,
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
                    refuse_at_socket(runtime, peer, code, error.to_string(), &mut answers);
                    break true;
                }
            }
        };
        if !answers.is_empty() {
            if !send(&connection, &answers).await {
                break;
            }
            answers.clear();
            if answers.capacity() > RETAINED_ANSWER_BYTES {
                answers = Vec::new();
            }
        }
        if broken {
            break;
        }
        if decoder.pending_bytes() > 0 && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + frame_timeout);
        }
        // A big frame takes its whole part before more of it is read, at once: taken a read
        // at a time, frames each holding part of the budget could all wait on each other
        // until they timed out.
        let announced = decoder.announced_bytes();
        if announced > READ_BYTES && held.is_empty() {
            let at = deadline.unwrap_or_else(|| tokio::time::Instant::now() + frame_timeout);
            let wanted = served.requests.take(request_bytes(announced));
            match tokio::time::timeout_at(at, wanted).await {
                Ok(Some(charge)) => held = charge,
                _ => {
                    let message = format!(
                        "frame not completed within {} s: the runtime holds as much for \
                         requests in progress as it will ({} MiB); connection closed",
                        frame_timeout.as_secs_f64(),
                        served.requests.max_mib(),
                    );
                    refuse_at_socket(runtime, peer, ErrorCode::Unavailable, message, &mut answers);
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
/// write their own answer; each holds its connection's slot and its part of the request
/// memory until it is answered (not while the answer waits for the peer to read it), but a
/// wait on an approval, which lets both go once it has its pending decision.
/// `share` is that part for a big frame, taken while it arrived; a smaller one waits for
/// its part here, and is answered `UNAVAILABLE` if none comes within the frame timeout.
async fn dispatch(
    served: &Served,
    (frame, frame_bytes): (pb::Frame, usize),
    mut share: RequestCharge,
    connection: &Shared,
    in_flight: &Arc<Semaphore>,
) -> Option<pb::Frame> {
    let (runtime, peer) = (&served.runtime, served.peer);
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
    if share.is_empty() {
        let wait = runtime.config().frame_timeout;
        match tokio::time::timeout(wait, served.requests.take(request_bytes(frame_bytes))).await {
            Ok(Some(charge)) => share = charge,
            _ => {
                let message = format!(
                    "the runtime holds as much for requests in progress as it will ({} MiB); \
                     try again later",
                    served.requests.max_mib()
                );
                return Some(error_frame(id, ErrorCode::Unavailable, message));
            }
        }
    }
    // Bounded per connection: past the bound, reading waits.
    let Ok(permit) = Arc::clone(in_flight).acquire_owned().await else {
        return Some(error_frame(id, ErrorCode::Internal, "connection closing"));
    };
    let runtime = Arc::clone(runtime);
    let connection = Arc::clone(connection);
    // A wait on an approval holds neither: its task is small, the pending table bounds how
    // many there are, and it may last as long as the approval.
    let slot =
        (!matches!(work, Work::Call(Body::AwaitApproval(_)))).then(|| Arc::clone(&served.slot));
    served.detached.spawn(async move {
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
            Work::Call(Body::Events(batch)) => answer(
                id,
                runtime
                    .report(batch, peer, std::mem::take(&mut share))
                    .await,
                |accepted| Body::EventsAck(pb::EventAck { accepted }),
            ),
            Work::Call(Body::AwaitApproval(r)) => decision(
                runtime
                    .await_approval(r, peer, std::mem::take(&mut share))
                    .await,
            ),
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
        drop(slot);
    });
    None
}
