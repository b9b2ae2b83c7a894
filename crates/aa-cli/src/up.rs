//! Starting and stopping the gateway and the runtime in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aa_gateway::{Gateway, GatewayConfig, GatewayError, PolicyDocument, SqliteStore};
use aa_runtime::{BackgroundPriority, RuntimeConfig, RuntimeError};
use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The policy `aasm up` serves when no `--policy` is given.
pub const DEFAULT_POLICY: &str = include_str!("../../../policy-examples/balanced.yaml");
/// The gateway's gRPC address by default.
pub const DEFAULT_GRPC: &str = "127.0.0.1:7390";
/// The gateway's HTTP address by default.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7391";
/// How often policy files are looked at for changes.
const POLICY_POLL: Duration = Duration::from_millis(250);

/// The gateway's files under a state directory.
pub fn gateway_database(state_dir: &Path) -> PathBuf {
    state_dir.join("gateway.db")
}

/// The operators' bearer token (created 0600 on first start, unless `AASM_ADMIN_TOKEN` set
/// one).
pub fn admin_token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.token")
}

/// Where a running gateway says it listens: `{"grpc": URL, "http": URL}`, for the CLI.
pub fn gateway_address_file(state_dir: &Path) -> PathBuf {
    state_dir.join("gateway.json")
}

/// The environment variable that sets the admin token instead of the file.
pub const ADMIN_TOKEN_ENV: &str = "AASM_ADMIN_TOKEN";

/// The bearer token runtimes present to the gateway (created 0600 on the gateway's first
/// start, unless `AASM_RUNTIME_TOKEN` set one); a runtime on the same state directory finds it
/// there.
pub fn runtime_token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("runtime.token")
}

/// The environment variable that sets the runtime token instead of the file, for the gateway
/// and the runtimes alike.
pub const RUNTIME_TOKEN_ENV: &str = "AASM_RUNTIME_TOKEN";

/// The token a runtime presents: `AASM_RUNTIME_TOKEN`, else the file `file`, else the state
/// directory's `runtime.token` (where a gateway on the same state directory made it).
pub fn runtime_token(state_dir: &Path, file: Option<&Path>) -> Result<String> {
    if let Some(token) = token_from_env(RUNTIME_TOKEN_ENV) {
        return Ok(token);
    }
    let path = file.map_or_else(|| runtime_token_file(state_dir), Path::to_path_buf);
    read_token(&path)?.with_context(|| {
        format!(
            "no runtime token: {} does not exist; pass --gateway-token-file with the gateway's \
             runtime.token, or set {RUNTIME_TOKEN_ENV}",
            path.display()
        )
    })
}

/// A token given by the environment variable `env`.
fn token_from_env(env: &str) -> Option<String> {
    std::env::var(env)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The token in `path`, if the file is there.
fn read_token(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it to have a new token made",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What an admin token `aasm` makes starts with, and a runtime token: a token in a log or a
/// tool's output is then recognised (the scanner's rule `agent-assembly-token`).
pub const ADMIN_TOKEN_PREFIX: &str = "aasm_op_";
/// See [`ADMIN_TOKEN_PREFIX`].
pub const RUNTIME_TOKEN_PREFIX: &str = "aasm_rt_";

/// A gateway's token: from the environment variable `env`, else the file `path`, created
/// the first time as `prefix` and 32 random bytes in hex.
fn gateway_token(env: &str, path: &Path, prefix: &str) -> Result<String> {
    if let Some(token) = token_from_env(env) {
        return Ok(token);
    }
    if let Some(token) = read_token(path)? {
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for {}: {e}", path.display()))?;
    let token = format!("{prefix}{}", aa_core::hex::encode(&bytes));
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Written whole under another name, then linked into place: a reader never finds it
    // empty, and of two processes making it at once the first one's stands.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
        .with_context(|| format!("writing {}", partial.display()))?;
    let linked = std::fs::hard_link(&partial, path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path)?
            .with_context(|| format!("{} vanished while being made", path.display())),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Holds `gateway.db` and `gateway.key`.
    pub state_dir: PathBuf,
    /// Policy files or folders; empty means [`DEFAULT_POLICY`]. Edits are published.
    pub policies: Vec<PathBuf>,
    /// gRPC listen address (port 0 picks one).
    pub grpc: SocketAddr,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Tunables.
    pub config: GatewayConfig,
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    /// The logic, for tests and tools in the same process.
    pub gateway: Arc<Gateway<SqliteStore>>,
    /// Where gRPC listens.
    pub grpc: SocketAddr,
    /// Where HTTP listens.
    pub http: SocketAddr,
    stop: watch::Sender<bool>,
    /// `None` once [`ended`](Self::ended) has seen it end.
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

fn read_policies(paths: &[PathBuf]) -> Result<Vec<PolicyDocument>> {
    if paths.is_empty() {
        return Ok(vec![PolicyDocument {
            name: "balanced.yaml (default)".into(),
            source: DEFAULT_POLICY.into(),
        }]);
    }
    // The files `aasm policy validate` and `test` read: folders searched recursively, hidden
    // entries skipped, tests left out.
    let mut documents = Vec::new();
    for file in crate::files::yaml_files(paths)?
        .into_iter()
        .filter(|f| !crate::files::is_test_file(f))
    {
        let source = crate::files::read_text(&file)?;
        documents.push(PolicyDocument {
            name: file.display().to_string(),
            source,
        });
    }
    Ok(documents)
}

/// State directories hold keys and the audit log: owner-only. One made before, looser (by
/// an older build, or by hand), is made owner-only, and the change is logged.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making {} owner-only", dir.display()))?;
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:o}"),
            "the state directory was open to other users; it is owner-only now"
        );
    }
    Ok(())
}

