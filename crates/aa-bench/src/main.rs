//! `aa-bench`: the load generator. See the crate docs and BENCHMARKS.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aa_bench::checks::{self, CheckLoad, CheckReport};
use aa_bench::cpu::ProcessUse;
use aa_bench::events::{self, EventLoad};
use aa_bench::floor::{self, FloorLoad};
use aa_bench::soak::{self, SoakLoad};
use aa_bench::stack::{self, Memory, Stack};
use aa_bench::stats::{Percentiles, micros};
use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

/// Load against real `aasm gateway` and `aasm runtime` processes, through aa-sdk-client.
#[derive(Debug, Parser)]
#[command(name = "aa-bench", version)]
struct Cli {
    /// The aasm binary (default: beside this one, else on PATH).
    #[arg(long, global = true)]
    aasm: Option<PathBuf>,
    #[command(subcommand)]
    load: Load,
}

#[derive(Debug, Subcommand)]
enum Load {
    /// Checks at a fixed rate: latency percentiles, throughput, runtime memory.
    Checks(CheckArgs),
    /// The check load's schedule against an echo server over a Unix socket, no aasm: the
    /// latency the machine itself adds, the baseline checks are read against.
    Floor(PaceArgs),
    /// Events as fast as they are taken: rates to the runtime's outbox and the gateway's store.
    Events(EventArgs),
    /// Checks one at a time from one client against a runtime already running (no services
    /// are started): the baseline for an SDK's own latency.
    Serial(SerialArgs),
    /// Pending checks approved over the HTTP API one at a time: the time from the approval
    /// to the waiting call's answer.
    Approvals {
        /// Approvals measured.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Approvals first, unmeasured.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// Checks and events together at fixed rates for minutes: latency, failures, the
    /// gateway's backlog, memory and descriptors at every interval; then every event is
    /// counted in the gateway's store. Exits 1 on any error, loss or growth.
    Soak(SoakArgs),
    /// Both, each on a fresh gateway and runtime.
    All {
        #[command(flatten)]
        checks: CheckArgs,
        #[command(flatten)]
        events: EventArgs,
    },
}

#[derive(Debug, Args)]
struct PaceArgs {
    /// Concurrent clients, each with its own connection (and agent).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Requests per second, all clients together.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of unmeasured load first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    pace: PaceArgs,
    /// Seconds the runtime sits idle before its memory is read.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
}

#[derive(Debug, Args)]
struct SerialArgs {
    /// The runtime's socket.
    #[arg(long)]
    socket: PathBuf,
    /// Where the client keeps its agent's key.
    #[arg(long)]
    state_dir: PathBuf,
    /// The agent to register and check as.
    #[arg(long, default_value = "serial-bench")]
    agent: String,
    /// Checks measured.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Checks first, unmeasured.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Check calls to this model (1000 tokens each) instead of a file read: with a budget
    /// in the policy, each one reserves its cost at the gateway.
    #[arg(long)]
    model: Option<String>,
    /// Print the percentiles as one JSON object (microseconds) instead of a line of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EventArgs {
    /// Concurrent reporting clients.
    #[arg(long, default_value_t = 4)]
    event_clients: usize,
    /// Events per report call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Report calls each client keeps in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Events in all.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Checks per second, all checking clients together.
    #[arg(long, default_value_t = 5_000.0)]
    check_rate: f64,
    /// Events per second, all reporting clients together.
    #[arg(long, default_value_t = 5_000.0)]
    event_rate: f64,
    /// Checking clients, each with its own connection and agent.
    #[arg(long, default_value_t = 4)]
    check_clients: usize,
    /// Reporting clients, each with its own connection and agent.
    #[arg(long, default_value_t = 2)]
    event_clients: usize,
    /// Events per report call.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Report calls each reporting client keeps in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 300.0)]
    seconds: f64,
    /// Seconds of load first, shown but not judged.
    #[arg(long, default_value_t = 30.0)]
    warmup: f64,
    /// Seconds between readings.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} {s} is not a duration"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_latency(label: &str, p: Option<Percentiles>) {
    match p {
        Some(p) => println!("  {label:<23} {p}"),
        None => println!("  {label:<23} (none)"),
    }
}

fn print_memory(label: &str, m: Memory) {
    println!("  {label:<23} rss {}  peak {}", mib(m.rss), mib(m.peak));
}

fn run_checks(aasm: &std::path::Path, args: &CheckArgs) -> Result<bool> {
    let pace = &args.pace;
    let stack = Stack::start(aasm)?;
    let idle = seconds(args.idle, "idle")?;
    std::thread::sleep(idle);
    let before = stack.runtime_memory()?;
    let load = CheckLoad {
        socket: stack.socket.clone(),
        state_dir: stack.client_state_dir(),
        clients: pace.clients,
        rate: pace.rate,
        duration: seconds(pace.seconds, "seconds")?,
        warmup: seconds(pace.warmup, "warmup")?,
        action: CheckLoad::default_action(),
        processes: stack.processes(),
    };
    let report = checks::run(&load)?;
    std::thread::sleep(idle);
    let after = stack.runtime_memory()?;
    stack.stop()?;
    print_paced("checks", pace, &report);
    print_memory("runtime idle, fresh", before);
    print_memory("runtime idle, after", after);
    Ok(report.failed == 0 && report.allowed == report.answered)
}

fn run_floor(args: &PaceArgs) -> Result<bool> {
    let report = floor::run(&FloorLoad {
        clients: args.clients,
        rate: args.rate,
        duration: seconds(args.seconds, "seconds")?,
        warmup: seconds(args.warmup, "warmup")?,
    })?;
    print_paced(
        &format!(
            "floor (echo of {} bytes to {}, no aasm)",
            floor::REQUEST_BYTES,
            floor::ANSWER_BYTES
        ),
        args,
        &report,
    );
    Ok(report.failed == 0)
}

fn print_paced(what: &str, pace: &PaceArgs, report: &CheckReport) {
    println!(
        "{what}: {} clients, {:.0}/s offered for {} s after {} s warm-up",
        pace.clients, pace.rate, pace.seconds, pace.warmup
    );
    println!(
        "  sent {}  answered {}  allowed {}  failed {}  throughput {:.0}/s",
        report.sent, report.answered, report.allowed, report.failed, report.throughput
    );
    print_latency("latency", report.latency);
    print_latency("send lateness", report.lateness);
    print_latency("from schedule", report.from_schedule);
    match report.machine {
        Some(share) => println!("  {:<23} {share}", "processors"),
        None => println!("  {:<23} (no /proc/stat)", "processors"),
    }
    for (name, per_answer) in report.cpu_per_answer() {
        println!("  {:<23} {per_answer}", format!("{name} CPU per answer"));
    }
}

fn run_serial(args: &SerialArgs) -> Result<bool> {
    let action = match &args.model {
        Some(model) => aa_core::Action::LlmCall {
            model: model.clone(),
            token_estimate: Some(1000),
        },
        None => checks::CheckLoad::default_action(),
    };
    let p = checks::serial(
        &args.socket,
        &args.state_dir,
        &args.agent,
        &action,
        args.count,
        args.warmup,
    )?;
    if args.json {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{}",
            serde_json::json!({
                "count": p.count, "p50_us": us(p.p50), "p90_us": us(p.p90),
                "p99_us": us(p.p99), "p999_us": us(p.p999), "max_us": us(p.max),
            })
        );
    } else {
        print_latency("serial checks", Some(p));
    }
    Ok(true)
}

