//! Property tests: any action gets a decision, and nothing panics — neither evaluation on
//! arbitrary requests nor loading arbitrary text.

use aa_core::{Action, AgentContext, FileOperation};
use aa_policy::{Policy, PolicySet, Request};
use chrono::{DateTime, Utc};
use proptest::prelude::*;

use crate::{data_dir, read};

/// Parsed once: the examples and the rule-table policy, together as one cascade.
static EXAMPLES: std::sync::LazyLock<PolicySet> = std::sync::LazyLock::new(example_set);

fn example_set() -> PolicySet {
    let dir = data_dir().join("../../../../policy-examples");
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.to_string_lossy().to_string();
        if name.ends_with(".yaml") && !name.ends_with(".test.yaml") {
            policies.extend(Policy::parse(&read(&path)).unwrap());
        }
    }
    policies.extend(Policy::parse(&read(&data_dir().join("policies/everything.yaml"))).unwrap());
    PolicySet::new(policies)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("path".to_owned()),
                    Just("command".to_owned()),
                    Just("amount_usd".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("shell".to_owned()),
        Just("read_file".to_owned()),
        Just("db_drop".to_owned()),
        Just("issue_refund".to_owned()),
        ".{0,20}",
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (name(), json_value()).prop_map(|(tool, args)| Action::ToolCall { tool, args }),
        (".{0,30}", any::<Option<u64>>()).prop_map(|(model, token_estimate)| Action::LlmCall {
            model,
            token_estimate
        }),
        (".{0,30}", any::<Option<u16>>()).prop_map(|(host, port)| Action::Network {
            host,
            port,
            method: None
        }),
        (
            prop_oneof![
                Just(FileOperation::Read),
                Just(FileOperation::Write),
                Just(FileOperation::Delete)
            ],
            "(/|\\.\\./|[a-z]{1,4}/|\0){0,6}"
        )
            .prop_map(|(operation, path)| Action::File { operation, path }),
        (".{0,20}", prop::collection::vec(".{0,8}", 0..3))
            .prop_map(|(command, args)| Action::ProcessExec { command, args }),
        Just(Action::AgentSpawn {
            child_id: None,
            reason: None
        }),
    ]
}

fn agent() -> impl Strategy<Value = AgentContext> {
    (
        ".{0,10}",
        prop::option::of(prop_oneof![
            Just("support".to_owned()),
            Just("engineering".to_owned()),
            ".{0,6}"
        ]),
        0u32..6,
        prop::option::of(".{0,6}"),
    )
        .prop_map(|(id, team, depth, parent)| AgentContext {
            id,
            team,
            depth,
            parent,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_gets_a_decision_that_names_its_rule(agent in agent(), action in action(), secs in 0i64..4_102_444_800) {
        let set = &*EXAMPLES;
        let now = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
        let verdict = set.evaluate(&Request { agent: &agent, action: &action, now });
        prop_assert!(!verdict.rule.is_empty());
        prop_assert!(!verdict.reason.is_empty());
        for policy in set.policies() {
            let single = policy.evaluate(&Request { agent: &agent, action: &action, now });
            prop_assert!(!single.rule.is_empty());
            // The cascade is never less restrictive than a covering policy.
            if policy.scope().covers(&agent) {
                prop_assert!(verdict.decision >= single.decision);
            }
        }
    }

    #[test]
    fn a_delegated_decision_is_never_more_permissive_than_any_ancestor(
        agent in agent(),
        ancestors in prop::collection::vec(agent(), 0..4),
        action in action(),
    ) {
        let set = &*EXAMPLES;
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let verdict = set.evaluate_delegated(&Request { agent: &agent, action: &action, now }, &ancestors);
        for who in ancestors.iter().chain([&agent]) {
            let own = set.evaluate(&Request { agent: who, action: &action, now });
            prop_assert!(verdict.decision >= own.decision, "{who:?}: {own:?} vs {verdict:?}");
        }
        prop_assert_eq!(verdict.mode, set.mode_for(&agent));
    }

    #[test]
    fn loading_arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = Policy::parse(&text);
    }

    #[test]
    fn loading_mutated_policies_never_panics(cut in 0usize..2000, insert in ".{0,12}") {
        let source = read(&data_dir().join("policies/everything.yaml"));
        let mut at = cut.min(source.len());
        while !source.is_char_boundary(at) { at -= 1; }
        let mutated = format!("{}{insert}{}", &source[..at], &source[at..]);
        if let Err(err) = Policy::parse(&mutated) {
            prop_assert!(!err.diagnostics().is_empty());
            prop_assert!(err.diagnostics().iter().all(|d| d.line >= 1 && d.col >= 1));
        }
    }
}

/// Fragments of CEL, valid and not, to build expressions from.
fn cel_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("args"),
        Just("agent"),
        Just("tool"),
        Just("now"),
        Just("action"),
        Just("."),
        Just("path"),
        Just("depth"),
        Just("startsWith("),
        Just("contains("),
        Just("matches("),
        Just("size("),
        Just("has("),
        Just("timestamp("),
        Just("int("),
        Just(")"),
        Just("("),
        Just("["),
        Just("]"),
        Just("{"),
        Just("}"),
        Just(":"),
        Just(","),
        Just("\""),
        Just("'"),
        Just("\"/etc/\""),
        Just("\"[\""),
        Just("1"),
        Just("-9223372036854775808"),
        Just("1.5e308"),
        Just("0u"),
        Just("true"),
        Just("null"),
        Just("=="),
        Just("!="),
        Just("<"),
        Just(">="),
        Just("&&"),
        Just("||"),
        Just("!"),
        Just("-"),
        Just("+"),
        Just("*"),
        Just("/"),
        Just("%"),
        Just("?"),
        Just(" in "),
        Just(".all(x, "),
        Just(".exists(x, "),
        Just(".map(x, "),
        Just("x"),
        Just("b\"\\xff\""),
        Just("\\"),
        Just("`"),
        Just("é"),
        Just(" "),
    ];
    prop::collection::vec(token, 1..16).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_conditions_never_panic_to_load_or_evaluate(expr in cel_soup(), args in json_value()) {
        let yaml = format!(
            "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {{name: p}}\nspec:\n  tools:\n    t: {{deny_if: '{}'}}\n",
            expr.replace('\'', "''")
        );
        if let Ok(policies) = Policy::parse(&yaml) {
            let set = PolicySet::new(policies);
            let agent = AgentContext::new("a");
            let action = Action::ToolCall { tool: "t".into(), args };
            let now = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
            let verdict = set.evaluate(&Request { agent: &agent, action: &action, now });
            prop_assert!(verdict.rule.starts_with("tools.t"));
        }
    }
}
