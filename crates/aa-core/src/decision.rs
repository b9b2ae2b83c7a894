//! Decisions: the answer to "may this agent do this?".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The three answers. Ordered by restrictiveness, so `max` picks the one that wins a cascade:
/// `Allow < Pending < Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The action may run.
    Allow,
    /// A human must approve the action before it runs.
    Pending,
    /// The action must not run.
    Deny,
}

impl Decision {
    /// The lowercase name used on every wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Pending => "pending",
            Decision::Deny => "deny",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Decision::Allow),
            "pending" => Ok(Decision::Pending),
            "deny" => Ok(Decision::Deny),
            other => Err(format!(
                "unknown decision \"{other}\" (expected allow, deny or pending)"
            )),
        }
    }
}

/// How decisions are applied to an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A deny stops the action; every failure denies (fail closed).
    #[default]
    Enforce,
    /// Decisions are recorded, never applied.
    Observe,
    /// No checks; events are still recorded.
    Disabled,
}

impl Mode {
    /// The lowercase name used on every wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
            Mode::Disabled => "disabled",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "observe" => Ok(Mode::Observe),
            "disabled" => Ok(Mode::Disabled),
            other => Err(format!(
                "unknown mode \"{other}\" (expected enforce, observe or disabled)"
            )),
        }
    }
}

/// A decision with its provenance: which rule of which policy decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The answer.
    pub decision: Decision,
    /// The rule that decided, as a key path: `tools.shell.requires_approval_if`, `network.deny`,
    /// `default`, ...
    pub rule: String,
    /// A sentence for humans.
    pub reason: String,
    /// The deciding policy as `<name>@<version>`.
    pub policy: String,
    /// The mode the decision applies under.
    pub mode: Mode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictiveness_orders_deny_over_pending_over_allow() {
        assert_eq!(Decision::Allow.max(Decision::Pending), Decision::Pending);
        assert_eq!(Decision::Pending.max(Decision::Deny), Decision::Deny);
        assert_eq!(Decision::Allow.max(Decision::Deny), Decision::Deny);
    }

    #[test]
    fn names_parse_back() {
        for d in [Decision::Allow, Decision::Pending, Decision::Deny] {
            assert_eq!(d.as_str().parse::<Decision>().unwrap(), d);
        }
        for m in [Mode::Enforce, Mode::Observe, Mode::Disabled] {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
        }
        assert!(
            "maybe"
                .parse::<Decision>()
                .unwrap_err()
                .contains("\"maybe\"")
        );
    }
}
