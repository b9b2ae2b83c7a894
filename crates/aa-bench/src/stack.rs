//! Real `aasm gateway` and `aasm runtime` processes, on a state directory of their own, for a
//! load to run against. They are separate processes, as in production, so the runtime's
//! memory is its own.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

use crate::BenchError;
use crate::partition::Partition;

/// How long a service has to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The gateway counter of audit events stored.
const STORED_METRIC: &str = "aasm_gateway_audit_events_appended_total";

/// Where the `aasm` binary is by default: beside this one (both built into one target
/// directory), else on `PATH`.
pub fn default_aasm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("aasm")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("aasm"))
}

/// An `aasm` service as a child process, killed if dropped while running.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    /// Starts `aasm <args>` and waits for it to print a line starting with each of `wanted`;
    /// returns what follows each prefix, trimmed.
    pub fn start(
        name: &'static str,
        aasm: &Path,
        args: &[String],
        wanted: &[&str],
    ) -> Result<(Service, Vec<String>), BenchError> {
        let start_error = |detail: String| BenchError::Start { what: name, detail };
        let mut child = Command::new(aasm)
            .args(args)
            .env("AASM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| start_error(format!("{}: {e}", aasm.display())))?;
        let stdout = child.stdout.take();
        let service = Service { name, child };
        let Some(stdout) = stdout else {
            return Err(start_error("no stdout".into()));
        };
        // The reader keeps draining stdout after start-up so the child never blocks on it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep reading to EOF.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| {
                start_error(format!(
                    "it did not print {wanted:?} within {} s (see its output above)",
                    START_TIMEOUT.as_secs()
                ))
            })?;
            for (prefix, slot) in wanted.iter().zip(found.iter_mut()) {
                if let Some(rest) = line.strip_prefix(prefix) {
                    *slot = Some(rest.trim().to_owned());
                }
            }
        }
        Ok((service, found.into_iter().flatten().collect()))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or the OOM killer would: nothing is drained or flushed.
    pub fn crash(&mut self) -> Result<(), BenchError> {
        self.child
            .kill()
            .and_then(|()| self.child.wait().map(drop))
            .map_err(BenchError::io(format!("killing {}", self.name)))
    }

    /// SIGTERM, then waits: the runtime drains its outbox on the way out.
    fn stop(mut self) -> Result<(), BenchError> {
        self.stop_by(Signal::TERM)
    }

    /// Sends `signal` (SIGTERM or SIGINT: a stop that drains), waits for the exit, and fails
    /// unless it was a clean one. A service that has already exited is not signalled again.
    pub fn stop_by(&mut self, signal: Signal) -> Result<(), BenchError> {
        let waiting = format!("waiting for {}", self.name);
        let exited = self.child.try_wait();
        if exited.map_err(BenchError::io(waiting.as_str()))?.is_none() {
            let pid = rustix::process::Pid::from_child(&self.child);
            rustix::process::kill_process(pid, signal).map_err(|e| BenchError::Start {
                what: self.name,
                detail: format!("signalling it to stop: {e}"),
            })?;
        }
        let status = self.child.wait().map_err(BenchError::io(waiting))?;
        if !status.success() {
            return Err(BenchError::Start {
                what: self.name,
                detail: format!("it exited with {status}"),
            });
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's resident memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`), bytes.
    pub rss: u64,
    /// The most ever resident (`VmHWM`), bytes.
    pub peak: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory, BenchError> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).map_err(BenchError::io(path))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        match (field("VmRSS:"), field("VmHWM:")) {
            (Some(rss), Some(peak)) => Ok(Memory { rss, peak }),
            _ => Err(BenchError::Invalid(format!(
                "no VmRSS/VmHWM in /proc/{pid}/status"
            ))),
        }
    }
}

/// How many file descriptors a process holds, from `/proc/<pid>/fd`.
pub fn open_fds(pid: u32) -> Result<usize, BenchError> {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .map(Iterator::count)
        .map_err(BenchError::io(path))
}

