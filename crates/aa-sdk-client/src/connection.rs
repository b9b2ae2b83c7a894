//! Socket connections to the runtime. [`Connection`]: a writer task, a reader task, and the
//! table of calls waiting for their answer by request id, so calls run concurrently over it.
//! [`BlockingConnection`]: one call at a time, written and read by the calling thread itself.

use std::collections::HashMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aa_proto::frame::{FrameDecoder, MAX_FRAME_BYTES, encode};
use aa_proto::pb;
use aa_proto::pb::frame::Body;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<pb::Frame>>>>;

#[derive(Debug)]
pub(crate) struct Connection {
    frames: mpsc::Sender<pb::Frame>,
    waiting: Waiting,
    closed: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl Connection {
    /// Connects by `timeout`: a runtime whose backlog is full (Linux answers EAGAIN at once)
    /// is tried again until then, as the blocking connection does ([`connect_by`]).
    pub(crate) async fn open(path: &Path, timeout: Duration) -> Result<Connection, ClientError> {
        let started = tokio::time::Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock && started.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(unreachable_at(path, &e)),
            }
        };
        let (mut reader, writer) = stream.into_split();
        let (frames, mut outgoing) = mpsc::channel::<pb::Frame>(1024);
        let waiting: Waiting = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        let writer_closed = Arc::clone(&closed);
        let writer_waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            let mut writer = BufWriter::new(writer);
            while let Some(frame) = outgoing.recv().await {
                let mut next = Some(frame);
                while let Some(frame) = next.take() {
                    // A call that timed out while its frame waited here (a runtime that stopped
                    // reading) was answered as such: it is not sent after all.
                    let abandoned = writer_waiting
                        .lock()
                        .map_or(true, |w| !w.contains_key(&frame.request_id));
                    // A frame too large to encode cannot be sent; its caller times out.
                    if !abandoned
                        && let Ok(bytes) = encode(&frame)
                        && writer.write_all(&bytes).await.is_err()
                    {
                        writer_closed.store(true, Ordering::Release);
                        return;
                    }
                    next = outgoing.try_recv().ok();
                }
                if writer.flush().await.is_err() {
                    writer_closed.store(true, Ordering::Release);
                    return;
                }
            }
        });

        let reader_waiting = Arc::clone(&waiting);
        let reader_closed = Arc::clone(&closed);
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new();
            let mut buffer = vec![0u8; 64 * 1024];
            'read: loop {
                let n = match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                decoder.extend(&buffer[..n]);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) if frame.request_id == 0 => {
                            // About the connection, not one call: every waiting call gets it.
                            let waiters: Vec<_> = reader_waiting
                                .lock()
                                .map(|mut w| w.drain().map(|(_, tx)| tx).collect())
                                .unwrap_or_default();
                            for waiter in waiters {
                                let _ = waiter.send(frame.clone());
                            }
                        }
                        Ok(Some(frame)) => {
                            let waiter = reader_waiting
                                .lock()
                                .ok()
                                .and_then(|mut w| w.remove(&frame.request_id));
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(frame);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
            }
            reader_closed.store(true, Ordering::Release);
            // Dropping the senders wakes every waiting call with `Disconnected`.
            if let Ok(mut waiting) = reader_waiting.lock() {
                waiting.clear();
            }
        });

        Ok(Connection {
            frames,
            waiting,
            closed,
            next_id: AtomicU64::new(1),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.frames.is_closed()
    }

    /// Sends `body` and waits for its answer; an error frame becomes [`ClientError::Refused`].
    pub(crate) async fn call(&self, body: Body, timeout: Duration) -> Result<Body, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = call_frame(id, body)?;
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .map_err(|_| ClientError::Internal("call table poisoned".into()))?
            .insert(id, tx);
        let forget = || {
            if let Ok(mut waiting) = self.waiting.lock() {
                waiting.remove(&id);
            }
        };
        // Queued and answered within the one timeout: a runtime that stops reading fills the
        // queue, and a call waiting for room there is still bounded.
        let exchange = async {
            self.frames
                .send(frame)
                .await
                .map_err(|_| ClientError::Disconnected)?;
            rx.await.map_err(|_| ClientError::Disconnected)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(frame)) => answer(frame),
            Ok(Err(error)) => {
                forget();
                Err(error)
            }
            Err(_) => {
                forget();
                Err(ClientError::Timeout(timeout))
            }
        }
    }
}

