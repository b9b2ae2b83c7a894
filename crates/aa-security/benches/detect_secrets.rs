//! The scanner against `detect-secrets` (PyPI, the common Python scanner) on one corpus, run by
//! `cargo bench -p aa-security` beside the criterion benchmarks (alone: `--bench
//! detect_secrets`).
//!
//! Both scan the same generated text: 1 MiB clean (prose, code, logs with decoys) and 1 MiB
//! with a secret planted about every 200 bytes. Ours is the library, the scanner built once,
//! median of several scans. detect-secrets is its command line (installed once into a
//! virtualenv under the target directory), median wall time of several runs, given with and
//! without its start-up (the median run on an empty file). Recall is the share of planted
//! secrets reported: ours by byte span, detect-secrets by line (it reports lines only);
//! personal data is counted apart, as detect-secrets does not look for it. It runs with
//! `--no-verify`: otherwise it calls providers' APIs to check what it finds, which measures
//! network time-outs, not scanning. Run as a test (`cargo test --benches`, as CI does) it checks
//! only that the library finds every planted secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aa_security::Scanner;
use aa_testkit::corpus::{self, Planted};

const BYTES: usize = 1 << 20;
const OUR_RUNS: usize = 9;
const THEIR_RUNS: usize = 3;
const NAME: &str = "detect_secrets";

fn main() {
    // `cargo bench` passes `--bench` and any filter; `cargo test --benches` neither. A
    // filter naming another benchmark leaves this one out, as criterion does.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if filters.iter().any(|f| !NAME.contains(f.as_str())) {
        return;
    }
    let clean = corpus::clean_text(1, BYTES);
    let (dense, planted) = corpus::dense_text(2, BYTES, 200);
    let scanner = Scanner::new().unwrap();
    if !args.iter().any(|a| a == "--bench") {
        // A test run checks what needs neither the network nor minutes: our recall.
        let spans = spans(&scanner.scan(&dense));
        let missed = planted.iter().filter(|p| !covered(&spans, p)).count();
        assert_eq!(missed, 0, "planted secrets missed by aa-security");
        println!(
            "detect_secrets: all {} planted secrets found; the comparison with detect-secrets \
             (installed from PyPI, then timed) runs under `cargo bench`",
            planted.len()
        );
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("detect-secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        ("clean", &clean),
        ("dense", &dense),
        ("empty", &String::new()),
    ]
    .map(|(name, text)| {
        let path = dir.join(format!("{name}.txt"));
        std::fs::write(&path, text).unwrap();
        path
    });
    let tool = install(&dir);

    let ours = |text: &str| median(OUR_RUNS, || scanner.scan(std::hint::black_box(text)));
    let (our_clean, _) = ours(&clean);
    let (our_dense, findings) = ours(&dense);
    let our_spans = spans(&findings);

    // From the corpus directory: inside a git checkout it would scan tracked files only.
    let theirs = |file: &Path| {
        median(THEIR_RUNS, || {
            let out = Command::new(&tool)
                .args(["scan", "--no-verify"])
                .arg(file)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "detect-secrets failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        })
    };
    let (their_clean, _) = theirs(&files[0]);
    let (their_dense, their_out) = theirs(&files[1]);
    let (their_start, _) = theirs(&files[2]);
    let their_lines = reported_lines(&their_out);

    let found_by_us = |p: &Planted| covered(&our_spans, p);
    let found_by_them = |p: &Planted| {
        let lines = p.line..p.line + p.value.matches('\n').count() + 1;
        their_lines.iter().any(|l| lines.contains(l))
    };
    let recall = |found: &dyn Fn(&Planted) -> bool, credential: bool| {
        let set: Vec<&Planted> = planted
            .iter()
            .filter(|p| p.credential == credential)
            .collect();
        let hits = set.iter().filter(|p| found(p)).count();
        format!(
            "{hits}/{} ({:.1} %)",
            set.len(),
            100.0 * hits as f64 / set.len().max(1) as f64
        )
    };
    let rate = |t: Duration| {
        format!(
            "{:.2} MiB/s",
            BYTES as f64 / (1 << 20) as f64 / t.as_secs_f64()
        )
    };
    let net = |t: Duration| t.saturating_sub(their_start).max(Duration::from_micros(1));

    println!(
        "\nagainst detect-secrets: 1 MiB each, {} planted secrets; detect-secrets start-up {:.2} s",
        planted.len(),
        their_start.as_secs_f64()
    );
    println!(
        "{:<34} {:>14} {:>14} {:>20} {:>18}",
        "tool", "clean", "dense", "credential recall", "PII recall"
    );
    for (name, clean_t, dense_t, found) in [
        (
            "aa-security (library)",
            our_clean,
            our_dense,
            &found_by_us as &dyn Fn(&Planted) -> bool,
        ),
        (
            "detect-secrets (wall)",
            their_clean,
            their_dense,
            &found_by_them,
        ),
        (
            "detect-secrets (net of start-up)",
            net(their_clean),
            net(their_dense),
            &found_by_them,
        ),
    ] {
        println!(
            "{name:<34} {:>14} {:>14} {:>20} {:>18}",
            rate(clean_t),
            rate(dense_t),
            recall(found, true),
            recall(found, false)
        );
    }
    println!(
        "ours faster, net of start-up: {:.0}x on clean text, {:.0}x on dense text",
        net(their_clean).as_secs_f64() / our_clean.as_secs_f64(),
        net(their_dense).as_secs_f64() / our_dense.as_secs_f64()
    );
    let missed: Vec<&str> = planted
        .iter()
        .filter(|p| !found_by_us(p))
        .map(|p| p.kind)
        .collect();
    if !missed.is_empty() {
        println!("missed by aa-security: {missed:?}");
    }
}

fn spans(findings: &[aa_security::Finding]) -> Vec<(usize, usize)> {
    findings.iter().map(|f| (f.start, f.end)).collect()
}

/// Whether a finding's span covers the planted secret.
fn covered(spans: &[(usize, usize)], planted: &Planted) -> bool {
    spans
        .iter()
        .any(|&(s, e)| s <= planted.offset && planted.offset + planted.value.len() <= e)
}

/// detect-secrets 1.5.0 in a virtualenv under `dir`, installed on first use.
fn install(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let tool = venv.join("bin/detect-secrets");
    if !tool.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "detect-secrets==1.5.0",
        ]));
    }
    tool
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed: {status}");
}

/// The median time of `runs` calls of `f`, and the last one's answer.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (times[runs / 2], last.unwrap())
}

/// The lines detect-secrets reported, from its JSON output.
fn reported_lines(stdout: &[u8]) -> Vec<usize> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).expect("detect-secrets output is not JSON");
    v["results"]
        .as_object()
        .expect("no results in detect-secrets output")
        .values()
        .flat_map(|findings| findings.as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["line_number"].as_u64().map(|n| n as usize))
        .collect()
}
