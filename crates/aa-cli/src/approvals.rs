//! `aasm approvals list | show | approve | deny`: the gateway's approvals, through its
//! operator API with the admin token. Waiting agents are released by the gateway, so decisions
//! go through it, never straight to the database.

use std::process::ExitCode;

use aa_core::{Approval, ApprovalStatus};
use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::api::{ApiArgs, segment};

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Approvals, newest first (pending only unless --status says otherwise).
    List {
        #[command(flatten)]
        gateway: ApiArgs,
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
        gateway: ApiArgs,
        /// The approval id.
        id: String,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending action: the waiting agent's call goes ahead, once.
    Approve {
        #[command(flatten)]
        gateway: ApiArgs,
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
        gateway: ApiArgs,
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

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Pending => "pending",
            StatusFilter::Approved => "approved",
            StatusFilter::Denied => "denied",
            StatusFilter::Expired => "expired",
            StatusFilter::All => "all",
        }
    }
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

pub(crate) fn run(command: ApprovalsCommand) -> Result<ExitCode> {
    crate::block_on(execute(command))
}

async fn execute(command: ApprovalsCommand) -> Result<ExitCode> {
    match command {
        ApprovalsCommand::List {
            gateway,
            status,
            json,
        } => {
            let path = match status {
                StatusFilter::All => "/api/v1/approvals".to_owned(),
                other => format!("/api/v1/approvals?status={}", other.as_str()),
            };
            let approvals: Vec<Approval> = gateway.api()?.get(&path).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&approvals)?);
            } else {
                print_table(&approvals)?;
            }
        }
        ApprovalsCommand::Show { gateway, id, json } => {
            let found: Approval = gateway
                .api()?
                .get(&format!("/api/v1/approvals/{}", segment(&id)))
                .await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print_details(&found)?;
            }
        }
        ApprovalsCommand::Approve {
            gateway,
            id,
            reason,
            who,
        } => decide(&gateway, &id, true, reason, &who).await?,
        ApprovalsCommand::Deny {
            gateway,
            id,
            reason,
            who,
        } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why the action is denied");
            }
            decide(&gateway, &id, false, Some(reason), &who).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Who acts, as recorded: `--by`, else `$USER`.
pub(crate) fn operator(by: Option<&str>) -> String {
    by.map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default()
}

async fn decide(
    gateway: &ApiArgs,
    id: &str,
    approve: bool,
    reason: Option<String>,
    who: &Decider,
) -> Result<()> {
    let verb = if approve { "approve" } else { "deny" };
    let decided: Approval = gateway
        .api()?
        .post(
            &format!("/api/v1/approvals/{}/{verb}", segment(id)),
            &json!({ "decided_by": operator(who.by.as_deref()), "reason": reason }),
        )
        .await?;
    if who.json {
        out!("{}", serde_json::to_string_pretty(&decided)?);
    } else {
        say!(
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

pub(crate) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_table(approvals: &[Approval]) -> Result<()> {
    if approvals.is_empty() {
        say!("no approvals");
        return Ok(());
    }
    say!(
        "{:<32}  {:<8}  {:<20}  {:<23}  ACTION",
        "ID",
        "STATUS",
        "AGENT",
        "EXPIRES"
    );
    for a in approvals {
        say!(
            "{:<32}  {:<8}  {:<20}  {:<23}  {}",
            a.approval_id,
            ApprovalStatus::as_str(a.status),
            a.agent.id,
            time(a.expires_at_ms),
            summary(a)
        );
    }
    Ok(())
}

fn print_details(a: &Approval) -> Result<()> {
    let action = serde_json::to_string(&a.action).unwrap_or_default();
    say!("approval  {}", a.approval_id);
    say!("status    {}", ApprovalStatus::as_str(a.status));
    say!(
        "agent     {} (team {}, depth {}, parent {})",
        a.agent.id,
        a.agent.team.as_deref().unwrap_or("-"),
        a.agent.depth,
        a.agent.parent.as_deref().unwrap_or("-")
    );
    say!("action    {action}");
    say!("digest    {}", a.action_digest);
    say!("rule      {} ({})", a.rule, a.policy);
    say!("reason    {}", a.reason);
    say!("created   {}", time(a.created_at_ms));
    say!("expires   {}", time(a.expires_at_ms));
    if let Some(at) = a.decided_at_ms {
        say!(
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
        say!("used      {}", time(at));
    }
    Ok(())
}
