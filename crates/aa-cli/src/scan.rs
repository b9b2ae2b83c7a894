//! `aasm scan`: find credentials and personal data in files, folders or stdin.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aa_policy::{Policy, PolicySet};
use aa_security::{Finding, Scanner};
use anyhow::{Context, Result, bail};
use clap::Args;

use aa_cli::files::read_text;

#[derive(Debug, Args)]
pub(crate) struct ScanArgs {
    /// Files, folders (searched recursively, honouring .gitignore) or `-` for stdin; none means stdin.
    paths: Vec<PathBuf>,
    /// Write the input with every finding replaced by `[REDACTED:<kind>]` to stdout.
    #[arg(long)]
    redact: bool,
    /// Also scan for the custom patterns (`spec.data.patterns`) of these policy files.
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// Scan what .gitignore and .ignore exclude too (a `.env` file is usually ignored).
    #[arg(long)]
    no_ignore: bool,
}

/// Exit 0 when nothing is found, 1 when something is, 2 on error.
pub(crate) fn run(args: ScanArgs) -> Result<ExitCode> {
    let scanner = build_scanner(&args.policy)?;
    let inputs = if args.paths.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.paths
    };
    if args.redact {
        let [input] = inputs.as_slice() else {
            bail!(
                "--redact takes one input (a file or -), got {}",
                inputs.len()
            );
        };
        let bytes = read_input(input)?;
        let redacted = scanner.redact_bytes(&bytes);
        std::io::stdout()
            .write_all(&redacted.bytes)
            .context("cannot write to stdout")?;
        return Ok(exit(!redacted.receipts.is_empty()));
    }
    let mut found_any = false;
    let mut out = std::io::stdout().lock();
    for input in &inputs {
        for file in expand(input, !args.no_ignore)? {
            let bytes = read_input(&file)?;
            if is_binary(&bytes) {
                continue;
            }
            let findings = scanner.scan_bytes(&bytes);
            found_any |= !findings.is_empty();
            let mut lines = LineIndex::new(&bytes);
            for f in findings {
                writeln!(out, "{}", finding_json(&file, &mut lines, &bytes, &f))
                    .context("cannot write to stdout")?;
            }
        }
    }
    Ok(exit(found_any))
}

fn exit(found: bool) -> ExitCode {
    if found {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn build_scanner(paths: &[PathBuf]) -> Result<Scanner> {
    let mut policies = Vec::new();
    for path in paths {
        let parsed = Policy::parse(&read_text(path)?).map_err(|e| {
            let first = e
                .diagnostics()
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            anyhow::anyhow!("{}:{first}", path.display())
        })?;
        policies.extend(parsed);
    }
    Ok(Scanner::with_patterns(
        &PolicySet::new(policies).patterns(),
    )?)
}

/// A file as given, or every file under a folder (with `honour_ignores`, those that
/// .gitignore and .ignore do not exclude; hidden files such as `.env` included; `.git`
/// skipped).
fn expand(input: &Path, honour_ignores: bool) -> Result<Vec<PathBuf>> {
    if input == Path::new("-") || !input.is_dir() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files = Vec::new();
    let walker = ignore::WalkBuilder::new(input)
        .hidden(false)
        .ignore(honour_ignores)
        .git_ignore(honour_ignores)
        .git_global(honour_ignores)
        .git_exclude(honour_ignores)
        .parents(honour_ignores)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for entry in walker {
        let entry = entry.with_context(|| format!("cannot walk {}", input.display()))?;
        if entry.file_type().is_some_and(|t| t.is_file()) {
            files.push(entry.into_path());
        }
    }
    files.sort();
    Ok(files)
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Files with a NUL byte early on are binary; secret scanners skip them.
fn is_binary(bytes: &[u8]) -> bool {
    bytes
        .get(..bytes.len().min(8192))
        .unwrap_or_default()
        .contains(&0)
}

/// Turns byte offsets into 1-based line and column (in characters). Offsets come in increasing
/// order, so each column is counted from the previous one on the same line: linear overall,
/// even for one huge line with many findings.
struct LineIndex {
    starts: Vec<usize>,
    last: Option<(usize, usize, usize)>,
}

impl LineIndex {
    fn new(bytes: &[u8]) -> Self {
        let starts = std::iter::once(0)
            .chain(
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        LineIndex { starts, last: None }
    }

    fn locate(&mut self, bytes: &[u8], offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|s| *s <= offset);
        let line_start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let (from, col_before) = match self.last {
            Some((l, at, col)) if l == line && at <= offset => (at, col),
            _ => (line_start, 1),
        };
        let col = col_before
            + String::from_utf8_lossy(bytes.get(from..offset).unwrap_or_default())
                .chars()
                .count();
        self.last = Some((line, offset, col));
        (line, col)
    }
}

/// One line of output; fields in the documented order. Never the secret itself.
#[derive(Debug, serde::Serialize)]
struct Line<'a> {
    path: String,
    line: usize,
    col: usize,
    kind: &'a str,
    rule: &'a str,
    start: usize,
    end: usize,
}

fn finding_json(path: &Path, lines: &mut LineIndex, bytes: &[u8], f: &Finding) -> String {
    let (line, col) = lines.locate(bytes, f.start);
    let path = if path == Path::new("-") {
        "-".to_owned()
    } else {
        path.display().to_string()
    };
    let out = Line {
        path,
        line,
        col,
        kind: &f.kind,
        rule: &f.rule_id,
        start: f.start,
        end: f.end,
    };
    serde_json::to_string(&out).unwrap_or_default()
}
