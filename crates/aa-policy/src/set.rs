//! The cascade: every policy whose scope covers the agent applies; the most restrictive answer
//! wins (deny > pending > allow) and names its rule.

use aa_core::{AgentContext, CustomPattern, Decision, Mode, Verdict};

use crate::eval::Request;
use crate::policy::{Budget, Policy, RateLimits, Scope, ToolRule};

/// Whose spend a budget caps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// An agent and everything it spawned.
    Agent(String),
    /// A team's agents.
    Team(String),
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::Agent(id) => write!(f, "agent:{id}"),
            Account::Team(id) => write!(f, "team:{id}"),
        }
    }
}

/// How long an approval waits when no policy says: five minutes.
pub const DEFAULT_APPROVAL_TIMEOUT_S: u32 = 300;

/// How strict a mode is: enforce > observe > disabled.
fn strictness(mode: Mode) -> u8 {
    match mode {
        Mode::Enforce => 2,
        Mode::Observe => 1,
        Mode::Disabled => 0,
    }
}

/// Policies evaluated together, ordered from least to most specific scope.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// Builds a set; the order given does not matter.
    pub fn new(mut policies: Vec<Policy>) -> Self {
        // By specificity, then by id, so the answer never depends on the order files were given.
        policies.sort_by_cached_key(|p| (p.scope().specificity(), p.id()));
        PolicySet { policies }
    }

    /// The custom patterns (`spec.data.patterns`) of every policy, for the scanner.
    pub fn patterns(&self) -> Vec<CustomPattern> {
        self.policies
            .iter()
            .filter_map(Policy::data)
            .flat_map(|data| data.patterns.iter().cloned())
            .collect()
    }

    /// The policies, least specific first.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// How long an approval asked for `agent` waits: `spec.approvals.timeout_seconds` of the
    /// most specific policy covering it that sets one (the shortest among equals), else
    /// [`DEFAULT_APPROVAL_TIMEOUT_S`].
    pub fn approval_timeout_s_for(&self, agent: &aa_core::AgentContext) -> u32 {
        self.policies
            .iter()
            .filter(|p| p.scope().covers(agent))
            .filter_map(|p| Some((p.scope().specificity(), p.approval_timeout_s()?)))
            .max_by_key(|(specificity, seconds)| (*specificity, std::cmp::Reverse(*seconds)))
            .map_or(DEFAULT_APPROVAL_TIMEOUT_S, |(_, seconds)| seconds)
    }

    /// The mode for an agent: set by the most specific covering policy that sets one; where
    /// policies of equal specificity disagree, the strictest (enforce > observe > disabled).
    /// With none set, `enforce`.
    pub fn mode_for(&self, agent: &aa_core::AgentContext) -> Mode {
        self.policies
            .iter()
            .filter(|p| p.scope().covers(agent))
            .filter_map(|p| Some((p.scope().specificity(), strictness(p.mode()?), p.mode()?)))
            .max_by_key(|(specificity, strict, _)| (*specificity, *strict))
            .map_or(Mode::Enforce, |(_, _, mode)| mode)
    }

    /// The mode for an agent others spawned: the strictest of its own and its ancestors'
    /// (`ancestors` as in [`evaluate_delegated`](Self::evaluate_delegated)). A child put in an
    /// observed or disabled team by an enforced parent is enforced: acting unstopped is a
    /// right its parent lacks.
    pub fn mode_for_delegated(
        &self,
        agent: &aa_core::AgentContext,
        ancestors: &[aa_core::AgentContext],
    ) -> Mode {
        std::iter::once(agent)
            .chain(ancestors)
            .map(|a| self.mode_for(a))
            .max_by_key(|m| strictness(*m))
            .unwrap_or(Mode::Enforce)
    }

    /// The tool entries that govern `tool` for `agent` and set a call-rate limit (per agent or
    /// per team), with their policies. Each is counted (per-agent limits by the runtime,
    /// team limits by the gateway); every one must have room for the call to go ahead.
    pub fn rate_limits<'a>(
        &'a self,
        agent: &'a aa_core::AgentContext,
        tool: &'a str,
    ) -> impl Iterator<Item = (&'a Policy, &'a ToolRule)> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.scope().covers(agent))
            .filter_map(move |p| Some((p, p.tool_rule(tool)?)))
            .filter(|(_, rule)| {
                rule.limits() != RateLimits::default()
                    || rule.team_limits() != RateLimits::default()
            })
    }

    /// The budgets capping one account's spend, with their policies. An agent's account holds
    /// what it and everything it spawned spent; `global` budgets cap every agent's account and
    /// `agent:<id>` budgets that agent's. A team's account holds what its agents spent;
    /// `team:<id>` budgets cap it.
    pub fn budgets_for<'a>(
        &'a self,
        account: &'a Account,
    ) -> impl Iterator<Item = (&'a Policy, &'a Budget)> + 'a {
        self.policies.iter().filter_map(move |p| {
            let caps = match (p.scope(), account) {
                (Scope::Global, Account::Agent(_)) => true,
                (Scope::Agent(id), Account::Agent(agent)) => id == agent,
                (Scope::Team(id), Account::Team(team)) => id == team,
                _ => false,
            };
            Some((p, p.budget().filter(|_| caps)?))
        })
    }

    /// Whether `agent_id` may register into `team` on its own (a child goes where its parent
    /// is): when any `team:<team>` policy lists `spec.members`, only an agent one of those
    /// lists names; a team no policy lists members for is open. Refused, the ids of the
    /// policies that list the team's members.
    pub fn team_admits(&self, team: &str, agent_id: &str) -> Result<(), Vec<String>> {
        let mut listing = Vec::new();
        for policy in &self.policies {
            if !matches!(policy.scope(), Scope::Team(t) if t == team) {
                continue;
            }
            match policy.admits(agent_id) {
                Some(true) => return Ok(()),
                Some(false) => listing.push(policy.id()),
                None => {}
            }
        }
        if listing.is_empty() {
            Ok(())
        } else {
            Err(listing)
        }
    }

    /// True when any policy sets a budget, so LLM calls must reserve their cost.
    pub fn has_budgets(&self) -> bool {
        self.policies.iter().any(|p| p.budget().is_some())
    }

    /// Decides `request`. With no covering policy the answer is deny (fail closed).
    pub fn evaluate(&self, request: &Request<'_>) -> Verdict {
        let mode = self.mode_for(request.agent);
        let mut winner: Option<(&Policy, crate::eval::Outcome)> = None;
        // Most specific first, so among equally restrictive answers the most specific names the rule.
        for policy in self
            .policies
            .iter()
            .rev()
            .filter(|p| p.scope().covers(request.agent))
        {
            let outcome = policy.outcome(request);
            let better = winner
                .as_ref()
                .is_none_or(|(_, w)| outcome.decision > w.decision);
            if better {
                let is_deny = outcome.decision == Decision::Deny;
                winner = Some((policy, outcome));
                if is_deny {
                    break;
                }
            }
        }
        match winner {
            Some((policy, o)) => Verdict {
                decision: o.decision,
                rule: o.rule,
                reason: o.reason,
                policy: policy.id(),
                mode,
            },
            None => Verdict {
                decision: Decision::Deny,
                rule: "default".to_owned(),
                reason: format!("no policy applies to agent \"{}\"", request.agent.id),
                policy: String::new(),
                mode,
            },
        }
    }

    /// Decides `request` for an agent others spawned: its own answer, bounded by each
    /// ancestor's answer for the same action, so a child never gets a right its parent lacks.
    /// `ancestors` is the chain above the agent (the root first). The most restrictive answer
    /// wins; one that comes from an ancestor says so. The mode is
    /// [`mode_for_delegated`](Self::mode_for_delegated)'s.
    pub fn evaluate_delegated(&self, request: &Request<'_>, ancestors: &[AgentContext]) -> Verdict {
        let mut verdict = Verdict {
            mode: self.mode_for_delegated(request.agent, ancestors),
            ..self.evaluate(request)
        };
        // Nearest first: among equally restrictive bounds, the parent's is named.
        for ancestor in ancestors.iter().rev() {
            if verdict.decision == Decision::Deny {
                break;
            }
            let theirs = self.evaluate(&Request {
                agent: ancestor,
                ..*request
            });
            if theirs.decision > verdict.decision {
                verdict = Verdict {
                    reason: format!(
                        "inherited from ancestor \"{}\": {}",
                        ancestor.id, theirs.reason
                    ),
                    mode: verdict.mode,
                    ..theirs
                };
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use aa_core::Action;

    use super::*;

    const POLICIES: &str = r#"
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: everyone}
spec:
  scope: global
  default: allow
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: sandbox}
spec:
  scope: team:sandbox
  default: allow
  tools:
    shell: {allow: false}
    deploy: {requires_approval_if: 'true'}
"#;

    fn agent(id: &str, team: Option<&str>, depth: u32) -> AgentContext {
        AgentContext {
            team: team.map(Into::into),
            depth,
            ..AgentContext::new(id)
        }
    }

    fn decide(set: &PolicySet, who: &AgentContext, above: &[AgentContext], tool: &str) -> Verdict {
        let action = Action::ToolCall {
            tool: tool.into(),
            args: serde_json::json!({}),
        };
        set.evaluate_delegated(
            &Request {
                agent: who,
                action: &action,
                now: chrono::DateTime::UNIX_EPOCH,
            },
            above,
        )
    }

    #[test]
    fn a_child_gets_no_right_its_ancestors_lack() {
        let set = PolicySet::new(Policy::parse(POLICIES).unwrap());
        let root = agent("root", Some("sandbox"), 0);
        let lead = agent("lead", Some("builders"), 1);
        let child = agent("child", Some("builders"), 2);
        assert_eq!(decide(&set, &child, &[], "shell").decision, Decision::Allow);
        let bounded = decide(&set, &child, &[root.clone(), lead.clone()], "shell");
        assert_eq!(bounded.decision, Decision::Deny);
        assert!(
            bounded
                .reason
                .starts_with("inherited from ancestor \"root\": "),
            "{}",
            bounded.reason
        );
        assert_eq!(bounded.mode, Mode::Enforce);
        assert_eq!(
            decide(&set, &child, &[root.clone(), lead.clone()], "search").decision,
            Decision::Allow,
            "what every ancestor may do, the child may too"
        );
        let pending = decide(&set, &child, &[root], "deploy");
        assert_eq!(pending.decision, Decision::Pending);
        assert!(
            pending.reason.starts_with("inherited"),
            "{}",
            pending.reason
        );
        let sandboxed = agent("boxed", Some("sandbox"), 2);
        let own = decide(&set, &sandboxed, &[lead], "deploy");
        assert_eq!(own.decision, Decision::Pending);
        assert!(
            !own.reason.starts_with("inherited"),
            "the child's own answer"
        );
    }

    /// Acting unstopped is a right too: a child an enforced parent put in an observed or
    /// disabled team is enforced, bounds and its own answers alike.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_child_is_enforced_where_an_ancestor_is() {
        let source = r#"
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: prod}
spec:
  scope: team:prod
  mode: enforce
  default: allow
  tools:
    shell: {allow: false}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: sandbox}
