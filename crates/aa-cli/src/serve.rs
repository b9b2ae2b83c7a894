//! `aasm up`, `aasm gateway`, `aasm runtime`: long-running services, stopped by SIGINT or
//! SIGTERM with the outbox drained.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use aa_cli::up::{
    DEFAULT_GRPC, DEFAULT_HTTP, GatewayHandle, GatewayOptions, RuntimeHandle, RuntimeSettings, Up,
};
use aa_gateway::{BackgroundPriority, GatewayConfig};
use anyhow::{Context as _, Result};
use clap::Args;

/// Where state lives unless `--state-dir` says otherwise.
pub(crate) const DEFAULT_STATE_DIR: &str = ".aasm";

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Holds the database and the gateway key.
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
    /// Policy files or folders (default: the balanced example); edits are published live.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// gRPC listen address, for runtimes.
    #[arg(long, default_value = DEFAULT_GRPC)]
    grpc: SocketAddr,
    /// HTTP listen address, for operators.
    #[arg(long, default_value = DEFAULT_HTTP)]
    http: SocketAddr,
    /// The price table LLM calls are charged by (default: the shipped one).
    #[arg(long)]
    prices: Option<PathBuf>,
    /// How the gateway's appends (checking and storing runtimes' events) give way to its
    /// other calls and to a runtime on the same host: idle (Linux's SCHED_IDLE) or lower (10
    /// nice levels below; where busy processes share its cgroup, as other calls wait for an
    /// append that holds the store).
    #[arg(long, env = "AASM_APPEND_PRIORITY", default_value_t)]
    append_priority: BackgroundPriority,
}

impl GatewayArgs {
    fn options(self) -> Result<GatewayOptions> {
        let prices = match &self.prices {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the price table {}", path.display()))?;
                let table = aa_policy::PriceTable::parse(&text)
                    .with_context(|| format!("price table {}", path.display()))?;
                Some(std::sync::Arc::new(table))
            }
            None => None,
        };
        Ok(GatewayOptions {
            state_dir: self.state_dir,
            policies: self.policies,
            grpc: self.grpc,
            http: self.http,
            config: GatewayConfig {
                prices,
                append_priority: self.append_priority,
                ..GatewayConfig::default()
            },
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    runtime: RuntimeSettings,
}

#[derive(Debug, Args)]
pub(crate) struct RuntimeArgs {
    /// The gateway's gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:7390")]
    gateway: String,
    /// Holds the outbox database.
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
    /// A uid to serve (repeatable; default: the runtime's own).
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// The file holding the gateway's runtime token (its state directory's runtime.token;
    /// default: runtime.token in this state directory). AASM_RUNTIME_TOKEN sets the token
    /// itself instead.
    #[arg(long)]
    gateway_token_file: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeSettings,
}

fn init_logging() {
    let level = std::env::var("AASM_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn tokio() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn terminated() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("installing the SIGINT handler")?,
        _ = term.recv() => {}
    }
    Ok(())
}

pub(crate) fn up(args: UpArgs) -> Result<ExitCode> {
    init_logging();
    tokio()?.block_on(async {
        let mut up = Up::start(args.gateway.options()?, args.runtime).await?;
        out!("runtime socket: {}", up.runtime.socket.display());
        out!("gateway gRPC:   {}", up.gateway.url());
        out!("operator HTTP:  http://{}", up.gateway.http);
        out!("try: aasm check --agent demo --action '{{\"type\":\"tool_call\",\"tool\":\"shell\",\"args\":{{\"command\":\"ls\"}}}}'");
        // Until a signal, or one half failing: the process must not stay up half dead.
        let failed = tokio::select! {
            signalled = terminated() => { signalled?; None }
            failure = up.ended() => Some(failure),
        };
        eprintln!("stopping: draining the outbox");
        let stopped = up.stop().await;
        match failed {
            Some(failure) => Err(failure),
            None => stopped.map(|()| ExitCode::SUCCESS),
        }
    })
}

pub(crate) fn gateway(args: GatewayArgs) -> Result<ExitCode> {
    init_logging();
    tokio()?.block_on(async {
        let mut gateway = GatewayHandle::start(args.options()?).await?;
        out!("gateway gRPC:   {}", gateway.url());
        out!("operator HTTP:  http://{}", gateway.http);
        tokio::select! {
            signalled = terminated() => signalled?,
            failure = gateway.ended() => return Err(failure),
        }
        gateway.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn runtime(args: RuntimeArgs) -> Result<ExitCode> {
    init_logging();
    let token = aa_cli::up::runtime_token(&args.state_dir, args.gateway_token_file.as_deref())?;
    let mut config = args.runtime.config(args.state_dir, args.gateway);
    config.allowed_uids = args.allow_uids;
    config.gateway_token = token;
    tokio()?.block_on(async {
        let mut runtime = RuntimeHandle::start(config)?;
        out!("runtime socket: {}", runtime.socket.display());
        tokio::select! {
            signalled = terminated() => signalled?,
            failure = runtime.ended() => return Err(failure),
        }
        eprintln!("stopping: draining the outbox");
        runtime.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}
