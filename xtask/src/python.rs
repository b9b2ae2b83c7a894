//! The Python SDK (`sdks/python`) as its users get it: a wheel built with maturin, installed
//! into a fresh virtualenv with the adapters' frameworks, then its tests, type checks, lints
//! and the stub check run against that installation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run, target_dir};

const SDK: &str = "sdks/python";
/// Every extra, so the adapters are tested with their real frameworks.
const EXTRAS: &str = "langchain,openai-agents,mcp,test,lint";

/// A fresh virtualenv under the target directory with the SDK's wheel, built in the dev or
/// release profile, installed with `extras`; returns the virtualenv.
fn install(name: &str, release: bool, extras: &str) -> Result<PathBuf> {
    let root = std::fs::canonicalize(target_dir())
        .context("the target directory")?
        .join(name);
    let venv = root.join("venv");
    let wheels = root.join("wheels");
    if wheels.exists() {
        std::fs::remove_dir_all(&wheels).context("clearing old wheels")?;
    }
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    let bin = venv.join("bin");
    run(Command::new(bin.join("pip")).args(["install", "--quiet", "maturin>=1.9.4,<2"]))?;
    let mut maturin = Command::new(bin.join("maturin"));
    maturin.args(["build", "--quiet"]);
    if release {
        maturin.arg("--release");
    }
    run(maturin
        .arg("--out")
        .arg(&wheels)
        .arg("--interpreter")
        .arg(bin.join("python"))
        .current_dir(SDK))?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("maturin built no wheel")?;
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet"])
        .arg(format!("{}[{extras}]", wheel.display())))?;
    Ok(venv)
}

/// Tests, `mypy --strict`, ruff and stubtest against the installed wheel.
pub(crate) fn ci() -> Result<()> {
    cargo(&["build", "-p", "aa-cli"])?;
    let aasm = std::fs::canonicalize(target_dir().join("debug/aasm")).context("the aasm binary")?;
    // The dev profile: the target directory already holds it from the Rust tests.
    let venv = install("python-sdk", false, EXTRAS)?;
    let bin = venv.join("bin");
    let python = bin.join("python");
    // The tests import the installed package, never the sources beside them.
    check_installed(&python, &venv)?;
    run(Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .env("AASM_BIN", &aasm)
        .current_dir(SDK))?;
    run(Command::new(bin.join("mypy")).current_dir(SDK))?;
    run(Command::new(bin.join("ruff"))
        .args(["check", "python", "tests", "benches"])
        .current_dir(SDK))?;
    run(Command::new(bin.join("ruff"))
        .args(["format", "--check", "python", "tests", "benches"])
        .current_dir(SDK))?;
    run(Command::new(&python)
        .args(["-m", "mypy.stubtest", "agent_assembly._native"])
        .current_dir(&venv))
}

/// `check_tool_start` from Python beside the Rust client, release builds of both.
pub(crate) fn bench() -> Result<()> {
    cargo(&["build", "--release", "-p", "aa-cli", "-p", "aa-bench"])?;
    let release = std::fs::canonicalize(target_dir().join("release"))?;
    let venv = install("python-bench", true, "test")?;
    run(Command::new(venv.join("bin/python"))
        .arg(Path::new(SDK).join("benches/check_latency.py"))
        .arg("--aasm")
        .arg(release.join("aasm"))
        .arg("--aa-bench")
        .arg(release.join("aa-bench")))
}

fn check_installed(python: &Path, venv: &Path) -> Result<()> {
    let out = Command::new(python)
        .args([
            "-c",
            "import agent_assembly._native as n; print(n.__file__)",
        ])
        .current_dir(SDK)
        .output()
        .context("importing agent_assembly")?;
    let file = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !Path::new(file.trim()).starts_with(venv) {
        bail!(
            "agent_assembly did not load from the virtualenv: {file}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
