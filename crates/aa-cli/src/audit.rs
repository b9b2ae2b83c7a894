//! `aasm audit verify | export | tail | checkpoint`: read the gateway's database (or an
//! export) offline; `aasm audit digest`: what a receipt gives for a known secret; `aasm audit
//! quarantine`: the events a runtime set aside.

use std::io::{BufRead as _, BufWriter, Read as _, Write as _};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aa_cli::up::gateway_database;
use aa_gateway::audit::{Checkpoint, Record, Tampered, Verified, Verifier};
use aa_gateway::{SqliteStore, Store};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::serve::DEFAULT_STATE_DIR;

/// Records read from the database per query.
const PAGE: u64 = 10_000;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check every hash chain and checkpoint signature; exit 1 naming the first bad record.
    Verify {
        #[command(flatten)]
        source: Source,
        /// An export file (from `aasm audit export`) instead of the database; the state
        /// directory is then not read.
        // Not a clap conflict with `--state-dir`: clap counts `AASM_STATE_DIR` as given, and
        // would refuse `--export` wherever that is set.
        #[arg(long)]
        export: Option<PathBuf>,
        /// The gateway's key (`did:key:…`, as its `/health` shows it): every checkpoint must
        /// be signed by it, and there must be one. Without it a database is checked against
        /// the state directory's `gateway.key` (and refused without one), and an export
        /// against the key it names itself, which whoever rewrote it could have signed with.
        #[arg(long, value_parser = gateway_did)]
        gateway_did: Option<Box<aa_identity::PublicKey>>,
        /// A checkpoint kept outside the log (from `aasm audit checkpoint`, or an export's
        /// `{"checkpoint":…}` line); the log must still hold it, unchanged. Without one,
        /// deleting the newest checkpoints with the records after an older one goes
        /// unnoticed. May be given more than once.
        #[arg(long = "checkpoint", value_name = "FILE")]
        kept: Vec<PathBuf>,
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
    /// Print the newest signed checkpoint as one JSON line, to keep outside the log (another
    /// machine, a ticket, a write-once bucket) for `aasm audit verify --checkpoint`.
    Checkpoint {
        #[command(flatten)]
        source: Source,
    },
    /// Print the digest a redaction receipt (`sha256_prefix`) gives for the value on stdin
    /// (a trailing line break dropped), to look a known secret up in the log. Receipts are
    /// keyed with the runtime token: AASM_RUNTIME_TOKEN, else --gateway-token-file, else the
    /// state directory's runtime.token. Without it a receipt names nothing.
    Digest {
        /// The state directory holding runtime.token (of `aasm up` or `aasm gateway`).
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
        state_dir: PathBuf,
        /// A file holding the runtime token.
        #[arg(long)]
        gateway_token_file: Option<PathBuf>,
    },
    /// Print, as JSON lines, the events a runtime set aside because they can never be
    /// delivered (refused for good by the gateway, or unreadable): each stands in the log as a
    /// `refusal` tombstone at its sequence.
    Quarantine(QuarantineArgs),
}

/// `aasm audit quarantine`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct QuarantineArgs {
    /// The state directory holding runtime.db (of `aasm up` or `aasm runtime`).
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct Source {
    /// The state directory holding gateway.db.
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
}

fn gateway_did(text: &str) -> std::result::Result<Box<aa_identity::PublicKey>, String> {
    aa_identity::PublicKey::from_did(text)
        .map(Box::new)
        .map_err(|e| format!("{text:?}: {e}"))
}

fn open(state_dir: &Path) -> Result<SqliteStore> {
    let path = gateway_database(state_dir);
    if !path.exists() {
        bail!(
            "no gateway database at {} (is this the state directory of `aasm up`?)",
            path.display()
        );
    }
    // Read only: what is audited is not changed by auditing it, not even to migrate it.
    SqliteStore::open_read_only(&path).with_context(|| format!("opening {}", path.display()))
}

