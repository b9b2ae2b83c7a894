//! `aasm approvals list | show | approve | deny`: the gateway's approvals, over its gRPC API
//! with the admin token. Waiting agents are released by the gateway, so decisions go through
//! it, never straight to the database.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aa_cli::up::{ADMIN_TOKEN_ENV, admin_token_file, gateway_address_file};
use aa_core::{Approval, ApprovalStatus};
use aa_proto::pb;
use aa_proto::pb::approval_service_client::ApprovalServiceClient;
use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::Channel;

use crate::serve::DEFAULT_STATE_DIR;

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Approvals, newest first (pending only unless --status says otherwise).
    List {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Which approvals: pending, approved, denied, expired or all.
        #[arg(long, value_enum, default_value_t = StatusFilter::Pending)]
        status: StatusFilter,
        /// One JSON document (an array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One approval in full.
    Show {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The approval id.
        id: String,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending action: the waiting agent's call goes ahead, once.
    Approve {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The approval id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        who: Decider,
    },
    /// Deny a pending action: the waiting agent's call is refused with the reason.
    Deny {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The approval id.
        id: String,
        /// Why (told to the agent and recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Decider,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusFilter {
    Pending,
    Approved,
    Denied,
    Expired,
    All,
}

#[derive(Debug, Args)]
pub(crate) struct Decider {
    /// Who decides, as recorded (default: $USER).
    #[arg(long = "by")]
    by: Option<String>,
    /// Print the decided approval as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the gateway is and how to prove to it that the caller is an operator.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The state directory of `aasm up` or `aasm gateway` (for its address and admin token).
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
    /// The gateway's gRPC URL (default: what the gateway wrote in the state directory).
    #[arg(long, env = "AASM_GATEWAY")]
    gateway: Option<String>,
    /// The admin token (default: `AASM_ADMIN_TOKEN`, else the state directory's admin.token).
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
}

impl GatewayArgs {
    fn url(&self) -> Result<String> {
        if let Some(url) = &self.gateway {
            return Ok(url.clone());
        }
        let path = gateway_address_file(&self.state_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no gateway address at {} (is a gateway running with this --state-dir? or pass --gateway)",
                path.display()
            )
        })?;
        let address: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        address["grpc"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{} has no \"grpc\" address", path.display()))
    }

    fn token(&self) -> Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.trim().to_owned());
        }
        read_token(&admin_token_file(&self.state_dir))
    }

    async fn connect(&self) -> Result<Connected> {
        let url = self.url()?;
        let token = self.token()?;
        let channel = Channel::from_shared(url.clone())
            .with_context(|| format!("gateway URL {url:?}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to the gateway at {url}"))?;
        Ok(Connected {
            client: ApprovalServiceClient::new(channel),
            token,
        })
    }
}

fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no admin token at {} (pass --token or set {ADMIN_TOKEN_ENV})",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}

struct Connected {
    client: ApprovalServiceClient<Channel>,
    token: String,
}