spec:
  scope: team:sandbox
  mode: observe
  default: allow
  tools:
    curl: {allow: false}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: lab}
spec:
  scope: team:lab
  mode: disabled
  default: allow
"#;
        let set = PolicySet::new(Policy::parse(source).unwrap());
        let root = agent("root", Some("prod"), 0);
        let boxed = agent("boxed", Some("sandbox"), 1);
        let bounded = decide(&set, &boxed, std::slice::from_ref(&root), "shell");
        assert_eq!(
            (bounded.decision, bounded.mode),
            (Decision::Deny, Mode::Enforce)
        );
        let own = decide(&set, &boxed, std::slice::from_ref(&root), "curl");
        assert_eq!((own.decision, own.mode), (Decision::Deny, Mode::Enforce));
        // Alone, or under an observed parent, the team's own mode holds.
        assert_eq!(decide(&set, &boxed, &[], "shell").mode, Mode::Observe);
        let lab = agent("lab", Some("lab"), 2);
        assert_eq!(set.mode_for_delegated(&lab, &[]), Mode::Disabled);
        assert_eq!(
            set.mode_for_delegated(&lab, std::slice::from_ref(&boxed)),
            Mode::Observe
        );
        assert_eq!(set.mode_for_delegated(&lab, &[root, boxed]), Mode::Enforce);
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn budgets_cap_agents_globally_or_by_id_and_teams_by_team() {
        let source = r#"
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: everyone}
spec: {scope: global, default: allow, budget: {daily_usd: 10}}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: lead}
spec:
  scope: agent:lead
  schedule: {active_hours: {start: "08:00", end: "20:00", timezone: Asia/Kolkata}}
  budget: {monthly_usd: 100, action_on_exceed: pending}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: ops}
