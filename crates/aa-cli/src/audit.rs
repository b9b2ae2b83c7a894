//! `aasm audit verify | export | tail`: read the gateway's database (or an export) offline.

use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aa_cli::up::gateway_database;
use aa_gateway::audit::{Checkpoint, Record, verify};
use aa_gateway::{SqliteStore, Store};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::serve::DEFAULT_STATE_DIR;

/// Records read from the database per query.
const PAGE: u64 = 10_000;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check every hash chain and checkpoint signature; exit 1 naming the first bad record.
    Verify {
        #[command(flatten)]
        source: Source,
        /// An export file (from `aasm audit export`) instead of the database.
        #[arg(long, conflicts_with = "state_dir")]
        export: Option<PathBuf>,
    },
    /// Print every record as JSON lines, then every checkpoint as `{"checkpoint":…}`.
    Export {
        #[command(flatten)]
        source: Source,
    },
    /// Print the last records appended, oldest first; with --follow, keep printing new ones.
    Tail {
        #[command(flatten)]
        source: Source,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Keep watching for new records.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Source {
    /// The state directory holding gateway.db.
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
}

fn open(state_dir: &Path) -> Result<SqliteStore> {
    let path = gateway_database(state_dir);
    if !path.exists() {
        bail!(
            "no gateway database at {} (is this the state directory of `aasm up`?)",
            path.display()
        );
    }
    SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// Hands `each` every record in stream order, a page at a time, each page read from where the
/// last one ended (not by offset, which would read the whole log again for every page).
async fn for_each_page(
    store: &SqliteStore,
    mut each: impl FnMut(Vec<Record>) -> Result<()>,
) -> Result<()> {
    let mut after = None;
    loop {
        let page = store.records_after(after.take(), PAGE).await?;
        let done = (page.len() as u64) < PAGE;
        after = page.last().map(|r| (r.stream_id.clone(), r.sequence));
        each(page)?;
        if done {
            return Ok(());
        }
    }
}

async fn all_records(store: &SqliteStore) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for_each_page(store, |page| {
        records.extend(page);
        Ok(())
    })
    .await?;
    Ok(records)
}

fn trusted_key(state_dir: &Path) -> Option<aa_identity::PublicKey> {
    let path = state_dir.join("gateway.key");
    path.exists()
        .then(|| aa_identity::keyfile::load_or_create(&path).ok())
        .flatten()
        .map(|k| k.public())
}

fn read_export(path: &Path) -> Result<(Vec<Record>, Vec<Checkpoint>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut records, mut checkpoints) = (Vec::new(), Vec::new());
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let value: Value = serde_json::from_str(&line).with_context(at)?;
        match value.get("checkpoint") {
            Some(c) => checkpoints.push(serde_json::from_value(c.clone()).with_context(at)?),
            None => records.push(serde_json::from_value(value).with_context(at)?),
        }
    }
    Ok((records, checkpoints))
}

pub(crate) fn audit(command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify { source, export } => {
            let (records, checkpoints, trusted) = match export {
                Some(file) => {
                    let (r, c) = read_export(&file)?;
                    (r, c, None)
                }
                None => crate::block_on(async {
                    let store = open(&source.state_dir)?;
                    let records = all_records(&store).await?;
                    let checkpoints = store.checkpoints().await?;
                    Ok((records, checkpoints, trusted_key(&source.state_dir)))
                })?,
            };
            match verify(records, &checkpoints, trusted.as_ref()) {
                Ok(v) => {
                    println!(
                        "ok: {} records in {} streams, {} checkpoints verified",
                        v.records, v.streams, v.checkpoints
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(tampered) => {
                    println!("TAMPERED: {}", tampered.0);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Export { source } => crate::block_on(async {
            let store = open(&source.state_dir)?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            // Written as read: an export never holds more than a page of the log.
            for_each_page(&store, |page| {
                for record in page {
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                }
                Ok(())
            })
            .await?;
            for checkpoint in store.checkpoints().await? {
                writeln!(out, "{}", serde_json::json!({ "checkpoint": checkpoint }))?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }),
        AuditCommand::Tail {
            source,
            lines,
            follow,
        } => crate::block_on(async {
            // In the order records were appended, whatever their stream: a record appended to
            // one stream while following never moves another's.
            let store = open(&source.state_dir)?;
            // At least the newest is read, for where following starts.
            let mut page = store.last_appended(lines.max(1)).await?;
            let mut position = page.last().map_or(0, |(at, _)| *at);
            if lines == 0 {
                page.clear();
            }
            loop {
                let mut out = std::io::stdout().lock();
                for (at, record) in page {
                    position = at;
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                }
                out.flush()?;
                if !follow {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                page = store.appended_since(position, PAGE).await?;
            }
        }),
    }
}