impl GatewayHandle {
    /// Opens the store and key, binds both listeners, and serves.
    pub async fn start(options: GatewayOptions) -> Result<GatewayHandle> {
        create_private_dir(&options.state_dir)?;
        let key = aa_identity::keyfile::load_or_create(&options.state_dir.join("gateway.key"))?;
        let store = SqliteStore::open(&gateway_database(&options.state_dir))?;
        let documents = read_policies(&options.policies)?;
        let mut config = options.config;
        if config.admin_token.is_none() {
            let file = admin_token_file(&options.state_dir);
            config.admin_token = Some(gateway_token(ADMIN_TOKEN_ENV, &file, ADMIN_TOKEN_PREFIX)?);
        }
        if config.runtime_token.is_none() {
            let file = runtime_token_file(&options.state_dir);
            config.runtime_token = Some(gateway_token(
                RUNTIME_TOKEN_ENV,
                &file,
                RUNTIME_TOKEN_PREFIX,
            )?);
        }
        let gateway = Arc::new(Gateway::new(store, key, documents, config)?);
        let grpc = TcpListener::bind(options.grpc)
            .await
            .with_context(|| format!("binding gRPC on {}", options.grpc))?;
        let http = TcpListener::bind(options.http)
            .await
            .with_context(|| format!("binding HTTP on {}", options.http))?;
        let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
        let address = serde_json::json!({
            "grpc": format!("http://{grpc_addr}"),
            "http": format!("http://{http_addr}"),
        });
        let address_file = gateway_address_file(&options.state_dir);
        std::fs::write(&address_file, format!("{address}\n"))
            .with_context(|| format!("writing {}", address_file.display()))?;
        let (stop, stopped) = watch::channel(false);
        let mut on_stop = stopped.clone();
        let task = tokio::spawn(aa_gateway::run(
            grpc,
            http,
            Arc::clone(&gateway),
            async move {
                let _ = on_stop.wait_for(|s| *s).await;
            },
        ));
        if !options.policies.is_empty() {
            tokio::spawn(follow_policies(
                Arc::clone(&gateway),
                options.policies,
                stopped,
            ));
        }
        Ok(GatewayHandle {
            gateway,
            grpc: grpc_addr,
            http: http_addr,
            stop,
            task: Some(task),
        })
    }

    /// The URL runtimes dial.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A runtime's configuration with its state in `state_dir`, linked to this gateway: its
    /// URL and runtime token.
    pub fn runtime_config(&self, state_dir: impl Into<PathBuf>) -> RuntimeConfig {
        let mut config = RuntimeConfig::new(state_dir, self.url());
        if let Some(token) = &self.gateway.config().runtime_token {
            config.gateway_token.clone_from(token);
        }
        config
    }

    /// Stops serving and signs a last checkpoint.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task {
            task.await.context("gateway task")??;
        }
        Ok(())
    }

    /// Resolves only if the gateway stops by itself, with why; never before a stop otherwise.
    pub async fn ended(&mut self) -> anyhow::Error {
        ended(&mut self.task, "the gateway").await
    }
}

/// Waits for a server's task to end of itself: with its error, or saying that it stopped.
async fn ended<E>(task: &mut Option<JoinHandle<Result<(), E>>>, what: &str) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let Some(running) = task.as_mut() else {
        return std::future::pending().await;
    };
    let result = running.await;
    *task = None;
    match result {
        Ok(Err(error)) => anyhow::Error::new(error).context(format!("{what} failed")),
        Ok(Ok(())) => anyhow::anyhow!("{what} stopped by itself"),
        Err(error) => anyhow::Error::new(error).context(format!("{what} failed")),
    }
}