spec: {scope: team:ops, budget: {daily_usd: 50, timezone: America/New_York}}
"#;
        let set = PolicySet::new(Policy::parse(source).unwrap());
        assert!(set.has_budgets());
        let names = |account: Account| {
            set.budgets_for(&account)
                .map(|(p, b)| (p.name().to_owned(), b.timezone.name().to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Account::Agent("lead".into())),
            [
                ("everyone".into(), "UTC".into()),
                ("lead".into(), "Asia/Kolkata".into())
            ]
        );
        assert_eq!(
            names(Account::Agent("worker".into())),
            [("everyone".into(), "UTC".into())]
        );
        assert_eq!(
            names(Account::Team("ops".into())),
            [("ops".into(), "America/New_York".into())]
        );
        assert!(names(Account::Team("dev".into())).is_empty());
        assert_eq!(Account::Team("ops".into()).to_string(), "team:ops");
    }

    #[test]
    fn a_team_that_lists_members_admits_only_them() {
        let source = r#"
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: payments, version: "2"}
spec: {scope: team:payments, mode: enforce, members: ["billing-*", refund-bot]}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: payments-oncall}
spec: {scope: team:payments, members: [pager]}
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: lab}
spec: {scope: team:lab, mode: observe}
"#;
        let set = PolicySet::new(Policy::parse(source).unwrap());
        for admitted in ["billing-eu", "refund-bot", "pager"] {
            assert_eq!(set.team_admits("payments", admitted), Ok(()), "{admitted}");
        }
        assert_eq!(
            set.team_admits("payments", "refund-bot-2"),
            Err(vec![
                "payments-oncall@0".to_owned(),
                "payments@2".to_owned()
            ])
        );
        // A team no policy lists members for is open, as is one with no policy at all.
        assert_eq!(set.team_admits("lab", "anyone"), Ok(()));
        assert_eq!(set.team_admits("nowhere", "anyone"), Ok(()));
    }
}