fn run_approvals(aasm: &std::path::Path, count: usize, warmup: usize) -> Result<bool> {
    let stack = Stack::start(aasm)?;
    let latency = aa_bench::approvals::run(&stack, count, warmup)?;
    stack.stop()?;
    println!("approvals: {count} approved over HTTP, one at a time");
    print_latency("approval to release", Some(latency));
    Ok(true)
}

fn run_events(aasm: &std::path::Path, args: &EventArgs) -> Result<bool> {
    let stack = Stack::start(aasm)?;
    let load = EventLoad {
        socket: stack.socket.clone(),
        state_dir: stack.client_state_dir(),
        clients: args.event_clients,
        batch: args.batch,
        in_flight: args.in_flight,
        events: args.events,
    };
    let before = ProcessUse::read(&stack.processes());
    let report = events::run(&load, || stack.events_stored())?;
    let cpu = before.until(&ProcessUse::read(&stack.processes()));
    let memory = stack.runtime_memory()?;
    stack.stop()?;
    println!(
        "events: {} clients, batches of {}, {} in flight each, {} events",
        args.event_clients, args.batch, args.in_flight, report.events
    );
    println!(
        "  on disk at the runtime   {:.0}/s  ({:.2} s)",
        report.acknowledged_rate(),
        report.acknowledged_in.as_secs_f64()
    );
    println!(
        "  stored by the gateway    {:.0}/s  ({:.2} s)",
        report.stored_rate(),
        report.stored_in.as_secs_f64()
    );
    print_latency("report call", report.batch_latency);
    for (name, used) in cpu {
        println!(
            "  {:<23} {}",
            format!("{name} CPU per event"),
            used.per(report.events)
        );
    }
    print_memory("runtime after", memory);
    Ok(true)
}

