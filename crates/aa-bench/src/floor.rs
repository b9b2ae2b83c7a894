//! The machine's floor for the check load: the same clients on the same schedule, each
//! sending a frame over a Unix socket of its own and waiting for the answer, against an echo
//! server that does nothing else (a blocking thread per connection). Whatever latency this
//! shows comes from the machine — its scheduler, its hypervisor, waking threads — and none
//! from the runtime, so it is the baseline a check's latency is read against.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::BenchError;
use crate::checks::{CheckReport, Sample, paced};

/// A request frame of the order of an encoded check (a credential token and a small action);
/// at these sizes the socket's cost hardly depends on them.
pub const REQUEST_BYTES: usize = 320;
/// An answer frame of the order of an encoded allow.
pub const ANSWER_BYTES: usize = 96;

/// An echo load.
#[derive(Debug, Clone)]
pub struct FloorLoad {
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Requests per second, all clients together.
    pub rate: f64,
    /// How long the measured part lasts.
    pub duration: Duration,
    /// How long the load runs first, unmeasured.
    pub warmup: Duration,
}

/// Answers every length-prefixed frame on `stream` with an [`ANSWER_BYTES`] frame, until the
/// client goes away.
fn echo(mut stream: UnixStream) {
    let mut request = vec![0u8; REQUEST_BYTES];
    let mut answer = vec![0u8; ANSWER_BYTES + 4];
    answer[..4].copy_from_slice(&(ANSWER_BYTES as u32).to_le_bytes());
    let mut prefix = [0u8; 4];
    while stream.read_exact(&mut prefix).is_ok() {
        let len = u32::from_le_bytes(prefix) as usize;
        request.resize(len, 0);
        if stream.read_exact(&mut request).is_err() || stream.write_all(&answer).is_err() {
            return;
        }
    }
}

/// Sends one request frame and reads its answer frame, on the stack: the floor should hold
/// nothing but the socket's cost.
fn ask(mut stream: &UnixStream) -> bool {
    let mut request = [0u8; REQUEST_BYTES + 4];
    request[..4].copy_from_slice(&(REQUEST_BYTES as u32).to_le_bytes());
    let mut answer = [0u8; ANSWER_BYTES + 4];
    stream.write_all(&request).is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer[..4] == (ANSWER_BYTES as u32).to_le_bytes()
}

/// Runs the load against an echo server of its own and reports, as a check load does (an
/// answered request counts as allowed).
pub fn run(load: &FloorLoad) -> Result<CheckReport, BenchError> {
    let dir = tempfile::tempdir().map_err(BenchError::io("creating a temp directory"))?;
    let path = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&path).map_err(BenchError::io("binding the echo socket"))?;
    let clients = (0..load.clients)
        .map(|_| {
            let client =
                UnixStream::connect(&path).map_err(BenchError::io("connecting to the echo"))?;
            let (served, _) = listener
                .accept()
                .map_err(BenchError::io("accepting an echo client"))?;
            std::thread::spawn(move || echo(served));
            Ok(client)
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    // Each echo thread ends when its client's connection closes, after the report.
    paced(
        &clients,
        load.rate,
        load.warmup,
        load.duration,
        &[],
        |client, due, lateness| {
            Sample::timed(due, lateness, || {
                let answered = ask(client);
                (answered, answered)
            })
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_request_is_answered_and_timed() {
        let report = run(&FloorLoad {
            clients: 2,
            rate: 400.0,
            duration: Duration::from_millis(250),
            warmup: Duration::from_millis(50),
        })
        .unwrap();
        // 400/s for 0.25 s measured.
        assert_eq!(report.sent, 100);
        assert_eq!((report.answered, report.failed), (100, 0));
        let latency = report.latency.unwrap();
        assert_eq!(latency.count, 100);
        assert!(latency.p50 > Duration::ZERO && latency.p50 <= latency.max);
    }
}
