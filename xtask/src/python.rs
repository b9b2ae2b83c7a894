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

/// A fresh virtualenv under the target directory with the SDK's wheel installed; returns
/// the virtualenv.
pub(crate) fn install() -> Result<PathBuf> {
    let root = std::fs::canonicalize(target_dir())
        .context("the target directory")?
        .join("python-sdk");
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
    // The dev profile: the target directory already holds it from the Rust tests.
    run(Command::new(bin.join("maturin"))
        .args(["build", "--quiet", "--out"])
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
        .arg(format!("{}[{EXTRAS}]", wheel.display())))?;
    Ok(venv)
}

/// Tests, `mypy --strict`, ruff and stubtest against the installed wheel.
pub(crate) fn ci() -> Result<()> {
    cargo(&["build", "-p", "aa-cli"])?;
    let aasm = std::fs::canonicalize(target_dir().join("debug/aasm")).context("the aasm binary")?;
    let venv = install()?;
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
        .args(["check", "python", "tests"])
        .current_dir(SDK))?;
    run(Command::new(bin.join("ruff"))
        .args(["format", "--check", "python", "tests"])
        .current_dir(SDK))?;
    run(Command::new(&python)
        .args(["-m", "mypy.stubtest", "agent_assembly._native"])
        .current_dir(&venv))
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
