//! `aasm`, the Agent Assembly command line. Argument parsing and IO live here; the logic lives
//! in the library crates.

/// A line on stdout, in a function returning `anyhow::Result`: a stdout that is closed or
/// full is an error the command returns (exit 2), where `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_line(&format!($($arg)*))?
    };
}

/// [`out!`] for text holding what agents supplied (ids, names, reasons quoting their
/// commands): control characters, which a terminal would act on, are shown escaped.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_line(&$crate::terminal_safe(&format!($($arg)*)))?
    };
}

mod agents;
mod api;
mod approvals;
mod audit;
mod budget;
mod check;
mod policy;
mod scan;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Agent Assembly: a governance runtime for AI agents.
#[derive(Debug, Parser)]
#[command(name = "aasm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Author and check policies: validate, evaluate, test.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Find credentials and personal data in files, folders or stdin (JSON lines); exit 1 when
    /// something is found.
    Scan(scan::ScanArgs),
    /// Run the gateway and a runtime in one process (embedded SQLite), until SIGINT/SIGTERM.
    Up(serve::UpArgs),
    /// Run the gateway alone.
    Gateway(serve::GatewayArgs),
    /// Run a runtime linked to a gateway.
    Runtime(serve::RuntimeArgs),
    /// Register as an agent through the runtime socket and print one decision as JSON.
    Check(check::CheckArgs),
    /// Verify, export or follow the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The agent registry and the kill switch: list, show, suspend, resume (through the
    /// gateway).
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Who spawned, delegated to or called whom.
    #[command(subcommand)]
    Topology(agents::TopologyCommand),
    /// Decide pending actions: list, show, approve, deny (through the gateway).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// LLM spend against budgets, by team or agent (through the gateway).
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
}

/// Runs an async command on a one-thread runtime.
pub(crate) fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(work)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version
            return match err.print() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write to stdout: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Err(err) => {
            // One line, as for every other usage error; `--help` has the rest.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {} (see `aasm --help`)", printable(first));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Policy(command) => policy::run(command),
        Command::Scan(args) => scan::run(args),
        Command::Up(args) => serve::up(args),
        Command::Gateway(args) => serve::gateway(args),
        Command::Runtime(args) => serve::runtime(args),
        Command::Check(args) => check::run(args),
        Command::Audit(command) => audit::audit(command),
        Command::Agents(command) => agents::agents(command),
        Command::Topology(command) => agents::topology(command),
        Command::Approvals(command) => approvals::run(command),
        Command::Budget(command) => budget::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            print_error(&err);
            ExitCode::from(2)
        }
    }
}

/// An error on stderr, on one line: the chain of causes, outermost first.
fn print_error(err: &anyhow::Error) {
    eprintln!("error: {}", printable(&format!("{err:#}")));
}

/// Writes one line to stdout (see [`out!`]).
fn write_line(text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{text}").context("cannot write to stdout")
}

/// `text` with every control character but a tab written as its `\u{..}` escape.
fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

/// An error as printed: on one line, with what the scanner finds in it redacted. An error
/// may quote the input it could not read (serde quotes a value of the wrong type), and input
/// is where secrets are.
fn printable(text: &str) -> String {
    let line = text.replace('\n', " ");
    match aa_security::Scanner::new() {
        Ok(scanner) => scanner.redact(&line).text,
        Err(_) => line,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_reach_the_terminal_escaped() {
        assert_eq!(super::terminal_safe("bot\tteam ü"), "bot\tteam ü");
        assert_eq!(
            super::terminal_safe("x\u{1b}]0;pwned\u{7}\nfake line"),
            "x\\u{1b}]0;pwned\\u{7}\\u{a}fake line"
        );
        assert_eq!(super::terminal_safe("a\u{9b}b"), "a\\u{9b}b");
    }
}
