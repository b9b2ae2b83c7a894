//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask ci`: everything CI checks — installs missing toolchain components, then
//!   formatting, clippy with warnings denied, every test, the example policies' tests, and
//!   the Python SDK from its wheel in a fresh virtualenv (pytest, mypy, ruff, stubtest).
//! - `cargo xtask bench`: the benchmarks, then a table of criterion medians.
//! - `cargo xtask load [aa-bench arguments]`: builds `aasm` and `aa-bench` in release and
//!   runs the load generator (by default `all`: checks at 10,000/s, then 200,000 events).
//! - `cargo xtask bench-python`: the latency of `check_tool_start` from Python beside the Rust
//!   client's, against one `aasm up` (release builds of both).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod python;

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root).context("cannot enter the workspace root")?;
    match task.as_str() {
        "ci" => ci(),
        "bench" => bench(),
        "load" => load(std::env::args().skip(2).collect()),
        "bench-python" => python::bench(),
        _ => bail!("usage: cargo xtask <ci|bench|bench-python|load>"),
    }
}

fn ci() -> Result<()> {
    install_components(&["rustfmt", "clippy"])?;
    // The scanner's `vectorscan` feature links the system's Vectorscan.
    install_packages(&["libvectorscan-dev"])?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace", "--all-features"])?;
    // The scanner's default keyword search (Aho-Corasick), which `--all-features` replaces;
    // its benches run once each as tests.
    cargo(&["test", "-p", "aa-security", "--all-targets"])?;
    // The shipped examples are checked the way users check theirs.
    for command in ["validate", "test"] {
        cargo(&[
            "run",
            "--quiet",
            "-p",
            "aa-cli",
            "--",
            "policy",
            command,
            "policy-examples",
        ])?;
    }
    python::ci()
}

fn bench() -> Result<()> {
    cargo(&["bench", "-p", "aa-policy"])?;
    let dir = target_dir().join("criterion");
    println!("\n{:<32} {:>12}", "criterion benchmark", "median");
    for estimates in find_files(&dir, "estimates.json")? {
        if !estimates.ends_with("new/estimates.json") {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&estimates)?)?;
        let median_ns = json["median"]["point_estimate"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let name = estimates
            .strip_prefix(&dir)
            .unwrap_or(&estimates)
            .parent()
            .and_then(Path::parent)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("{name:<32} {:>9.2} µs", median_ns / 1000.0);
    }
    Ok(())
}

fn load(mut args: Vec<String>) -> Result<()> {
    cargo(&["build", "--release", "-p", "aa-cli", "-p", "aa-bench"])?;
    if args.is_empty() {
        args.push("all".into());
    }
    let release = target_dir().join("release");
    run(Command::new(release.join("aa-bench"))
        .arg("--aasm")
        .arg(release.join("aasm"))
        .args(&args))
}

fn install_components(components: &[&str]) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output();
    let Ok(installed) = installed else {
        // No rustup: a distribution toolchain, whose components come with it.
        return Ok(());
    };
    let listed = String::from_utf8_lossy(&installed.stdout);
    for component in components {
        if !listed.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// Installs missing Debian packages with apt-get (through sudo when not root).
fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| {
        let mut command = Command::new(if root { "apt-get" } else { "sudo" });
        if !root {
            command.arg("apt-get");
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command)
    };
    apt(&["update", "-qq"])?;
    apt(&[&["install", "-y", "-qq"][..], &missing].concat())
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo).args(args))
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    eprintln!("$ {}", format!("{command:?}").replace('"', ""));
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

fn find_files(dir: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(find_files(&path, name)?);
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
