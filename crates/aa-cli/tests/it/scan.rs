//! `aasm scan`.

use serde_json::Value;

use crate::{aasm, aasm_with_stdin, scratch_dir, stderr, stdout};

const KEY: &str = "AKIAQWERTYUIOPASDFGH";
const TOKEN: &str = "ghp_R8xkQ2mVt7LpZ3wN9cY4bH6jF1dS5aE0uGiK";

fn lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn folders_are_walked_honouring_gitignore() {
    let scratch = scratch_dir("scan-folder");
    let dir = scratch.path();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join(".gitignore"), "logs/\n").unwrap();
    std::fs::write(
        dir.join("config.env"),
        format!("# creds\nAWS_ACCESS_KEY_ID={KEY}\n"),
    )
    .unwrap();
    std::fs::write(dir.join(".env"), format!("GH={TOKEN}\n")).unwrap();
    std::fs::write(dir.join("logs/app.log"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("clean.txt"), "nothing to see\n").unwrap();
    let out = aasm(&["scan", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let found = lines(&out);
    assert_eq!(found.len(), 2, "{}", stdout(&out));
    let config = found
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("config.env"))
        .unwrap();
    assert_eq!(config["line"], 2);
    assert_eq!(config["col"], 19);
    assert_eq!(config["kind"], "aws_access_key");
    assert_eq!(config["rule"], "aws-access-key-id");
    assert_eq!(
        (config["start"].as_u64(), config["end"].as_u64()),
        (Some(26), Some(46))
    );
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 7);
    assert!(
        found
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with(".env"))
    );
    assert!(
        !stdout(&out).contains(KEY) && !stdout(&out).contains(TOKEN),
        "the secret was printed"
    );
    // What git ignores, on request: the log's token too.
    let all = aasm(&["scan", "--no-ignore", dir.to_str().unwrap()]);
    assert_eq!(all.status.code(), Some(1), "{}", stderr(&all));
    let found = lines(&all);
    assert_eq!(found.len(), 3, "{}", stdout(&all));
    assert!(
        found
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("app.log"))
    );
}

#[test]
fn stdin_and_exit_codes() {
    let clean = aasm_with_stdin(&["scan"], b"just words\n");
    assert_eq!(clean.status.code(), Some(0));
    assert!(stdout(&clean).is_empty());
    let dirty = aasm_with_stdin(&["scan", "-"], format!("x {TOKEN}").as_bytes());
    assert_eq!(dirty.status.code(), Some(1));
    assert_eq!(lines(&dirty)[0]["path"], "-");
    let missing = aasm(&["scan", "no/such/file"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(stderr(&missing).lines().count(), 1);
}

#[test]
fn redact_writes_the_redacted_text() {
    let input = format!("key={KEY}\nbytes \u{00e9}\n");
    let out = aasm_with_stdin(&["scan", "--redact", "-"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "key=[REDACTED:aws_access_key]\nbytes \u{00e9}\n"
    );
    let two = aasm(&["scan", "--redact", "a", "b"]);
    assert_eq!(two.status.code(), Some(2));
}

#[test]
fn custom_patterns_come_from_a_policy() {
    let out = aasm_with_stdin(
        &["scan", "--policy", "policy-examples/balanced.yaml"],
        b"badge EMP-123456 issued\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines(&out)[0]["kind"], "employee_id");
    let bad = aasm_with_stdin(
        &[
            "scan",
            "--policy",
            "crates/aa-policy/tests/data/invalid/bad-regex.yaml",
        ],
        b"",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("bad-regex.yaml:7:35"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn an_input_that_cannot_be_read_is_named_and_the_rest_still_scanned() {
    let scratch = scratch_dir("scan-partial");
    let dir = scratch.path();
    let (first, last) = (dir.join("first.txt"), dir.join("last.txt"));
    std::fs::write(&first, format!("{KEY}\n")).unwrap();
    std::fs::write(&last, format!("{TOKEN}\n")).unwrap();
    let missing = dir.join("missing.txt");
    let paths = [&first, &missing, &last].map(|p| p.to_str().unwrap().to_owned());
    let out = aasm(&["scan", &paths[0], &paths[1], &paths[2]]);
    // Incomplete: 2, though something was found; what could be read is reported whole.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let found = lines(&out);
    assert_eq!(found.len(), 2, "{}", stdout(&out));
    assert!(found[1]["path"].as_str().unwrap().ends_with("last.txt"));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.txt"), "{}", stderr(&out));
}

#[test]
fn a_binary_file_is_skipped_in_a_folder_and_scanned_when_named() {
    let scratch = scratch_dir("scan-binary");
    let dir = scratch.path();
    let file = dir.join("dump.bin");
    std::fs::write(&file, format!("x\0y {TOKEN}\n")).unwrap();
    let in_folder = aasm(&["scan", dir.to_str().unwrap()]);
    assert_eq!(in_folder.status.code(), Some(0), "{}", stdout(&in_folder));
    let named = aasm(&["scan", file.to_str().unwrap()]);
    assert_eq!(named.status.code(), Some(1), "{}", stderr(&named));
    assert_eq!(lines(&named)[0]["rule"], "github-pat");
    let piped = aasm_with_stdin(&["scan"], format!("x\0y {TOKEN}\n").as_bytes());
    assert_eq!(piped.status.code(), Some(1), "{}", stderr(&piped));
}

#[test]
fn a_secret_in_a_files_name_is_redacted_where_findings_name_it() {
    let scratch = scratch_dir("scan-name");
    let file = scratch.path().join(format!("{TOKEN}.env"));
    std::fs::write(&file, format!("AWS_ACCESS_KEY_ID={KEY}\n")).unwrap();
    let out = aasm(&["scan", scratch.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let path = lines(&out)[0]["path"].as_str().unwrap().to_owned();
    assert!(
        path.ends_with("[REDACTED:github_token].env") && !path.contains(TOKEN),
        "{path}"
    );
}
