//! `aasm policy validate | eval | test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aa_core::{Action, AgentContext};
use aa_policy::{Diagnostic, Policy, PolicyError, PolicySet, Request, TestSuite};
use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;

use aa_cli::files::{is_test_file, read_text, yaml_files};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check policy and policy-test files; prints `file:line:col: message` per problem.
    Validate {
        /// Files or folders (searched recursively for *.yaml / *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Decide one action and print the verdict as JSON.
    Eval {
        /// Policy files or folders; every policy whose scope covers the agent applies.
        #[arg(long, required = true)]
        policy: Vec<PathBuf>,
        /// The agent as JSON, e.g. '{"id":"bot","team":"support","depth":1}'.
        #[arg(long)]
        agent: Option<String>,
        /// The action as JSON, e.g. '{"type":"tool_call","tool":"shell","args":{"command":"ls"}}'.
        #[arg(long)]
        action: String,
        /// The time to decide at (RFC 3339); defaults to now.
        #[arg(long)]
        now: Option<String>,
    },
    /// Run policy test files (`*.test.yaml`) and report failures.
    Test {
        /// Test files, or folders holding them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The time for cases that fix none (RFC 3339); defaults to now.
        #[arg(long)]
        now: Option<String>,
    },
}

pub(crate) fn run(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Validate { paths } => validate(&paths),
        PolicyCommand::Eval {
            policy,
            agent,
            action,
            now,
        } => eval(&policy, agent.as_deref(), &action, now.as_deref()),
        PolicyCommand::Test { paths, now } => test(&paths, now.as_deref()),
    }
}

fn validate(paths: &[PathBuf]) -> Result<ExitCode> {
    let files = yaml_files(paths)?;
    if files.is_empty() {
        bail!("no .yaml or .yml files under {}", display_all(paths));
    }
    let (mut policies, mut suites, mut problems) = (0, 0, 0);
    for file in &files {
        let text = match read_text(file) {
            Ok(text) => text,
            Err(e) => {
                out!("{e:#}");
                problems += 1;
                continue;
            }
        };
        let result = if is_test_file(file) {
            TestSuite::parse(&text).map(|_| suites += 1)
        } else {
            Policy::parse(&text).map(|p| policies += p.len())
        };
        if let Err(err) = result {
            for d in err.diagnostics() {
                out!("{}", located(file, d));
                problems += 1;
            }
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) in {} file(s)", files.len());
        return Ok(ExitCode::from(1));
    }
    eprintln!(
        "ok: {policies} policies and {suites} test files in {} file(s)",
        files.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn eval(
    policy_paths: &[PathBuf],
    agent: Option<&str>,
    action: &str,
    now: Option<&str>,
) -> Result<ExitCode> {
    let set = load_set(policy_paths)?;
    let agent = match agent {
        Some(json) => AgentContext::from_json(json).context("--agent")?,
        None => AgentContext::new("anonymous"),
    };
    let action = Action::from_json(action).context("--action")?;
    let now = parse_now(now)?;
    let verdict = set.evaluate(&Request {
        agent: &agent,
        action: &action,
        now,
    });
    out!("{}", serde_json::to_string(&verdict)?);
    Ok(ExitCode::SUCCESS)
}

fn test(paths: &[PathBuf], now: Option<&str>) -> Result<ExitCode> {
    let now = parse_now(now)?;
    // Test files as named, and for each policy file the test file next to it.
    let mut files: Vec<PathBuf> = Vec::new();
    for file in yaml_files(paths)? {
        let candidate = if is_test_file(&file) {
            Some(file)
        } else {
            sibling_test_file(&file)
        };
        if let Some(c) = candidate.filter(|c| !files.contains(c)) {
            files.push(c);
        }
    }
    if files.is_empty() {
        bail!("no *.test.yaml files under {}", display_all(paths));
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let suite = TestSuite::parse(&read_text(file)?).map_err(|e| located_error(file, &e))?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let policy_paths: Vec<PathBuf> = suite.policies.iter().map(|p| dir.join(p)).collect();
        let set =
            load_set(&policy_paths).with_context(|| format!("policies of {}", file.display()))?;
        let (ok, failures) = suite.run(&set, now);
        passed += ok;
        for f in &failures {
            let v = &f.actual;
            out!(
                "{}:{}:{}: FAIL {}: {} (got {} by {} of {}: {})",
                file.display(),
                f.loc.line,
                f.loc.col,
                f.case,
                f.problems.join("; "),
                v.decision,
                v.rule,
                v.policy,
                v.reason
            );
        }
        failed += failures.len();
    }
    out!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Loads every policy under `paths` (test files skipped) into one cascade.
fn load_set(paths: &[PathBuf]) -> Result<PolicySet> {
    let mut policies = Vec::new();
    for file in yaml_files(paths)?.iter().filter(|f| !is_test_file(f)) {
        let parsed = Policy::parse(&read_text(file)?).map_err(|e| located_error(file, &e))?;
        policies.extend(parsed);
    }
    if policies.is_empty() {
        bail!("no policy found in {}", display_all(paths));
    }
    Ok(PolicySet::new(policies))
}

/// `x.yaml` → `x.test.yaml` (or `.test.yml`), when it exists.
fn sibling_test_file(policy: &Path) -> Option<PathBuf> {
    let stem = policy.file_stem()?.to_str()?;
    ["test.yaml", "test.yml"]
        .iter()
        .map(|ext| policy.with_file_name(format!("{stem}.{ext}")))
        .find(|candidate| candidate.is_file())
}

fn parse_now(now: Option<&str>) -> Result<DateTime<Utc>> {
    match now {
        None => Ok(Utc::now()),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .with_context(|| format!("--now: \"{text}\" is not an RFC 3339 time")),
    }
}

fn located(file: &Path, d: &Diagnostic) -> String {
    format!("{}:{d}", file.display())
}

/// The first problem, located, and how many more there are: one line for exit-2 errors.
fn located_error(file: &Path, err: &PolicyError) -> anyhow::Error {
    let diagnostics = err.diagnostics();
    let first = diagnostics.first().map_or_else(
        || format!("{}: invalid", file.display()),
        |d| located(file, d),
    );
    match diagnostics.len() {
        0 | 1 => anyhow!(first),
        n => anyhow!("{first} (and {} more; run `aasm policy validate`)", n - 1),
    }
}

fn display_all(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