/// Publishes the policy files again whenever what they say changes; a bad edit is reported
/// once and the bundle in force stays. The files are read again at every poll rather than
/// their times looked at: a file edited in place inside a directory given by its path leaves
/// the directory's time as it was, and an edit within a file system's time step leaves the
/// file's.
async fn follow_policies(
    gateway: Arc<Gateway<SqliteStore>>,
    paths: Vec<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Result<Vec<PolicyDocument>, String>> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(POLICY_POLL) => {}
        }
        let read = read_policies(&paths).map_err(|e| format!("{e:#}"));
        if last.as_ref() == Some(&read) {
            continue;
        }
        // The first reading is what the gateway started with: published already.
        let first = last.is_none();
        last = Some(read.clone());
        match read {
            Ok(documents) if first => {
                let _ = gateway.publish(documents);
            }
            Ok(documents) => match gateway.publish(documents) {
                Ok(version) => tracing::info!(%version, "policy published"),
                Err(error) => tracing::error!(%error, "policy not published"),
            },
            Err(error) => tracing::error!(%error, "policy not read"),
        }
    }
}

/// A running runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    /// Its socket.
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    /// `None` once [`ended`](Self::ended) has seen it end.
    task: Option<JoinHandle<Result<(), RuntimeError>>>,
}

impl RuntimeHandle {
    /// Binds the socket and serves.
    pub fn start(config: RuntimeConfig) -> Result<RuntimeHandle> {
        let listener = Self::bind(&config)?;
        Ok(Self::serve(listener, config))
    }

    fn bind(config: &RuntimeConfig) -> Result<tokio::net::UnixListener> {
        create_private_dir(&config.state_dir)?;
        Ok(aa_runtime::bind(config)?)
    }

    /// Serves on a socket [`bind`](Self::bind) bound.
    fn serve(listener: tokio::net::UnixListener, config: RuntimeConfig) -> RuntimeHandle {
        let socket = config.socket_path();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(aa_runtime::run(listener, config, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        RuntimeHandle {
            socket,
            stop,
            task: Some(task),
        }
    }

    /// Stops accepting, writes what is queued and drains the outbox to the gateway for a
    /// few seconds at most.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task {
            task.await.context("runtime task")??;
        }
        Ok(())
    }

    /// Resolves only if the runtime stops by itself, with why; never before a stop otherwise.
    pub async fn ended(&mut self) -> anyhow::Error {
        ended(&mut self.task, "the runtime").await
    }

    /// Stops at once, as a crash would: nothing is drained.
    pub fn kill(self) {
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

/// Gateway and runtime in one process, sharing a state directory.
#[derive(Debug)]
pub struct Up {
    /// The gateway.
    pub gateway: GatewayHandle,
    /// The runtime.
    pub runtime: RuntimeHandle,
}

/// A runtime's settings that `aasm up` and `aasm runtime` take alike, as flags; `None` keeps
/// the runtime's default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuntimeSettings {
    /// The runtime socket (default: runtime.sock in the state directory).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Connections served at once at most; more are answered UNAVAILABLE (default 4096).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a frame may take to arrive once begun before its connection is closed
    /// (default 10).
    #[arg(long, value_parser = seconds)]
    pub frame_timeout: Option<Duration>,
    /// Memory the requests in progress may hold across all connections at most, a frame
    /// charged 32 times its size until it is answered (default 256 MiB; at least 4 MiB).
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// How the runtime's background work (the outbox writer, the forwarder) gives way to
    /// checks: idle (Linux's SCHED_IDLE, the default; for a runtime in a cgroup of its own) or
    /// lower (10 nice levels below; where busy processes share its cgroup).
    #[arg(long, env = "AASM_BACKGROUND_PRIORITY")]
    pub background_priority: Option<BackgroundPriority>,
}

/// A duration given in seconds, fractions allowed.
fn seconds(text: &str) -> std::result::Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?} seconds: {e}"))
}

impl RuntimeSettings {
    /// A runtime's configuration with these settings over the defaults.
    pub fn config(&self, state_dir: PathBuf, gateway_url: String) -> RuntimeConfig {
        let mut config = RuntimeConfig::new(state_dir, gateway_url);
        config.socket_path.clone_from(&self.socket);
        config.max_connections = self.max_connections.unwrap_or(config.max_connections);
        config.frame_timeout = self.frame_timeout.unwrap_or(config.frame_timeout);
        config.max_request_bytes = self.max_request_bytes.unwrap_or(config.max_request_bytes);
        config.background_priority = self
            .background_priority
            .unwrap_or(config.background_priority);
        config
    }
}