/// Hands `each` every record in stream order, a page at a time, each page read from where the
/// last one ended (not by offset, which would read the whole log again for every page), until
/// `each` breaks.
async fn for_each_page(
    store: &SqliteStore,
    mut each: impl FnMut(Vec<Record>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut after: Option<(String, u64)> = None;
    loop {
        let page = store.records_after(after.clone(), PAGE).await?;
        let done = (page.len() as u64) < PAGE;
        let last = page.last().map(|r| (r.stream_id.clone(), r.sequence));
        // A sequence no gateway writes (text, below 1) reads as 0, which would lead the next
        // page back over this one: the order stops there, named, rather than loop.
        if !done && last <= after {
            bail!(
                "the audit log cannot be read in order past {}: a record's sequence is not a \
                 number from 1 (tampered)",
                last.map_or_else(String::new, |(s, n)| format!("stream {s:?} sequence {n}"))
            );
        }
        after = last;
        if each(page)?.is_break() || done {
            return Ok(());
        }
    }
}

/// Checks `records` with `verifier`, stopping at the first that is wrong.
fn check_all(
    verifier: &mut Verifier,
    records: impl IntoIterator<Item = Record>,
) -> ControlFlow<()> {
    for record in records {
        if verifier.check(record).is_err() {
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}

/// Verifies the gateway's database a page at a time. The checkpoints are read first: a
/// gateway still appending then adds records after the heads they name, never before.
async fn verify_database(
    state_dir: &Path,
    pinned: Option<&aa_identity::PublicKey>,
    kept: &[Checkpoint],
) -> Result<Result<Verified, Tampered>> {
    let store = open(state_dir)?;
    let checkpoints = store.checkpoints().await?;
    let own = match pinned {
        Some(_) => None,
        None => Some(trusted_key(state_dir)?),
    };
    let trusted = pinned.or(own.as_ref());
    if let Err(cut) = holds_kept(&checkpoints, kept, trusted) {
        return Ok(Err(cut));
    }
    let mut verifier = Verifier::new(&checkpoints, trusted);
    for_each_page(&store, |page| Ok(check_all(&mut verifier, page))).await?;
    Ok(verifier.finish())
}

/// Whether the log's `checkpoints` hold every one kept outside it.
fn holds_kept(
    checkpoints: &[Checkpoint],
    kept: &[Checkpoint],
    trusted: Option<&aa_identity::PublicKey>,
) -> Result<(), Tampered> {
    kept.iter()
        .try_for_each(|k| aa_gateway::audit::check_kept(checkpoints, k, trusted))
}

/// The largest file read as a kept checkpoint: one holds a head per stream.
const MAX_CHECKPOINT_FILE: u64 = 16 << 20;

/// Reads a checkpoint kept outside the log: as `aasm audit checkpoint` prints it, or an
/// export's line (`{"checkpoint":…}`).
fn read_kept(path: &Path) -> Result<Checkpoint> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            MAX_CHECKPOINT_FILE + 1,
        ),
        &mut text,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_CHECKPOINT_FILE {
        bail!(
            "{}: longer than {} MiB, not a checkpoint",
            path.display(),
            MAX_CHECKPOINT_FILE >> 20
        );
    }
    serde_json::from_str::<CheckpointLine>(&text)
        .map(|line| line.checkpoint)
        .or_else(|_| serde_json::from_str::<Checkpoint>(&text))
        .with_context(|| {
            format!(
                "{}: not a checkpoint (as `aasm audit checkpoint` prints one)",
                path.display()
            )
        })
}

/// The key of the gateway whose state directory this is. Without it, checkpoints could only
/// be checked against the keys they name themselves, which whoever rewrote the log could
/// have signed with: verifying a database needs it, or `--gateway-did`.
fn trusted_key(state_dir: &Path) -> Result<aa_identity::PublicKey> {
    let path = state_dir.join("gateway.key");
    if !path.exists() {
        bail!(
            "no gateway key at {} to check the checkpoints against; pass the gateway's \
             --gateway-did (as its /health shows it)",
            path.display()
        );
    }
    let key = aa_identity::keyfile::load_or_create(&path)
        .with_context(|| format!("reading the gateway key {}", path.display()))?;
    Ok(key.public())
}

/// A record's line of an export as written, its event kept as text.
#[derive(serde::Deserialize)]
struct RecordLine<'a> {
    stream_id: String,
    sequence: u64,
    event_id: String,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
    prev_hash: String,
    hash: String,
}

#[derive(serde::Deserialize)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

/// A line of an export.
enum Line {
    Record(Record),
    Checkpoint(Checkpoint),
}

/// The longest line of an export read: a record holds one event, which the gateway caps far
/// below this; a longer line is refused rather than held whole in memory.
const MAX_LINE: u64 = 64 << 20;

/// Hands `each` every line of an export, read one at a time, until it breaks.
fn for_each_line(path: &Path, mut each: impl FnMut(Line) -> ControlFlow<()>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut bytes = Vec::new();
    for n in 1.. {
        bytes.clear();
        let read = std::io::Read::take(&mut reader, MAX_LINE + 1)
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        let at = || format!("{}:{n}", path.display());
        if bytes.len() as u64 > MAX_LINE {
            bail!("{}: a line longer than {} MiB", at(), MAX_LINE >> 20);
        }
        let line = std::str::from_utf8(&bytes).with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let read = match serde_json::from_str::<RecordLine<'_>>(line) {
            Ok(record) => Ok(record),
            Err(error) => match serde_json::from_str::<CheckpointLine>(line) {
                Ok(line) => Err(line.checkpoint),
                Err(_) => return Err(error).with_context(at),
            },
        };
        let line = match read {
            Err(checkpoint) => Line::Checkpoint(checkpoint),
            Ok(r) => Line::Record(Record {
                stream_id: r.stream_id,
                sequence: r.sequence,
                event_id: r.event_id,
                // Checked as written, not as parsed: see `stored_event`.
                event: aa_gateway::audit::stored_event(r.event.get()),
                prev_hash: r.prev_hash,
                hash: r.hash,
            }),
        };
        if each(line).is_break() {
            break;
        }
    }
    Ok(())
}