/// A gateway and a runtime linked to it.
#[derive(Debug)]
pub struct Stack {
    // Declared before `dir` so the processes stop before their files go.
    runtime: Service,
    gateway: Service,
    aasm: PathBuf,
    /// The arguments that start each again on the same state, addresses and socket.
    gateway_args: Vec<String>,
    runtime_args: Vec<String>,
    /// The runtime's socket.
    pub socket: PathBuf,
    /// The gateway's operator HTTP address.
    pub http: SocketAddr,
    partition: Option<Partition>,
    gateway_state: PathBuf,
    runtime_state: PathBuf,
    dir: tempfile::TempDir,
}

/// How a [`Stack`] is set up beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// The runtime reaches the gateway through a relay that can cut the link
    /// ([`Stack::partition`]).
    pub partitionable: bool,
    /// Where the runtime keeps its state (database, socket) instead of a temp directory: on
    /// a small filesystem, say.
    pub runtime_state: Option<PathBuf>,
    /// Where the gateway keeps its state (database, key, admin token), likewise.
    pub gateway_state: Option<PathBuf>,
}

impl Stack {
    /// Starts `aasm gateway` on free ports with the default policy, then `aasm runtime`
    /// linked to it, each with its own state under a fresh temp directory.
    pub fn start(aasm: &Path) -> Result<Stack, BenchError> {
        Stack::start_with(aasm, StackOptions::default())
    }

    /// Like [`Stack::start`], set up as `options` says.
    pub fn start_with(aasm: &Path, options: StackOptions) -> Result<Stack, BenchError> {
        if aasm.components().count() > 1 && !aasm.is_file() {
            return Err(BenchError::NoBinary(aasm.to_path_buf()));
        }
        let dir = tempfile::Builder::new()
            .prefix("aa-bench-")
            .tempdir()
            .map_err(BenchError::io("creating a state directory"))?;
        let gateway_state = options
            .gateway_state
            .unwrap_or_else(|| dir.path().join("gateway"));
        let runtime_state = options
            .runtime_state
            .unwrap_or_else(|| dir.path().join("runtime"));
        let gateway_args = |grpc: &str, http: &str| -> Vec<String> {
            vec![
                "gateway".into(),
                "--state-dir".into(),
                gateway_state.display().to_string(),
                "--grpc".into(),
                grpc.into(),
                "--http".into(),
                http.into(),
            ]
        };
        let (gateway, found) = Service::start(
            "aasm gateway",
            aasm,
            &gateway_args("127.0.0.1:0", "127.0.0.1:0"),
            &["gateway gRPC:", "operator HTTP:"],
        )?;
        let (grpc, http) = (&found[0], &found[1]);
        let http: SocketAddr =
            http.trim_start_matches("http://")
                .parse()
                .map_err(|e| BenchError::Start {
                    what: "aasm gateway",
                    detail: format!("unreadable HTTP address {http:?}: {e}"),
                })?;
        let partition = if options.partitionable {
            let upstream =
                grpc.trim_start_matches("http://")
                    .parse()
                    .map_err(|e| BenchError::Start {
                        what: "aasm gateway",
                        detail: format!("unreadable gRPC address {grpc:?}: {e}"),
                    })?;
            Some(Partition::start(upstream)?)
        } else {
            None
        };
        let runtime_args = vec![
            "runtime".into(),
            "--gateway".into(),
            partition
                .as_ref()
                .map_or_else(|| grpc.clone(), |p| format!("http://{}", p.addr())),
            "--state-dir".into(),
            runtime_state.display().to_string(),
            // Made by the gateway on its first start, which printed its addresses after.
            "--gateway-token-file".into(),
            gateway_state.join("runtime.token").display().to_string(),
        ];
        let (runtime, found) =
            Service::start("aasm runtime", aasm, &runtime_args, &["runtime socket:"])?;
        Ok(Stack {
            runtime,
            gateway,
            aasm: aasm.to_path_buf(),
            gateway_args: gateway_args(grpc.trim_start_matches("http://"), &http.to_string()),
            runtime_args,
            socket: PathBuf::from(&found[0]),
            http,
            partition,
            gateway_state,
            runtime_state,
            dir,
        })
    }

    /// The relay between the runtime and the gateway, when started partitionable.
    pub fn partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// Kills the gateway with SIGKILL.
    pub fn crash_gateway(&mut self) -> Result<(), BenchError> {
        self.gateway.crash()
    }

