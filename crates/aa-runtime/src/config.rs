//! The runtime's settings, validated before any socket is bound or file opened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aa_background::BackgroundPriority;
use aa_security::Limits;

use crate::error::RuntimeError;

/// Where the socket lives under a state directory unless configured otherwise.
pub const SOCKET_FILE: &str = "runtime.sock";

/// The runtime's database (outbox, sessions, last bundle, quarantine), in the state directory.
pub const DATABASE_FILE: &str = "runtime.db";

/// The most a count setting may be (connections, calls in flight, a forwarded batch).
const MAX_COUNT: usize = 1 << 20;
/// The longest a frame may be given to arrive.
const MAX_FRAME_TIMEOUT: Duration = Duration::from_secs(3600);

/// The runtime's settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the local database (outbox, sessions, last bundle) lives.
    pub state_dir: PathBuf,
    /// The socket path; `None` means `<state_dir>/runtime.sock`.
    pub socket_path: Option<PathBuf>,
    /// The gateway's gRPC address, e.g. `http://127.0.0.1:7390`.
    pub gateway_url: String,
    /// The bearer token the gateway takes from runtimes (its `runtime.token`), sent on every
    /// call. Required: the gateway refuses a runtime's calls without it.
    pub gateway_token: String,
    /// Peer uids served; empty means only the runtime's own uid.
    pub allowed_uids: Vec<u32>,
    /// Size caps for scanning events.
    pub limits: Limits,
    /// Events sent to the gateway per request at most.
    pub forward_batch: usize,
    /// Calls on one connection in flight at once at most; more wait.
    pub max_in_flight: usize,
    /// How long a gateway call may take.
    pub gateway_timeout: Duration,
    /// How long a frame may take to arrive once it has begun, and an answer to be taken; a
    /// connection that leaves a frame unfinished or its answers unread past this (a slow-read
    /// attack, or a broken client) is closed.
    pub frame_timeout: Duration,
    /// Connections served at once at most; more are answered `UNAVAILABLE` and closed.
    pub max_connections: usize,
    /// Memory the requests in progress may hold across all connections at most: a frame from
    /// the moment it starts arriving until it is answered, charged 32 times its size (what
    /// its JSON may take once parsed) plus 4 KiB, and events reported at what they hold once
    /// parsed until they are written. A big frame (over 64 KiB) waits for its part before the
    /// rest of it is read, its `frame_timeout` running; a smaller one, answered off the
    /// connection's reader, waits as long and is then answered `UNAVAILABLE`. Checks answered
    /// in place (most) take no part.
    pub max_request_bytes: usize,
    /// How the background work (the outbox writer, the forwarder) gives way to the threads
    /// that answer checks.
    pub background_priority: BackgroundPriority,
}

impl RuntimeConfig {
    /// Defaults for a state directory and a gateway.
    pub fn new(state_dir: impl Into<PathBuf>, gateway_url: impl Into<String>) -> Self {
        RuntimeConfig {
            state_dir: state_dir.into(),
            socket_path: None,
            gateway_url: gateway_url.into(),
            gateway_token: String::new(),
            allowed_uids: Vec::new(),
            limits: Limits::default(),
            forward_batch: 1000,
            max_in_flight: 256,
            gateway_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_request_bytes: 256 << 20,
            background_priority: BackgroundPriority::default(),
        }
    }

    /// The socket path in effect.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_path
            .clone()
            .unwrap_or_else(|| self.state_dir.join(SOCKET_FILE))
    }

    /// The local database file.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join(DATABASE_FILE)
    }

    /// The uids served: the configured ones, or the runtime's own.
    pub fn served_uids(&self) -> Vec<u32> {
        if self.allowed_uids.is_empty() {
            vec![rustix::process::getuid().as_raw()]
        } else {
            self.allowed_uids.clone()
        }
    }

    /// Checks every setting; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |field, message: &str| {
            Err(RuntimeError::Config {
                field,
                message: message.to_owned(),
            })
        };
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir", "must not be empty");
        }
        if !(self.gateway_url.starts_with("http://") || self.gateway_url.starts_with("https://")) {
            return bad("gateway_url", "must start with http:// or https://");
        }
        if self.gateway_token.is_empty() {
            return bad(
                "gateway_token",
                "must be set: the gateway refuses a runtime's calls without its runtime token",
            );
        }
        // It travels as an HTTP/2 header value.
        if !self.gateway_token.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(
                "gateway_token",
                "must be printable ASCII without spaces (it is sent as a header)",
            );
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if socket_len(&self.socket_path()) > 107 {
            return bad(
                "socket_path",
                "is longer than the 107 bytes a Unix socket path may have",
            );
        }
        for (field, count) in [
            ("forward_batch", self.forward_batch),
            ("max_in_flight", self.max_in_flight),
            ("max_connections", self.max_connections),
        ] {
            if count == 0 {
                return bad(field, "must be at least 1");
            }
            // Counts become semaphores' permits and batch sizes: past this they are mistakes.
            if count > MAX_COUNT {
                return bad(field, "must be at most 1048576");
            }
        }
        if self.frame_timeout.is_zero() {
            return bad("frame_timeout", "must be more than zero");
        }
        // Added to the clock for every unfinished frame, where a huge one would overflow.
        if self.frame_timeout > MAX_FRAME_TIMEOUT {
            return bad("frame_timeout", "must be at most an hour");
        }
        if self.max_request_bytes < aa_proto::frame::MAX_FRAME_BYTES {
            return bad(
                "max_request_bytes",
                "must hold at least one frame of the largest size (4 MiB)",
            );
        }
        Ok(())
    }
}

fn socket_len(path: &Path) -> usize {
    path.as_os_str().len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let mut config = RuntimeConfig::new("/tmp/aasm", "http://127.0.0.1:7390");
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("gateway_token: must be set"),
            "{err}"
        );
        config.gateway_token = "a token".into();
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("gateway_token: must be printable"),
            "{err}"
        );
        config.gateway_token = "0123abcd".into();
        config.validate().unwrap();
        assert_eq!(
            config.socket_path(),
            PathBuf::from("/tmp/aasm/runtime.sock")
        );

        let mut bad_url = config.clone();
        bad_url.gateway_url = "127.0.0.1:7390".into();
        let err = bad_url.validate().unwrap_err();
        assert!(err.to_string().contains("gateway_url"), "{err}");

        let mut long = config.clone();
        long.socket_path = Some(PathBuf::from(format!("/tmp/{}", "x".repeat(120))));
        assert!(
            long.validate()
                .unwrap_err()
                .to_string()
                .contains("socket_path")
        );

        let mut tight = config.clone();
        tight.max_request_bytes = 1 << 20;
        let err = tight.validate().unwrap_err();
        assert!(err.to_string().contains("max_request_bytes"), "{err}");
    }
}
