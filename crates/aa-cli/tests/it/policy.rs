//! `aasm policy validate | eval | test`.

use serde_json::Value;

use crate::{aasm, repo, scratch_dir, stderr, stdout};

#[test]
fn validate_accepts_the_examples() {
    let out = aasm(&["policy", "validate", "policy-examples"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("5 policies and 5 test files"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_reports_each_problem_as_file_line_col() {
    let file = "crates/aa-policy/tests/data/invalid/misspelt-tool-key.yaml";
    let out = aasm(&["policy", "validate", file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out).trim(),
        format!("{file}:7:13: spec.tools.shell.alow: unknown key; did you mean \"allow\"?")
    );
}

#[test]
fn validate_reports_every_file_of_a_folder() {
    let out = aasm(&["policy", "validate", "crates/aa-policy/tests/data/invalid"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    let files = std::fs::read_dir(repo().join("crates/aa-policy/tests/data/invalid"))
        .unwrap()
        .count();
    assert!(
        lines.len() >= files,
        "{} lines for {files} files",
        lines.len()
    );
    for line in lines {
        let mut parts = line.splitn(4, ':');
        let (file, l, c) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(file.ends_with(".yaml"), "{line}");
        assert!(
            l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok(),
            "{line}"
        );
    }
}

#[test]
fn validate_of_a_missing_path_is_a_usage_error() {
    let out = aasm(&["policy", "validate", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: cannot read no/such/dir"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_prints_the_documented_object() {
    let out = aasm(&[
        "policy",
        "eval",
        "--policy",
        "policy-examples/balanced.yaml",
        "--agent",
        r#"{"id":"bot","team":"support","depth":1}"#,
        "--action",
        r#"{"type":"tool_call","tool":"shell","args":{"command":"sudo reboot"}}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let verdict: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(verdict["decision"], "pending");
    assert_eq!(verdict["rule"], "tools.shell.requires_approval_if");
    assert_eq!(verdict["policy"], "balanced@3");
    assert_eq!(verdict["mode"], "enforce");
    assert!(verdict["reason"].as_str().unwrap().contains("sudo"));
    assert_eq!(verdict.as_object().unwrap().len(), 5);
}

#[test]
fn eval_cascades_over_a_folder_and_honours_now() {
    let eval = |now: &str| {
        let out = aasm(&[
            "policy",
            "eval",
            "--policy",
            "policy-examples/strict.yaml",
            "--action",
            r#"{"type":"tool_call","tool":"search_docs","args":{"q":"x"}}"#,
            "--now",
            now,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    assert_eq!(eval("2026-03-03T09:00:00Z")["decision"], "allow");
    assert_eq!(
        eval("2026-03-03T22:00:00Z")["rule"],
        "schedule.active_hours"
    );

    let out = aasm(&[
        "policy",
        "eval",
        "--policy",
        "policy-examples",
        "--agent",
        r#"{"id":"helper","team":"support"}"#,
        "--action",
        r#"{"type":"tool_call","tool":"shell","args":{"command":"ls"}}"#,
    ]);
    let verdict: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(verdict["decision"], "deny");
    assert_eq!(verdict["policy"], "customer-support@5");
}

#[test]
fn eval_bad_input_exits_2_with_one_line() {
    let cases: [&[&str]; 5] = [
        &["--action", r#"{"type":"tool_call","tool":"x""#],
        &["--action", r#"{"type":"teleport"}"#],
        &[
            "--action",
            r#"{"type":"agent_spawn"}"#,
            "--agent",
            r#"{"name":"x"}"#,
        ],
        &[
            "--action",
            r#"{"type":"agent_spawn"}"#,
            "--now",
            "yesterday",
        ],
        &["--action", r#"{"type":"file","operation":"read"}"#],
    ];
    for extra in cases {
        let mut args = vec![
            "policy",
            "eval",
            "--policy",
            "policy-examples/balanced.yaml",
        ];
        args.extend_from_slice(extra);
        let out = aasm(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(stdout(&out).is_empty());
    }
}

/// A file nested 100,000 levels deep (200 KB) is refused, naming the place, instead of
/// overflowing the stack: the same reading serves `aasm up`'s policies.
#[test]
fn a_policy_nested_past_any_use_is_refused_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.yaml");
    std::fs::write(&deep, format!("{}x\n", "- ".repeat(100_000))).unwrap();
    let out = aasm(&["policy", "validate", deep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deep.yaml:1:257: nested more than 128 levels deep"),
        "{}",
        stdout(&out)
    );
}

/// An error quoting the input it could not read (a value of the wrong type) never prints a
/// secret in it.
#[test]
fn an_error_quoting_its_input_prints_no_secret() {
    let token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let action = format!(
        r#"{{"type":"process_exec","command":"curl","args":"-H Authorization: Bearer {token}"}}"#
    );
    let eval = [
        "policy",
        "eval",
        "--policy",
        "policy-examples/balanced.yaml",
        "--action",
        &action,
    ];
    // `aasm check` reads its action before it dials the runtime.
    let check = ["check", "--agent", "bot", "--action", &action];
    for args in [&eval[..], &check[..]] {
        let out = aasm(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("expected a sequence"), "{err}");
        assert!(!err.contains(token), "{err}");
        assert!(err.contains("[REDACTED:github_token]"), "{err}");
    }
}

#[test]
fn eval_of_an_invalid_policy_names_the_place() {
    let out = aasm(&[
        "policy",
        "eval",
        "--policy",
        "crates/aa-policy/tests/data/invalid/bad-timezone.yaml",
        "--action",
        r#"{"type":"agent_spawn"}"#,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad-timezone.yaml:8:17: spec.schedule.active_hours.timezone"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_runs_the_example_suites() {
    let out = aasm(&["policy", "test", "policy-examples"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let summary = stdout(&out).lines().last().unwrap().to_owned();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 50, "{summary}");
    assert!(summary.ends_with("passed, 0 failed"), "{summary}");
}

#[test]
fn test_prints_each_failure_and_exits_1() {
    let scratch = scratch_dir("failing-suite");
    let dir = scratch.path();
    let policy = repo()
        .join("policy-examples/balanced.yaml")
        .canonicalize()
        .unwrap();
    let suite = format!(
        r#"apiVersion: agent-assembly/v1
kind: PolicyTest
policies: ["{}"]
cases:
  - name: passes
    action: {{type: tool_call, tool: shell, args: {{command: ls}}}}
    expect: {{decision: allow}}
  - name: expects the wrong thing
    action: {{type: tool_call, tool: shell, args: {{command: "sudo ls"}}}}
    expect: {{decision: allow, rule: tools.shell}}
"#,
        policy.display()
    );
    let file = dir.join("wrong.test.yaml");
    std::fs::write(&file, suite).unwrap();
    let out = aasm(&["policy", "test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let fail = text.lines().find(|l| l.contains("FAIL")).unwrap();
    assert!(
        fail.contains("wrong.test.yaml:8:5: FAIL expects the wrong thing"),
        "{fail}"
    );
    assert!(
        fail.contains("decision: expected allow, got pending"),
        "{fail}"
    );
    assert!(
        fail.contains("rule: expected tools.shell, got tools.shell.requires_approval_if"),
        "{fail}"
    );
    assert_eq!(text.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn test_of_a_broken_suite_is_a_usage_error() {
    let scratch = scratch_dir("broken-suite");
    let dir = scratch.path();
    let file = dir.join("broken.test.yaml");
    std::fs::write(&file, "apiVersion: agent-assembly/v1\nkind: PolicyTest\npolicies: []\ncases:\n  - {name: x, action: {type: nope}, expect: {decision: allow}}\n").unwrap();
    let out = aasm(&["policy", "test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("broken.test.yaml:5:23: cases[0].action: invalid action"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_stdout_that_cannot_be_written_is_an_error_not_a_panic() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aasm"))
        .args([
            "policy",
            "eval",
            "--policy",
            "policy-examples/balanced.yaml",
            "--action",
            r#"{"type":"tool_call","tool":"read_file"}"#,
        ])
        .current_dir(repo())
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: cannot write to stdout"),
        "{}",
        stderr(&out)
    );
}