/// A connection for calls made from a plain thread: the caller writes its request and reads
/// the answer itself, so no other thread wakes on the way (through a [`Connection`], a call
/// waited for from a plain thread wakes the client's runtime to write, again to read, and then
/// the caller). One call at a time; after any error but a refusal, it is not used again.
#[derive(Debug)]
pub(crate) struct BlockingConnection {
    stream: std::os::unix::net::UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
}

impl BlockingConnection {
    /// Connects by `deadline` (when `interrupted` says so, gives up sooner).
    pub(crate) fn open(
        path: &Path,
        deadline: Instant,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<BlockingConnection, ClientError> {
        let stream = match connect_by(path, deadline, interrupted) {
            Ok(stream) => stream,
            Err(e) if e.kind() == ErrorKind::Interrupted => return Err(ClientError::Interrupted),
            Err(e) => return Err(unreachable_at(path, &e)),
        };
        Ok(BlockingConnection {
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
        })
    }

    /// Sends `body` and reads until its answer, by `deadline` (past it,
    /// [`ClientError::Timeout`] of `timeout`, the whole call's); an error frame becomes
    /// [`ClientError::Refused`]. After each `slice` of waiting, `interrupted` is asked whether
    /// to give up ([`ClientError::Interrupted`]).
    pub(crate) fn call(
        &mut self,
        body: Body,
        deadline: Instant,
        timeout: Duration,
        slice: Duration,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Body, ClientError> {
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(ClientError::Timeout(timeout))
        };
        let id = self.next_id;
        self.next_id += 1;
        let bytes = encode(&call_frame(id, body)?)
            .map_err(|e| ClientError::Protocol(format!("encoding the request: {e}")))?;
        let lost = |e: std::io::Error| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout(timeout),
            _ => ClientError::Disconnected,
        };
        self.stream.set_write_timeout(Some(left()?)).map_err(lost)?;
        self.stream.write_all(&bytes).map_err(lost)?;
        let mut buffer = [0u8; 16 * 1024];
        loop {
            // Request id 0 is about the connection (a frame the runtime could not read).
            match self.decoder.next_frame() {
                Ok(Some(frame)) if frame.request_id == id || frame.request_id == 0 => {
                    return answer(frame);
                }
                Ok(Some(frame)) => {
                    return Err(ClientError::Protocol(format!(
                        "an answer to request {} while waiting for {id}",
                        frame.request_id
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            // Waiting in `poll` for input alone, not in a blocking read: a Unix socket wakes a
            // reader blocked on it whenever its peer takes what it sent (room to write again),
            // so a blocking read woke up for nothing as the runtime read each request.
            if !wait_readable(&self.stream, left()?.min(slice)).map_err(lost)? {
                left()?;
                if interrupted() {
                    return Err(ClientError::Interrupted);
                }
                continue;
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => return Err(ClientError::Disconnected),
                Ok(n) => self.decoder.extend(buffer.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(e)),
            }
        }
    }
}

/// Waits up to `wait` for `stream` to have something to read (or to be closed); false when the
/// time ran out or a signal interrupted the wait.
fn wait_readable(stream: &std::os::unix::net::UnixStream, wait: Duration) -> std::io::Result<bool> {
    let mut fds = [PollFd::new(stream, PollFlags::IN)];
    let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    match poll(&mut fds, Some(&timeout)) {
        Ok(ready) => Ok(ready > 0),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Connects without waiting on a runtime that does not accept: `connect` on a Unix socket
/// whose backlog is full waits as long as that lasts (for a stopped runtime, for ever), where
/// a check must be decided by its timeout. A full backlog is tried again until `deadline`,
/// asking `interrupted` between tries (an error of kind `Interrupted` when it says so).
fn connect_by(
    path: &Path,
    deadline: Instant,
    interrupted: &mut dyn FnMut() -> bool,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let address = SocketAddrUnix::new(path)?;
    let mut pause = Duration::from_millis(1);
    loop {
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rustix::net::connect(&socket, &address) {
            Ok(()) => {
                let stream = std::os::unix::net::UnixStream::from(socket);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(Errno::AGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        "the runtime did not accept the connection in time",
                    ));
                }
                if interrupted() {
                    return Err(ErrorKind::Interrupted.into());
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn unreachable_at(path: &Path, error: &std::io::Error) -> ClientError {
    ClientError::Connect {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// The frame of call `id`, refused before sending when it is over the frame limit.
fn call_frame(id: u64, body: Body) -> Result<pb::Frame, ClientError> {
    let frame = pb::Frame {
        request_id: id,
        body: Some(body),
    };
    let size = prost::Message::encoded_len(&frame);
    if size > MAX_FRAME_BYTES {
        return Err(ClientError::InvalidArgument {
            field: "frame",
            message: format!("{size} bytes exceed the {MAX_FRAME_BYTES}-byte frame limit"),
        });
    }
    Ok(frame)
}

/// A call's answer: its body, or the runtime's refusal.
fn answer(frame: pb::Frame) -> Result<Body, ClientError> {
    match frame.body {
        Some(Body::Error(e)) => Err(ClientError::refused(e.code, e.message)),
        Some(body) => Ok(body),
        None => Err(ClientError::Protocol("answer without a body".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};

    use super::*;

    /// A runtime that accepted the connection and then stopped reading: its socket fills, then
    /// the queue of frames; every call still ends at its timeout, and the frames of calls that
    /// gave up while queued are not sent once the runtime reads again.
    #[tokio::test]
    async fn a_call_to_a_runtime_that_stopped_reading_gives_up_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let connection = Arc::new(
            Connection::open(&path, Duration::from_secs(5))
                .await
                .unwrap(),
        );
        let mut runtime = accepted.await.unwrap();
        let calls = 1_100;
        let large = pb::CheckRequest {
            agent_id: "x".repeat(20_000),
            ..Default::default()
        };
        let timeout = Duration::from_millis(300);
        let handles: Vec<_> = (0..calls)
            .map(|_| {
                let connection = Arc::clone(&connection);
                let body = Body::Check(large.clone());
                tokio::spawn(async move { connection.call(body, timeout).await })
            })
            .collect();
        // Bounded only so that a regression fails rather than hangs.
        let answers = tokio::time::timeout(Duration::from_secs(30), async {
            let mut answers = Vec::new();
            for handle in handles {
                answers.push(handle.await.unwrap());
            }
            answers
        })
        .await
        .expect("a call waited past its timeout");
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Err(ClientError::Timeout(_)))),
            "{:?}",
            answers
                .iter()
                .find(|a| !matches!(a, Err(ClientError::Timeout(_))))
        );
        // The runtime reads again: only what was written before the calls gave up arrives.
        let mut decoder = FrameDecoder::new();
        let mut frames = 0;
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), runtime.read(&mut buffer)).await
        {
            if n == 0 {
                break;
            }
            decoder.extend(&buffer[..n]);
            while let Ok(Some(_)) = decoder.next_frame() {
                frames += 1;
            }
        }
        assert!(
            frames < 100,
            "{frames} of {calls} abandoned calls were sent"
        );
    }

    // Linux answers a full backlog with EAGAIN; other systems refuse the connection.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_connection_to_a_runtime_that_does_not_accept_gives_up_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.sock");
        // A listener that never accepts, its backlog as short as it goes.
        let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 0).unwrap();
        let mut accepted_later = Vec::new();
        let full = loop {
            match connect_by(&path, Instant::now(), &mut || false) {
                Ok(stream) => accepted_later.push(stream),
                Err(error) => break error,
            }
            assert!(accepted_later.len() < 1_000, "the backlog never filled");
        };
        assert_eq!(full.kind(), ErrorKind::TimedOut, "{full}");
        // Tried again until the deadline, then given up rather than waited on; or sooner,
        // when the caller is interrupted.
        let deadline = Instant::now() + Duration::from_millis(100);
        let error = connect_by(&path, deadline, &mut || false).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
        assert!(error.to_string().contains("did not accept"), "{error}");
        let far = Instant::now() + Duration::from_secs(3600);
        let error = connect_by(&path, far, &mut || true).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Interrupted, "{error}");
        // The async connection tries again until its timeout too, rather than failing at once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let timeout = Duration::from_millis(200);
        let refused = runtime.block_on(Connection::open(&path, timeout));
        assert!(matches!(refused, Err(ClientError::Connect { .. })));
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    }
}