impl Up {
    /// Starts the gateway, then a runtime linked to it with `runtime`'s settings. Those are
    /// checked first, before the gateway binds anything: only the gateway's address is
    /// unknown until then.
    pub async fn start(mut options: GatewayOptions, runtime: RuntimeSettings) -> Result<Up> {
        let mut config =
            runtime.config(options.state_dir.clone(), format!("http://{DEFAULT_GRPC}"));
        config.gateway_token = match &options.config.runtime_token {
            Some(token) => token.clone(),
            None => {
                create_private_dir(&options.state_dir)?;
                let file = runtime_token_file(&options.state_dir);
                let token = gateway_token(RUNTIME_TOKEN_ENV, &file, RUNTIME_TOKEN_PREFIX)?;
                options.config.runtime_token = Some(token.clone());
                token
            }
        };
        config.validate()?;
        // The socket first: a second `aasm up` on a state directory in use stops here,
        // before its gateway would write its address over the running one's.
        let listener = RuntimeHandle::bind(&config)?;
        let gateway = GatewayHandle::start(options).await?;
        config.gateway_url = gateway.url();
        let runtime = RuntimeHandle::serve(listener, config);
        Ok(Up { gateway, runtime })
    }

    /// Stops the runtime first (its outbox drains into the gateway), then the gateway, the
    /// gateway even when the runtime failed; the first error is returned.
    pub async fn stop(self) -> Result<()> {
        let runtime = self.runtime.stop().await;
        let gateway = self.gateway.stop().await;
        runtime.and(gateway)
    }

    /// Resolves only if the gateway or the runtime stops by itself, with why.
    pub async fn ended(&mut self) -> anyhow::Error {
        tokio::select! {
            failure = self.gateway.ended() => failure,
            failure = self.runtime.ended() => failure,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The tokens `aasm` makes, an agent's credential and a spawn grant are each recognised
    /// by the scanner, so one written to a log or a tool's output is redacted.
    #[test]
    fn the_tokens_made_here_are_found_by_the_scanner() {
        let dir = tempfile::tempdir().unwrap();
        let made = |prefix: &str| {
            let path = dir.path().join(prefix);
            gateway_token("AASM_TEST_NO_SUCH_TOKEN", &path, prefix).unwrap()
        };
        let key = aa_identity::Keypair::generate().unwrap();
        let did = key.public().did();
        let id = "agent-with-a-long-name-".repeat(10);
        let tokens = [
            made(ADMIN_TOKEN_PREFIX),
            made(RUNTIME_TOKEN_PREFIX),
            aa_identity::issue(&key, &id, &did, 1_000, 600).unwrap().0,
            aa_identity::grant(&key, &id, &id, 1_000, 600).unwrap().0,
        ];
        let scanner = aa_security::Scanner::new().unwrap();
        for token in tokens {
            let text = format!("the token is {token}, keep it");
            let found = scanner.scan(&text);
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert_eq!(found[0].rule_id, "agent-assembly-token");
            assert_eq!(&text[found[0].start..found[0].end], token);
        }
    }

    /// The scanner benchmarks measure the default policy's custom pattern as they hold it.
    #[test]
    fn the_benchmarks_hold_the_default_policy_pattern() {
        let set = aa_policy::PolicySet::new(aa_policy::Policy::parse(DEFAULT_POLICY).unwrap());
        let (name, regex) = aa_testkit::corpus::DEFAULT_POLICY_PATTERN;
        let patterns: Vec<(String, String)> = set
            .patterns()
            .into_iter()
            .map(|p| (p.name, p.regex))
            .collect();
        assert_eq!(patterns, [(name.to_owned(), regex.to_owned())]);
    }

    /// `aasm up --policy DIR` enforces what `aasm policy test DIR` checked: files in folders
    /// below too, hidden ones and tests left out.
    #[test]
    fn a_policy_folder_is_read_as_aasm_policy_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x").unwrap();
        };
        for name in [
            "a.yaml",
            "teams/b.yml",
            ".hidden.yaml",
            "a.test.yaml",
            "notes.txt",
        ] {
            write(name);
        }
        let read = read_policies(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = read
            .iter()
            .map(|d| {
                Path::new(&d.name)
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a.yaml", "teams/b.yml"]);
    }

    #[test]
    fn a_state_directory_open_to_others_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&state).unwrap();
        let mode = |dir: &Path| std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
    }

    /// `aasm runtime` alone, too.
    #[tokio::test]
    async fn a_runtime_makes_its_state_directory_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("runtime");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = RuntimeConfig::new(&state, "http://127.0.0.1:1");
        config.gateway_token = "runtime-token".into();
        let runtime = RuntimeHandle::start(config);
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        runtime.unwrap().kill();
        assert_eq!(mode, 0o700);
    }
}
