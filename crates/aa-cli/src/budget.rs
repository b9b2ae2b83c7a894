//! `aasm budget show [--team T | --agent A] [--json]`: LLM spend against the budgets policies
//! set, as the gateway keeps it, through its operator API.

use std::process::ExitCode;

use aa_gateway::{BudgetReport, WindowSpend};
use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::api::{ApiArgs, segment};

#[derive(Debug, Subcommand)]
pub(crate) enum BudgetCommand {
    /// Spend today and this month against each cap, and this month's spend by model. Without
    /// --team or --agent: every team, every root agent and every agent with a budget of its
    /// own.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    gateway: ApiArgs,
    /// One team's spend (every agent registered with it).
    #[arg(long, conflicts_with = "agent")]
    team: Option<String>,
    /// One agent's spend, everything it spawned included.
    #[arg(long)]
    agent: Option<String>,
    /// One JSON document (an array of reports) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: BudgetCommand) -> Result<ExitCode> {
    let BudgetCommand::Show(args) = command;
    crate::block_on(async {
        let api = args.gateway.api()?;
        let reports: Vec<BudgetReport> = match (&args.team, &args.agent) {
            (Some(team), _) => vec![
                api.get(&format!("/api/v1/budgets/teams/{}", segment(team)))
                    .await?,
            ],
            (_, Some(agent)) => vec![
                api.get(&format!("/api/v1/budgets/agents/{}", segment(agent)))
                    .await?,
            ],
            _ => api.get("/api/v1/budgets").await?,
        };
        if args.json {
            out!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            for line in table(&reports).lines() {
                say!("{line}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn money(usd: f64) -> String {
    format!("${usd:.4}")
}

/// The window as the day or month it is in its own time zone.
fn label(window: &WindowSpend) -> String {
    let start = DateTime::<Utc>::from_timestamp_millis(window.start_ms).unwrap_or_default();
    let tz = window
        .timezone
        .parse::<chrono_tz::Tz>()
        .unwrap_or(chrono_tz::UTC);
    let local = start.with_timezone(&tz);
    if window.window == "monthly_usd" {
        format!("month {}", local.format("%Y-%m"))
    } else {
        format!("day {}", local.format("%Y-%m-%d"))
    }
}

fn table(reports: &[BudgetReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no agents or teams yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<22}  {:<17}  {:<16}  {:>10}  {:>10}  {:>9}  {:>10}  {:<9}  POLICY",
        "ACCOUNT", "WINDOW", "ZONE", "SPENT", "HELD", "CAP", "LEFT", "ON EXCEED"
    );
    for report in reports {
        for (i, w) in report.windows.iter().enumerate() {
            let account = if i == 0 { report.account.as_str() } else { "" };
            let _ = writeln!(
                out,
                "{:<22}  {:<17}  {:<16}  {:>10}  {:>10}  {:>9}  {:>10}  {:<9}  {}",
                account,
                label(w),
                w.timezone,
                money(w.spent_usd),
                money(w.held_usd),
                w.cap_usd.map_or("-".to_owned(), |c| format!("${c:.2}")),
                w.remaining_usd.map_or("-".to_owned(), money),
                w.action_on_exceed.as_deref().unwrap_or("-"),
                w.policy.as_deref().unwrap_or("-"),
            );
        }
        for m in &report.models {
            let unlisted = if m.listed_price {
                ""
            } else {
                " (not in the price table: priced as unknown)"
            };
            let _ = writeln!(
                out,
                "{:<22}  this month: {} {} call{}, {} spent, {} held{unlisted}",
                "",
                m.model,
                m.calls,
                if m.calls == 1 { "" } else { "s" },
                money(m.spent_usd),
                money(m.held_usd),
            );
        }
    }
    out
}