    /// Starts the gateway again on its state and addresses.
    pub fn restart_gateway(&mut self) -> Result<(), BenchError> {
        let (gateway, _) = Service::start(
            "aasm gateway",
            &self.aasm,
            &self.gateway_args,
            &["operator HTTP:"],
        )?;
        self.gateway = gateway;
        Ok(())
    }

    /// Kills the runtime with SIGKILL.
    pub fn crash_runtime(&mut self) -> Result<(), BenchError> {
        self.runtime.crash()
    }

    /// Stops the runtime with SIGTERM, which drains its outbox to the gateway first, and
    /// waits for its clean exit.
    pub fn stop_runtime(&mut self) -> Result<(), BenchError> {
        self.runtime.stop_by(rustix::process::Signal::TERM)
    }

    /// Starts the runtime again on its state and socket.
    pub fn restart_runtime(&mut self) -> Result<(), BenchError> {
        let (runtime, _) = Service::start(
            "aasm runtime",
            &self.aasm,
            &self.runtime_args,
            &["runtime socket:"],
        )?;
        self.runtime = runtime;
        Ok(())
    }

    /// The gateway's state directory (its database, keys and admin token).
    pub fn gateway_state_dir(&self) -> PathBuf {
        self.gateway_state.clone()
    }

    /// The runtime's state directory (its database: outbox, sessions, last bundle).
    pub fn runtime_state_dir(&self) -> PathBuf {
        self.runtime_state.clone()
    }

    /// A directory for clients' agent keys.
    pub fn client_state_dir(&self) -> PathBuf {
        self.dir.path().join("clients")
    }

    /// The runtime's and the gateway's process ids, by name, and this one's (`aa-bench`): the
    /// load generator, whose clients are the SDK's, competes for the same processors.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("runtime", self.runtime.pid()),
            ("gateway", self.gateway.pid()),
            ("aa-bench", std::process::id()),
        ]
    }

    /// The runtime process's memory now.
    pub fn runtime_memory(&self) -> Result<Memory, BenchError> {
        Memory::of(self.runtime.pid())
    }

    /// How many file descriptors the runtime process holds now.
    pub fn runtime_fds(&self) -> Result<usize, BenchError> {
        open_fds(self.runtime.pid())
    }

    /// The gateway process's memory now.
    pub fn gateway_memory(&self) -> Result<Memory, BenchError> {
        Memory::of(self.gateway.pid())
    }

    /// How many file descriptors the gateway process holds now.
    pub fn gateway_fds(&self) -> Result<usize, BenchError> {
        open_fds(self.gateway.pid())
    }

    /// How many audit events the gateway has stored, from its `/metrics`.
    pub fn events_stored(&self) -> Result<u64, BenchError> {
        let (_, body) = self.http("GET", "/metrics", None, "")?;
        body.lines()
            .find_map(|l| l.strip_prefix(STORED_METRIC))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                BenchError::Invalid(format!("no {STORED_METRIC} in the gateway's /metrics"))
            })
    }

    /// The operators' token the gateway made in its state directory.
    pub fn admin_token(&self) -> Result<String, BenchError> {
        let path = self.gateway_state_dir().join("admin.token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(BenchError::io(path.display().to_string()))
    }

    /// One request to the gateway's operator HTTP API: the status code and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Result<(u16, String), BenchError> {
        let io =
            |what: &str| BenchError::io(format!("{method} http://{}{path}: {what}", self.http));
        let mut stream = TcpStream::connect_timeout(&self.http, Duration::from_secs(5))
            .map_err(io("connecting"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io("setting a timeout"))?;
        stream.set_nodelay(true).map_err(io("setting nodelay"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.http,
            body.len()
        )
        .map_err(io("sending"))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(io("reading"))?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| BenchError::Invalid(format!("{method} {path}: no HTTP status")))?;
        Ok((code, body.to_owned()))
    }

    /// Stops the runtime (it drains its outbox), then the gateway.
    pub fn stop(self) -> Result<(), BenchError> {
        let Stack {
            runtime,
            gateway,
            dir,
            ..
        } = self;
        let stopped = runtime.stop().and(gateway.stop());
        drop(dir);
        stopped
    }
}