/// Verifies an export in two readings, the checkpoints (at its end) first, so that the
/// records are checked as they are read rather than held. What can be read only once (a pipe,
/// `/dev/stdin`) is read once, its records held until its checkpoints are known.
fn verify_export(
    path: &Path,
    pinned: Option<&aa_identity::PublicKey>,
    kept: &[Checkpoint],
) -> Result<Result<Verified, Tampered>> {
    let rereadable = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    let mut checkpoints = Vec::new();
    let mut held = Vec::new();
    for_each_line(path, |line| {
        match line {
            Line::Checkpoint(c) => checkpoints.push(c),
            Line::Record(record) if !rereadable => held.push(record),
            Line::Record(_) => {}
        }
        ControlFlow::Continue(())
    })?;
    if let Err(cut) = holds_kept(&checkpoints, kept, pinned) {
        return Ok(Err(cut));
    }
    let mut verifier = Verifier::new(&checkpoints, pinned);
    if rereadable {
        for_each_line(path, |line| match line {
            Line::Record(record) => check_all(&mut verifier, [record]),
            Line::Checkpoint(_) => ControlFlow::Continue(()),
        })?;
    } else {
        let _ = check_all(&mut verifier, held);
    }
    Ok(verifier.finish())
}

pub(crate) fn audit(command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            source,
            export,
            gateway_did,
            kept,
        } => {
            let pinned = gateway_did.as_deref();
            let kept = kept
                .iter()
                .map(|path| read_kept(path))
                .collect::<Result<Vec<_>>>()?;
            let verified = match export {
                Some(file) => verify_export(&file, pinned, &kept)?,
                None => crate::block_on(verify_database(&source.state_dir, pinned, &kept))?,
            };
            // Pinned, the log must be signed by that gateway: deleting every checkpoint and
            // rewriting the chains would otherwise pass. Unpinned, a log not signed yet (a
            // gateway signs every few seconds) is reported as such.
            let verified = verified.and_then(|v| match pinned {
                Some(key) if v.checkpoints == 0 => Err(Tampered(format!(
                    "no checkpoint signed by {}: nothing shows that gateway wrote this log",
                    key.did()
                ))),
                _ => Ok(v),
            });
            match verified {
                Ok(v) => {
                    out!(
                        "ok: {} records in {} streams, {} checkpoints verified; {} records \
                         after the last checkpoint, chained but not yet signed",
                        v.records,
                        v.streams,
                        v.checkpoints,
                        v.unsigned
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(tampered) => {
                    out!("TAMPERED: {}", tampered.0);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Digest {
            state_dir,
            gateway_token_file,
        } => {
            let token = aa_cli::up::runtime_token(&state_dir, gateway_token_file.as_deref())?;
            let mut value = Vec::new();
            std::io::stdin()
                .read_to_end(&mut value)
                .context("reading the value from stdin")?;
            let value = value
                .strip_suffix(b"\n")
                .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
                .unwrap_or(&value);
            if value.is_empty() {
                bail!("no value on stdin: pipe in the secret to look up");
            }
            let key = aa_security::ReceiptKey::derive(token.as_bytes());
            out!("{}", key.digest(value));
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Quarantine(args) => {
            let path = args.state_dir.join(aa_runtime::config::DATABASE_FILE);
            if !path.exists() {
                bail!(
                    "no runtime database at {} (is this the state directory of `aasm up` or \
                     `aasm runtime`?)",
                    path.display()
                );
            }
            let set_aside = aa_runtime::outbox::read_quarantine(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            for entry in set_aside {
                let mut line = serde_json::json!({
                    "sequence": entry.sequence,
                    "reason": entry.reason,
                    "quarantined_at_ms": entry.quarantined_at_ms,
                });
                match entry.event {
                    Ok(event) => line["event"] = serde_json::to_value(event)?,
                    Err(why) => line["unreadable"] = why.into(),
                }
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { source } => crate::block_on(async {
            let store = open(&source.state_dir)?;
            // Read before the records, as verify reads them: a gateway still appending then
            // adds records after the heads they name, so the export never looks truncated.
            let checkpoints = store.checkpoints().await?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            // Written as read: an export never holds more than a page of the log.
            for_each_page(&store, |page| {
                for record in page {
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                }
                Ok(ControlFlow::Continue(()))
            })
            .await?;
            for checkpoint in checkpoints {
                writeln!(out, "{}", serde_json::json!({ "checkpoint": checkpoint }))?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }),
        AuditCommand::Checkpoint { source } => crate::block_on(async {
            let store = open(&source.state_dir)?;
            let Some(newest) = store.checkpoints().await?.pop() else {
                bail!(
                    "no checkpoint signed yet in {} (a running gateway signs one every few \
                     seconds after new records, and one as it stops)",
                    gateway_database(&source.state_dir).display()
                );
            };
            out!("{}", serde_json::json!({ "checkpoint": newest }));
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
