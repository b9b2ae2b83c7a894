//! The benchmark workload, shared by the criterion bench and the percentile run.

use aa_core::Decision;
use aa_core::{Action, AgentContext};
use aa_policy::{Policy, PolicySet, Request};
use chrono::{DateTime, Utc};

/// A global policy with `n` tool entries, each with two CEL conditions of the shape evaluated
/// natively; every tenth entry is a glob; one more entry has conditions only the CEL
/// interpreter evaluates (they use `has`), and a `*` entry closes the table.
fn policy_with_rules(n: usize) -> PolicySet {
    let mut yaml = String::from(
        "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: bench, version: \"1\"}\nspec:\n  default: deny\n  tools:\n",
    );
    for i in 0..n {
        let name = if i % 10 == 9 {
            format!("\"family_{i}_*\"")
        } else {
            format!("tool_{i}")
        };
        yaml.push_str(&format!(
            "    {name}:\n      deny_if: 'args.path.startsWith(\"/etc/\") || agent.depth > 3'\n      requires_approval_if: 'args.command.contains(\"sudo\")'\n"
        ));
    }
    yaml.push_str(
        "    interpreted:\n      deny_if: 'has(args.path) && args.path.startsWith(\"/etc/\") || agent.depth > 3'\n      requires_approval_if: 'has(args.command) && args.command.contains(\"sudo\")'\n",
    );
    yaml.push_str("    \"*\": {allow: true}\n");
    let policies = Policy::parse(&yaml).unwrap_or_else(|e| panic!("bench policy: {e}"));
    PolicySet::new(policies)
}

/// A call of the tool in the middle of the table, whose conditions are both evaluated.
fn exact_call(n: usize) -> Action {
    let i = if (n / 2) % 10 == 9 { n / 2 + 1 } else { n / 2 };
    tool_call(&format!("tool_{i}"))
}

/// A call matched by the last glob of the table.
fn glob_call(n: usize) -> Action {
    let last_glob = (0..n).rev().find(|i| i % 10 == 9).unwrap_or(0);
    tool_call(&format!("family_{last_glob}_x"))
}

/// The measured cases: an exact entry and a glob entry (both conditions evaluated), the entry
/// whose conditions the interpreter evaluates, and a tool only `*` covers (no conditions: the
/// cost of the lookup itself).
fn cases(n: usize) -> [(&'static str, Action); 4] {
    [
        ("exact", exact_call(n)),
        ("glob", glob_call(n)),
        ("interpreted", tool_call("interpreted")),
        ("wildcard", tool_call("unlisted")),
    ]
}

fn tool_call(tool: &str) -> Action {
    Action::ToolCall {
        tool: tool.to_owned(),
        args: serde_json::json!({"path": "/workspace/src/main.rs", "command": "cargo test"}),
    }
}

fn agent() -> AgentContext {
    AgentContext {
        id: "bench-bot".into(),
        team: Some("eng".into()),
        depth: 1,
        parent: None,
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// Calls `f(label, rules, set, request)` for every case at 10, 100 and 10,000 rules, after
/// checking the case decides as the workload intends (allow).
pub(crate) fn for_each_case(mut f: impl FnMut(&str, usize, &PolicySet, &Request<'_>)) {
    let agent = agent();
    let now = now();
    for n in [10, 100, 10_000] {
        let set = policy_with_rules(n);
        for (label, action) in cases(n) {
            let request = Request {
                agent: &agent,
                action: &action,
                now,
            };
            assert_eq!(
                set.evaluate(&request).decision,
                Decision::Allow,
                "{label}/{n}"
            );
            f(label, n, &set, &request);
        }
    }
}
