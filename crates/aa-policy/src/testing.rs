//! Policy test files: cases of agent, action and expected decision, run against a
//! [`PolicySet`] (the `opa test` of policies).
//!
//! ```yaml
//! apiVersion: agent-assembly/v1
//! kind: PolicyTest
//! policies: [balanced.yaml]          # relative to the test file
//! now: "2026-03-02T10:00:00Z"        # optional; cases may override
//! cases:
//!   - name: shell with sudo needs approval
//!     agent: {id: bot, team: support, depth: 1}
//!     action: {type: tool_call, tool: shell, args: {command: "sudo ls"}}
//!     expect: {decision: pending, rule: tools.shell.requires_approval_if}
//! ```

use aa_core::{Action, AgentContext, Decision, Mode, Verdict};
use chrono::{DateTime, Utc};

use crate::error::PolicyError;
use crate::eval::Request;
use crate::policy::{API_VERSION, expect_literal};
use crate::set::PolicySet;
use crate::yaml::{self, Loc, Node, Reader, join_path};

/// A parsed test file.
#[derive(Debug, Clone)]
pub struct TestSuite {
    /// Policy files the cases run against, relative to the test file.
    pub policies: Vec<String>,
    /// The cases, in file order.
    pub cases: Vec<TestCase>,
}

/// One case.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// Its name.
    pub name: String,
    /// Where it is written.
    pub loc: Loc,
    /// The acting agent (default: `{id: test-agent}`).
    pub agent: AgentContext,
    /// The action.
    pub action: Action,
    /// The time of the request, if the case or file fixes one.
    pub now: Option<DateTime<Utc>>,
    /// What the verdict must be.
    pub expect: Expectation,
}

/// What a case expects; only the fields given are checked.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The decision.
    pub decision: Decision,
    /// The rule that decides.
    pub rule: Option<String>,
    /// The deciding policy, as `name@version`.
    pub policy: Option<String>,
    /// The mode.
    pub mode: Option<Mode>,
    /// Text the reason must contain.
    pub reason_contains: Option<String>,
}

/// A case whose verdict differed from what it expected.
#[derive(Debug, Clone)]
pub struct TestFailure {
    /// The case's name.
    pub case: String,
    /// Where the case is written.
    pub loc: Loc,
    /// Each expectation that failed, e.g. `decision: expected allow, got deny`.
    pub problems: Vec<String>,
    /// What the policies answered.
    pub actual: Verdict,
}

const SUITE_KEYS: &[&str] = &["apiVersion", "kind", "policies", "now", "cases"];
const CASE_KEYS: &[&str] = &["name", "agent", "action", "now", "expect"];
const EXPECT_KEYS: &[&str] = &["decision", "rule", "policy", "mode", "reason_contains"];

impl TestSuite {
    /// Parses a test file.
    pub fn parse(source: &str) -> Result<TestSuite, PolicyError> {
        let docs = yaml::load(source)?;
        let mut r = Reader::new(source);
        let suite = match docs.as_slice() {
            [doc] => suite(&mut r, doc),
            _ => {
                r.error(
                    Loc { line: 1, col: 1 },
                    "",
                    "a test file holds exactly one YAML document",
                );
                None
            }
        };
        let suite = r.finish(suite)?;
        suite.ok_or_else(|| PolicyError::Invalid(Vec::new()))
    }

    /// Runs every case; `now` is the time for cases that fix none.
    pub fn run(&self, set: &PolicySet, now: DateTime<Utc>) -> (usize, Vec<TestFailure>) {
        let mut failures = Vec::new();
        for case in &self.cases {
            let request = Request {
                agent: &case.agent,
                action: &case.action,
                now: case.now.unwrap_or(now),
            };
            let verdict = set.evaluate(&request);
            let mut problems = Vec::new();
            let expect = &case.expect;
            if verdict.decision != expect.decision {
                problems.push(format!(
                    "decision: expected {}, got {}",
                    expect.decision, verdict.decision
                ));
            }
            if let Some(rule) = &expect.rule
                && *rule != verdict.rule
            {
                problems.push(format!("rule: expected {rule}, got {}", verdict.rule));
            }
            if let Some(policy) = &expect.policy
                && *policy != verdict.policy
            {
                problems.push(format!("policy: expected {policy}, got {}", verdict.policy));
            }
            if let Some(mode) = expect.mode
                && mode != verdict.mode
            {
                problems.push(format!("mode: expected {mode}, got {}", verdict.mode));
            }
            if let Some(text) = &expect.reason_contains
                && !verdict.reason.contains(text.as_str())
            {
                problems.push(format!(
                    "reason: expected it to contain \"{text}\", got \"{}\"",
                    verdict.reason
                ));
            }
            if !problems.is_empty() {
                failures.push(TestFailure {
                    case: case.name.clone(),
                    loc: case.loc,
                    problems,
                    actual: verdict,
                });
            }
        }
        (self.cases.len() - failures.len(), failures)
    }
}