fn run_soak(aasm: &std::path::Path, args: &SoakArgs) -> Result<bool> {
    let load = SoakLoad {
        check_clients: args.check_clients,
        check_rate: args.check_rate,
        event_clients: args.event_clients,
        event_rate: args.event_rate,
        batch: args.batch,
        in_flight: args.in_flight,
        duration: seconds(args.seconds, "seconds")?,
        warmup: seconds(args.warmup, "warmup")?,
        interval: seconds(args.interval, "interval")?,
    };
    let stack = Stack::start(aasm)?;
    println!(
        "soak: {:.0} checks/s from {} clients and {:.0} events/s from {} clients (calls of {}), \
         {} s after {} s of warm-up",
        args.check_rate,
        args.check_clients,
        args.event_rate,
        args.event_clients,
        args.batch,
        args.seconds,
        args.warmup
    );
    println!(
        "{:>7} {:>8} {:>9} {:>9} {:>9} {:>5} {:>8} {:>5} {:>8} {:>10} {:>5} {:>10} {:>5}",
        "time",
        "checks/s",
        "p50",
        "p99",
        "max",
        "fail",
        "events/s",
        "fail",
        "backlog",
        "runtime",
        "fds",
        "gateway",
        "fds"
    );
    let report = soak::run(&stack, &load, |w| {
        let span = load.interval.as_secs_f64();
        let (p50, p99, max) = w.latency.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |p| (micros(p.p50), micros(p.p99), micros(p.max)),
        );
        println!(
            "{:>6.0}s{} {:>8.0} {p50:>9} {p99:>9} {max:>9} {:>5} {:>8.0} {:>5} {:>8} {:>10} {:>5} {:>10} {:>5}",
            w.end.as_secs_f64(),
            if w.measured { ' ' } else { 'w' },
            w.checks as f64 / span,
            w.check_failures,
            w.events as f64 / span,
            w.event_failures,
            w.backlog,
            soak::mib(w.runtime.rss),
            w.runtime.fds,
            soak::mib(w.gateway.rss),
            w.gateway.fds,
        );
    })?;
    stack.stop()?;
    print_latency("checks, first half", report.halves[0]);
    print_latency("checks, second half", report.halves[1]);
    println!(
        "  drained in {:.1} s: the gateway stored {} of {} events recorded",
        report.drained_in.as_secs_f64(),
        report.stored,
        report.expected
    );
    let problems = report.problems();
    for problem in &problems {
        println!("  PROBLEM: {problem}");
    }
    if problems.is_empty() {
        println!("  no errors, no loss, no growth");
    }
    Ok(problems.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let aasm = cli.aasm.unwrap_or_else(stack::default_aasm);
    let outcome = match &cli.load {
        Load::Checks(args) => run_checks(&aasm, args),
        Load::Floor(args) => run_floor(args),
        Load::Events(args) => run_events(&aasm, args),
        Load::Serial(args) => run_serial(args),
        Load::Soak(args) => run_soak(&aasm, args),
        Load::Approvals { count, warmup } => run_approvals(&aasm, *count, *warmup),
        Load::All { checks, events } => {
            run_checks(&aasm, checks).and_then(|ok| Ok(run_events(&aasm, events)? && ok))
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("aa-bench: the load found problems (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("aa-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn all_takes_both_loads_options() {
        let cli =
            Cli::try_parse_from(["aa-bench", "all", "--clients", "8", "--event-clients", "2"]);
        let Ok(Cli {
            load: Load::All { checks, events },
            ..
        }) = cli
        else {
            unreachable!("{cli:?}");
        };
        assert_eq!((checks.pace.clients, events.event_clients), (8, 2));
    }
}
