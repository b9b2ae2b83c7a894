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
    // An input that cannot be read is named on stderr and the rest are still scanned; the
    // exit code then says the scan was incomplete.
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for input in &inputs {
        for file in expand(input, !args.no_ignore, &mut failed) {
            let bytes = match read_input(&file.path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    report(&e, &mut failed);
                    continue;
                }
            };
            // Only what a folder's walk turned up is skipped as binary: an input named
            // outright is scanned whatever it holds.
            if file.found_in_folder && is_binary(&bytes) {
                continue;
            }
            let findings = scanner.scan_bytes(&bytes);
            found_any |= !findings.is_empty();
            let path = shown_path(&scanner, &file.path);
            let mut lines = LineIndex::new(&bytes);
            for f in findings {
                writeln!(out, "{}", finding_json(&path, &mut lines, &bytes, &f))
                    .context("cannot write to stdout")?;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        exit(found_any)
    })
}

/// Names an input that could not be read, on stderr, as `main` prints errors.
fn report(error: &anyhow::Error, failed: &mut bool) {
    crate::print_error(error);
    *failed = true;
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

/// A file to scan, and whether a folder's walk found it (rather than its being named).
struct Input {
    path: PathBuf,
    found_in_folder: bool,
}

/// A file as given, or every file under a folder (with `honour_ignores`, those that
/// .gitignore and .ignore do not exclude; hidden files such as `.env` included; `.git`
/// skipped). What the walk cannot enter is reported and passed over.
fn expand(input: &Path, honour_ignores: bool, failed: &mut bool) -> Vec<Input> {
    if input == Path::new("-") || !input.is_dir() {
        return vec![Input {
            path: input.to_path_buf(),
            found_in_folder: false,
        }];
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
        match entry {
            Ok(entry) if entry.file_type().is_some_and(|t| t.is_file()) => {
                files.push(Input {
                    path: entry.into_path(),
                    found_in_folder: true,
                });
            }
            Ok(_) => {}
            Err(e) => report(
                &anyhow::Error::new(e).context(format!("cannot walk {}", input.display())),
                failed,
            ),
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
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
    path: &'a str,
    line: usize,
    col: usize,
    kind: &'a str,
    rule: &'a str,
    start: usize,
    end: usize,
}

/// A path as findings name it: a file's name can hold a secret too (`ghp_….env`), so it is
/// redacted.
fn shown_path(scanner: &Scanner, path: &Path) -> String {
    scanner.redact(&path.display().to_string()).text
}

fn finding_json(path: &str, lines: &mut LineIndex, bytes: &[u8], f: &Finding) -> String {
    let (line, col) = lines.locate(bytes, f.start);
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