impl Connected {
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| anyhow!("the admin token holds characters a header cannot"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A gRPC failure as one line: the gateway's message, without the transport's wrapping.
fn failed(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow!("the gateway is unavailable: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
}

fn approval(wire: pb::Approval) -> Result<Approval> {
    Approval::try_from(wire).map_err(|e| anyhow!("the gateway sent an unreadable approval: {e}"))
}

pub(crate) fn run(command: ApprovalsCommand) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(execute(command))
}

async fn execute(command: ApprovalsCommand) -> Result<ExitCode> {
    match command {
        ApprovalsCommand::List {
            gateway,
            status,
            json,
        } => {
            let mut c = gateway.connect().await?;
            let status = match status {
                StatusFilter::Pending => pb::ApprovalStatus::Pending,
                StatusFilter::Approved => pb::ApprovalStatus::Approved,
                StatusFilter::Denied => pb::ApprovalStatus::Denied,
                StatusFilter::Expired => pb::ApprovalStatus::Expired,
                StatusFilter::All => pb::ApprovalStatus::Unspecified,
            };
            let request = c.request(pb::ListApprovalsRequest {
                status: status.into(),
            })?;
            let listed = c.client.list(request).await.map_err(failed)?.into_inner();
            let approvals = listed
                .approvals
                .into_iter()
                .map(approval)
                .collect::<Result<Vec<_>>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&approvals)?);
            } else {
                print_table(&approvals);
            }
        }
        ApprovalsCommand::Show { gateway, id, json } => {
            let mut c = gateway.connect().await?;
            let request = c.request(pb::GetApprovalRequest { approval_id: id })?;
            let found = approval(c.client.get(request).await.map_err(failed)?.into_inner())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print_details(&found);
            }
        }
        ApprovalsCommand::Approve {
            gateway,
            id,
            reason,
            who,
        } => decide(&gateway, id, true, reason, &who).await?,
        ApprovalsCommand::Deny {
            gateway,
            id,
            reason,
            who,
        } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why the action is denied");
            }
            decide(&gateway, id, false, Some(reason), &who).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    gateway: &GatewayArgs,
    id: String,
    approve: bool,
    reason: Option<String>,
    who: &Decider,
) -> Result<()> {
    let mut c = gateway.connect().await?;
    let decided_by = who
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let request = c.request(pb::DecideApprovalRequest {
        approval_id: id,
        approve,
        decided_by,
        comment: reason.unwrap_or_default(),
    })?;
    let decided = approval(c.client.decide(request).await.map_err(failed)?.into_inner())?;
    if who.json {
        println!("{}", serde_json::to_string_pretty(&decided)?);
    } else {
        println!(
            "{} {} ({} by {})",
            ApprovalStatus::as_str(decided.status),
            decided.approval_id,
            summary(&decided),
            decided.agent.id
        );
    }
    Ok(())
}

/// The action in a few words, e.g. `shell {"command":"rm -r x"}`.
fn summary(approval: &Approval) -> String {
    let mut value = serde_json::to_value(&approval.action).unwrap_or_default();
    let kind = value
        .as_object_mut()
        .and_then(|m| m.remove("type"))
        .and_then(|t| t.as_str().map(str::to_owned))
        .unwrap_or_default();
    let text = match (&approval.action, value) {
        (aa_core::Action::ToolCall { tool, args }, _) => format!("{tool} {args}"),
        (_, rest) => format!("{kind} {rest}"),
    };
    const MAX: usize = 60;
    if text.chars().count() > MAX {
        format!("{}…", text.chars().take(MAX - 1).collect::<String>())
    } else {
        text
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_table(approvals: &[Approval]) {
    if approvals.is_empty() {
        println!("no approvals");
        return;
    }
    println!(
        "{:<32}  {:<8}  {:<20}  {:<23}  ACTION",
        "ID", "STATUS", "AGENT", "EXPIRES"
    );
    for a in approvals {
        println!(
            "{:<32}  {:<8}  {:<20}  {:<23}  {}",
            a.approval_id,
            ApprovalStatus::as_str(a.status),
            a.agent.id,
            time(a.expires_at_ms),
            summary(a)
        );
    }
}

fn print_details(a: &Approval) {
    let action = serde_json::to_string(&a.action).unwrap_or_default();
    println!("approval  {}", a.approval_id);
    println!("status    {}", ApprovalStatus::as_str(a.status));
    println!(
        "agent     {} (team {}, depth {}, parent {})",
        a.agent.id,
        a.agent.team.as_deref().unwrap_or("-"),
        a.agent.depth,
        a.agent.parent.as_deref().unwrap_or("-")
    );
    println!("action    {action}");
    println!("digest    {}", a.action_digest);
    println!("rule      {} ({})", a.rule, a.policy);
    println!("reason    {}", a.reason);
    println!("created   {}", time(a.created_at_ms));
    println!("expires   {}", time(a.expires_at_ms));
    if let Some(at) = a.decided_at_ms {
        println!(
            "decided   {} by {}{}",
            time(at),
            a.decided_by.as_deref().unwrap_or("-"),
            a.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        );
    }
    if let Some(at) = a.used_at_ms {
        println!("used      {}", time(at));
    }
}