fn suite(r: &mut Reader<'_>, node: &Node<'_>) -> Option<TestSuite> {
    let entries = r.mapping(node, "", Some(SUITE_KEYS))?;
    r.require(
        node,
        "",
        &entries,
        &["apiVersion", "kind", "policies", "cases"],
    );
    let mut suite = TestSuite {
        policies: Vec::new(),
        cases: Vec::new(),
    };
    let mut default_now = None;
    let mut cases_node = None;
    for (key, value) in &entries {
        match key.value.as_str() {
            "apiVersion" => {
                expect_literal(r, value, "apiVersion", API_VERSION);
            }
            "kind" => {
                expect_literal(r, value, "kind", "PolicyTest");
            }
            "policies" => {
                suite.policies = r
                    .string_list(value, "policies")?
                    .into_iter()
                    .map(|s| s.value)
                    .collect();
            }
            "now" => default_now = time(r, value, "now"),
            _ => cases_node = Some(*value),
        }
    }
    for (i, item) in r.sequence(cases_node?, "cases")?.iter().enumerate() {
        if let Some(mut case) = test_case(r, item, &format!("cases[{i}]")) {
            case.now = case.now.or(default_now);
            suite.cases.push(case);
        }
    }
    Some(suite)
}

fn time(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<DateTime<Utc>> {
    let s = r.string(node, path)?;
    match DateTime::parse_from_rfc3339(&s.value) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            r.error(
                s.loc,
                path,
                format!("invalid RFC 3339 time \"{}\": {e}", s.value),
            );
            None
        }
    }
}

fn test_case(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<TestCase> {
    let entries = r.mapping(node, path, Some(CASE_KEYS))?;
    r.require(node, path, &entries, &["name", "action", "expect"]);
    let loc = Loc::of(node);
    let (mut name, mut agent, mut action, mut now, mut expect) = (
        None,
        Some(AgentContext::new("test-agent")),
        None,
        None,
        None,
    );
    for (key, value) in &entries {
        let p = join_path(path, &key.value);
        match key.value.as_str() {
            "name" => name = r.string(value, &p).map(|s| s.value),
            "agent" => {
                let json = r.json(value, &p)?;
                agent = serde_json::from_value::<AgentContext>(json)
                    .map_err(|e| e.to_string())
                    .and_then(|a| a.validate().map(|()| a).map_err(|e| e.to_string()))
                    .map_err(|e| r.error(Loc::of(value), &p, e))
                    .ok();
            }
            "action" => {
                let json = r.json(value, &p)?;
                action = Action::from_value(json)
                    .map_err(|e| r.error(Loc::of(value), &p, e.to_string()))
                    .ok();
            }
            "now" => now = Some(time(r, value, &p)?),
            _ => expect = expectation(r, value, &p),
        }
    }
    Some(TestCase {
        name: name?,
        loc,
        agent: agent?,
        action: action?,
        now,
        expect: expect?,
    })
}

fn expectation(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<Expectation> {
    let entries = r.mapping(node, path, Some(EXPECT_KEYS))?;
    r.require(node, path, &entries, &["decision"]);
    let (mut decision, mut rule, mut policy, mut mode, mut reason) = (None, None, None, None, None);
    for (key, value) in &entries {
        let p = join_path(path, &key.value);
        let s = r.string(value, &p)?;
        match key.value.as_str() {
            "decision" => {
                decision = s
                    .value
                    .parse::<Decision>()
                    .map_err(|e| r.error(s.loc, &p, e))
                    .ok()
            }
            "rule" => rule = Some(s.value),
            "policy" => policy = Some(s.value),
            "mode" => {
                mode = Some(
                    s.value
                        .parse::<Mode>()
                        .map_err(|e| r.error(s.loc, &p, e))
                        .ok()?,
                )
            }
            _ => reason = Some(s.value),
        }
    }
    Some(Expectation {
        decision: decision?,
        rule,
        policy,
        mode,
        reason_contains: reason,
    })
}
