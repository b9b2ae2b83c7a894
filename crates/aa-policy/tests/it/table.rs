//! The data-driven table: `tests/data/*.test.yaml`, each case a policy + agent + action →
//! decision + rule, run through the library.

use aa_policy::{Policy, PolicySet, TestSuite};
use chrono::{DateTime, Utc};

use crate::{data_dir, files_ending, read};

fn fixed_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T15:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn every_case_of_the_rule_table_passes() {
    let files = files_ending(&data_dir(), ".test.yaml");
    assert!(files.len() >= 3, "the table files are missing");
    let mut total = 0;
    let mut failures = Vec::new();
    for file in files {
        let suite =
            TestSuite::parse(&read(&file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let policies = suite
            .policies
            .iter()
            .flat_map(|p| Policy::parse(&read(&data_dir().join(p))).unwrap())
            .collect();
        let (passed, failed) = suite.run(&PolicySet::new(policies), fixed_now());
        total += passed + failed.len();
        for f in failed {
            failures.push(format!(
                "{}:{}: {}: {} (reason: {})",
                file.display(),
                f.loc.line,
                f.case,
                f.problems.join("; "),
                f.actual.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 60, "only {total} cases ran");
}

#[test]
fn a_wrong_expectation_is_reported_as_a_failure() {
    let policy = Policy::parse_one(
        "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: p}\nspec: {default: allow}\n",
    )
    .unwrap();
    let suite = TestSuite::parse(
        r#"
apiVersion: agent-assembly/v1
kind: PolicyTest
policies: [p.yaml]
cases:
  - {name: wrong decision, action: {type: tool_call, tool: x}, expect: {decision: deny}}
  - {name: wrong rule, action: {type: tool_call, tool: x}, expect: {decision: allow, rule: tools.x}}
  - {name: right, action: {type: tool_call, tool: x}, expect: {decision: allow, rule: default, policy: p@0}}
"#,
    )
    .unwrap();
    let (passed, failures) = suite.run(&PolicySet::new(vec![policy]), fixed_now());
    assert_eq!(passed, 1);
    let problems: Vec<String> = failures.iter().flat_map(|f| f.problems.clone()).collect();
    assert_eq!(
        problems,
        [
            "decision: expected deny, got allow",
            "rule: expected tools.x, got default"
        ]
    );
}

#[test]
fn no_covering_policy_denies() {
    let policy = Policy::parse_one(
        "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: p}\nspec: {scope: 'agent:a', default: allow}\n",
    )
    .unwrap();
    let set = PolicySet::new(vec![policy]);
    let agent = aa_core::AgentContext::new("b");
    let action = aa_core::Action::from_json(r#"{"type":"agent_spawn"}"#).unwrap();
    let verdict = set.evaluate(&aa_policy::Request {
        agent: &agent,
        action: &action,
        now: fixed_now(),
    });
    assert_eq!(verdict.decision, aa_core::Decision::Deny);
    assert_eq!(verdict.rule, "default");
    assert!(
        verdict.reason.contains("no policy applies"),
        "{}",
        verdict.reason
    );
}

#[test]
fn the_most_specific_policy_sets_the_approval_timeout() {
    let policies = Policy::parse(
        "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: g}\nspec: {approvals: {timeout_seconds: 600}}\n---\n\
         apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: t}\nspec: {scope: 'team:ops', approvals: {timeout_seconds: 30}}\n",
    )
    .unwrap();
    let set = PolicySet::new(policies);
    let mut agent = aa_core::AgentContext::new("a");
    assert_eq!(set.approval_timeout_s_for(&agent), 600);
    agent.team = Some("ops".into());
    assert_eq!(set.approval_timeout_s_for(&agent), 30);
    assert_eq!(
        PolicySet::new(Vec::new()).approval_timeout_s_for(&agent),
        aa_policy::DEFAULT_APPROVAL_TIMEOUT_S
    );
    let error = Policy::parse(
        "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: g}\nspec: {approvals: {timeout_seconds: 0}}\n",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("spec.approvals.timeout_seconds"),
        "{error}"
    );
}
