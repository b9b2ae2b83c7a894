//! `cargo xtask scan-compare`: the scanner against `detect-secrets` on one corpus.
//!
//! Both tools scan the same files from the command line: 1 MiB of clean text (prose, code, logs
//! with decoys) and 1 MiB with a secret planted about every 200 bytes. Throughput is bytes per
//! second of wall time (median of several runs, start-up included); recall is the share of
//! planted secrets each tool reports — ours by byte span, detect-secrets by line (it reports
//! lines only). Personal data is counted apart: detect-secrets does not look for it.
//! detect-secrets runs with `--no-verify` (no calls to providers' APIs; there is no network
//! here, and its checks would measure time-outs, not scanning).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aa_testkit::corpus::{self, Planted};
use anyhow::{Context, Result, bail};

const BYTES: usize = 1 << 20;
const RUNS: usize = 3;

pub(crate) fn run() -> Result<()> {
    let dir = crate::target_dir().join("scan-compare");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let clean = dir.join("clean.txt");
    let dense = dir.join("dense.txt");
    std::fs::write(&clean, corpus::clean_text(1, BYTES))?;
    let (text, planted) = corpus::dense_text(2, BYTES, 200);
    std::fs::write(&dense, &text)?;

    crate::cargo(&["build", "--release", "-p", "aa-cli"])?;
    let aasm = crate::target_dir().join("release/aasm").canonicalize()?;
    let detect_secrets = install_detect_secrets(&dir)?;

    let ours = |file: &Path| Command::new(&aasm).arg("scan").arg(file).output();
    // --no-verify: otherwise detect-secrets calls providers' APIs to check each secret, which
    // measures network time-outs here, not scanning. It runs from the corpus directory: inside
    // a git checkout it scans only tracked files, and would skip the corpus.
    let theirs = |file: &Path| {
        Command::new(&detect_secrets)
            .args(["scan", "--no-verify"])
            .arg(file)
            .current_dir(&dir)
            .output()
    };

    let (our_clean, _) = timed(|| ours(&clean))?;
    let (our_dense, our_out) = timed(|| ours(&dense))?;
    let (their_clean, _) = timed(|| theirs(&clean))?;
    let (their_dense, their_out) = timed(|| theirs(&dense))?;

    let our_spans = our_spans(&our_out)?;
    let their_lines = their_lines(&their_out)?;
    let found_by_us = |p: &Planted| {
        our_spans
            .iter()
            .any(|(s, e)| *s <= p.offset && p.offset + p.value.len() <= *e)
    };
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
        (hits, set.len())
    };
    let mb = |bytes: u64, t: Duration| bytes as f64 / (1 << 20) as f64 / t.as_secs_f64();
    let (clean_len, dense_len) = (
        std::fs::metadata(&clean)?.len(),
        std::fs::metadata(&dense)?.len(),
    );
    println!(
        "corpus: {clean_len} bytes clean, {dense_len} bytes with {} planted secrets",
        planted.len()
    );
    println!(
        "{:<16} {:>20} {:>20} {:>22} {:>18}",
        "tool", "clean s (MiB/s)", "dense s (MiB/s)", "credential recall", "PII recall"
    );
    for (name, clean_t, dense_t, found) in [
        (
            "aasm scan",
            our_clean,
            our_dense,
            &found_by_us as &dyn Fn(&Planted) -> bool,
        ),
        ("detect-secrets", their_clean, their_dense, &found_by_them),
    ] {
        let (ch, ct) = recall(found, true);
        let (ph, pt) = recall(found, false);
        println!(
            "{name:<16} {:>20} {:>20} {:>13}/{ct} {:>5.1}% {:>9}/{pt} {:>5.1}%",
            format!(
                "{:.3} ({:.2})",
                clean_t.as_secs_f64(),
                mb(clean_len, clean_t)
            ),
            format!(
                "{:.3} ({:.3})",
                dense_t.as_secs_f64(),
                mb(dense_len, dense_t)
            ),
            ch,
            100.0 * ch as f64 / ct.max(1) as f64,
            ph,
            100.0 * ph as f64 / pt.max(1) as f64
        );
    }
    let missed: Vec<&str> = planted
        .iter()
        .filter(|p| !found_by_us(p))
        .map(|p| p.kind)
        .collect();
    if !missed.is_empty() {
        println!("missed by aasm scan: {missed:?}");
    }
    Ok(())
}

/// detect-secrets in a virtualenv under the target directory (installed once).
fn install_detect_secrets(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let tool = venv.join("bin/detect-secrets");
    if !tool.exists() {
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        crate::run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "detect-secrets==1.5.0",
        ]))?;
    }
    Ok(tool)
}

/// The median wall time of [`RUNS`] runs, and the output of the last.
fn timed(
    mut f: impl FnMut() -> std::io::Result<std::process::Output>,
) -> Result<(Duration, Vec<u8>)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = f().context("cannot run the scanner")?;
        times.push(start.elapsed());
        if !matches!(out.status.code(), Some(0 | 1)) {
            bail!("scanner failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        last = out.stdout;
    }
    times.sort();
    Ok((times[RUNS / 2], last))
}

fn our_spans(stdout: &[u8]) -> Result<Vec<(usize, usize)>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let get = |k: &str| {
                v[k].as_u64()
                    .map(|n| n as usize)
                    .context("finding without a span")
            };
            Ok((get("start")?, get("end")?))
        })
        .collect()
}

fn their_lines(stdout: &[u8]) -> Result<Vec<usize>> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).context("detect-secrets output is not JSON")?;
    let results = v["results"]
        .as_object()
        .context("no results in detect-secrets output")?;
    Ok(results
        .values()
        .flat_map(|findings| findings.as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["line_number"].as_u64().map(|n| n as usize))
        .collect())
}
