//! Evaluation of one policy against one request. Never fails: every problem becomes a deny
//! that says why.

use aa_core::{Action, AgentContext, Decision, FileOperation, Mode, Verdict};
use chrono::{DateTime, Utc};

use crate::condition::{Activation, Condition, Input};
use crate::pattern::{PathError, normalize_path, parse_host, under_prefix};
use crate::policy::{Policy, ToolRule};

/// What is being decided: an agent, an action, and the time (given, never read from a clock,
/// so evaluation is pure and repeatable).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who acts.
    pub agent: &'a AgentContext,
    /// What it wants to do.
    pub action: &'a Action,
    /// When.
    pub now: DateTime<Utc>,
}

/// One policy's answer, before the cascade picks a winner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) decision: Decision,
    pub(crate) rule: String,
    pub(crate) reason: String,
}

fn outcome(decision: Decision, rule: impl Into<String>, reason: impl Into<String>) -> Outcome {
    Outcome {
        decision,
        rule: rule.into(),
        reason: reason.into(),
    }
}

impl Policy {
    /// Evaluates this policy alone (no cascade) and names the rule that decided.
    pub fn evaluate(&self, request: &Request<'_>) -> Verdict {
        let o = self.outcome(request);
        Verdict {
            decision: o.decision,
            rule: o.rule,
            reason: o.reason,
            policy: self.id(),
            mode: self.mode.unwrap_or(Mode::Enforce),
        }
    }

    pub(crate) fn outcome(&self, request: &Request<'_>) -> Outcome {
        if let Some(o) = self.gates(request) {
            return o;
        }
        match request.action {
            Action::ToolCall { tool, args } => self.tool_call(request, tool, args),
            Action::Network { host, port, .. } => self.network_call(host, *port),
            Action::File { operation, path } => self.file_op(*operation, path),
            Action::LlmCall {
                model,
                token_estimate,
            } => self.llm_call(model, *token_estimate),
            Action::ProcessExec { command, .. } => self.process_exec(command),
            Action::AgentSpawn { .. } => match self.max_depth {
                Some(max) => outcome(
                    Decision::Allow,
                    "delegation.max_depth",
                    format!(
                        "a child at depth {} is within max_depth {max}",
                        request.agent.depth + 1
                    ),
                ),
                None => self.fallback("no delegation section", "agent spawns"),
            },
        }
    }

    /// Checks that apply to every action: delegation depth, then the schedule.
    fn gates(&self, request: &Request<'_>) -> Option<Outcome> {
        if let Some(max) = self.max_depth {
            let depth = request.agent.depth;
            if depth > max {
                return Some(outcome(
                    Decision::Deny,
                    "delegation.max_depth",
                    format!("agent depth {depth} exceeds max_depth {max}"),
                ));
            }
            if matches!(request.action, Action::AgentSpawn { .. }) && depth.saturating_add(1) > max
            {
                return Some(outcome(
                    Decision::Deny,
                    "delegation.max_depth",
                    format!(
                        "spawning would create depth {}, beyond max_depth {max}",
                        depth.saturating_add(1)
                    ),
                ));
            }
        }
        if let Some(schedule) = &self.schedule
            && !schedule.is_active(request.now)
        {
            return Some(outcome(
                Decision::Deny,
                "schedule.active_hours",
                format!("outside active hours ({})", schedule.describe()),
            ));
        }
        None
    }

    /// The answer when no rule covers `subject`: the policy's `default`.
    fn fallback(&self, why: &str, subject: &str) -> Outcome {
        outcome(
            self.default,
            "default",
            format!(
                "{why} covers {subject}; the policy default is {}",
                self.default
            ),
        )
    }

    fn tool_call(&self, request: &Request<'_>, tool: &str, args: &serde_json::Value) -> Outcome {
        let Some(rule) = self.tools.find(tool) else {
            let why = if self.tools.is_empty() {
                "no tools section"
            } else {
                "no tools entry"
            };
            return self.fallback(why, &format!("tool \"{tool}\""));
        };
        let base = format!("tools.{}", rule.key());
        if !rule.allow {
            return outcome(
                Decision::Deny,
                format!("{base}.allow"),
                format!("tool \"{tool}\" is not allowed"),
            );
        }
        let input = Input {
            tool,
            args,
            agent: request.agent,
            action: request.action,
            now: request.now,
        };
        // One activation for both conditions: variables are converted once.
        let mut activation = Activation::new(input);
        if let Some(o) = check(
            &rule.deny_if,
            &mut activation,
            Decision::Deny,
            &base,
            "deny_if",
        ) {
            return o;
        }
        if let Some(o) = check(
            &rule.requires_approval_if,
            &mut activation,
            Decision::Pending,
            &base,
            "requires_approval_if",
        ) {
            return o;
        }
        allowed_tool(rule, tool, base)
    }

    fn network_call(&self, host: &str, port: Option<u16>) -> Outcome {
        let Some(rules) = &self.network else {
            return self.fallback("no network section", "network calls");
        };
        let parsed = match parse_host(host) {
            Ok(parsed) => parsed,
            Err(why) => return outcome(Decision::Deny, "network.host", why),
        };
        if let (Some(given), Some(written)) = (port, parsed.port)
            && given != written
        {
            let why = format!("the host names port {written} but the call is to port {given}");
            return outcome(Decision::Deny, "network.host", why);
        }
        let (host, port) = (parsed.name, port.or(parsed.port));
        if let Some(p) = rules.deny.as_ref().and_then(|d| d.find(&host)) {
            let why = format!("host \"{host}\" matches denied \"{p}\"");
            return outcome(Decision::Deny, "network.deny", why);
        }
        if let Some(ports) = &rules.ports {
            match port {
                Some(port) if ports.contains(&port) => {}
                Some(port) => {
                    let why = format!("port {port} is not in the allowed ports");
                    return outcome(Decision::Deny, "network.ports", why);
                }
                None => {
                    let why = "the call names no port and the policy allows only listed ports";
                    return outcome(Decision::Deny, "network.ports", why);
                }
            }
        }
        match &rules.allow {
            Some(allow) => match allow.find(&host) {
                Some(p) => outcome(
                    Decision::Allow,
                    "network.allow",
                    format!("host \"{host}\" matches \"{p}\""),
                ),
                None => outcome(
                    Decision::Deny,
                    "network.allow",
                    format!("host \"{host}\" is not in the allow list"),
                ),
            },
            None => outcome(
                Decision::Allow,
                "network.deny",
                format!("host \"{host}\" matches no denied host"),
            ),
        }
    }

    fn file_op(&self, operation: FileOperation, path: &str) -> Outcome {
        let op = operation.as_str();
        let prefixes = self.files.as_ref().map(|f| match operation {
            FileOperation::Read => &f.read,
            FileOperation::Write => &f.write,
            FileOperation::Delete => &f.delete,
        });
        let Some(prefixes) = prefixes else {
            return self.fallback("no files section", &format!("file {op}"));
        };
        let rule = format!("files.{op}");
        // With a files section, an operation must be listed to be allowed at all.
        let Some(prefixes) = prefixes else {
            return outcome(
                Decision::Deny,
                rule,
                format!(
                    "files.{op} is not listed, so nothing may be {}",
                    past(operation)
                ),
            );
        };
        let normalized = match normalize_path(path) {
            Ok(p) => p,
            Err(PathError::Nul) => {
                return outcome(Decision::Deny, rule, "the path contains a NUL byte");
            }
            Err(PathError::Relative) => {
                return outcome(
                    Decision::Deny,
                    rule,
                    format!("the path \"{path}\" is not absolute"),
                );
            }
        };
        match prefixes.iter().find(|p| under_prefix(&normalized, p)) {
            Some(p) => outcome(
                Decision::Allow,
                rule,
                format!("\"{normalized}\" is under \"{p}\""),
            ),
            None => outcome(
                Decision::Deny,
                rule,
                format!("\"{normalized}\" is under no allowed {op} prefix"),
            ),
        }
    }

    fn llm_call(&self, model: &str, token_estimate: Option<u64>) -> Outcome {
        let Some(rules) = &self.llm else {
            return self.fallback("no llm section", "LLM calls");
        };
        if let (Some(max), Some(tokens)) = (rules.max_tokens_per_call, token_estimate)
            && tokens > max
        {
            return outcome(
                Decision::Deny,
                "llm.max_tokens_per_call",
                format!("estimated {tokens} tokens exceed max_tokens_per_call {max}"),
            );
        }
        match &rules.models {
            Some(models) => match models.find(&model.to_ascii_lowercase()) {
                Some(p) => outcome(
                    Decision::Allow,
                    "llm.models",
                    format!("model \"{model}\" matches \"{p}\""),
                ),
                None => outcome(
                    Decision::Deny,
                    "llm.models",
                    format!("model \"{model}\" is not in llm.models"),
                ),
            },
            None => outcome(
                Decision::Allow,
                "llm.max_tokens_per_call",
                "within max_tokens_per_call",
            ),
        }
    }

    fn process_exec(&self, command: &str) -> Outcome {
        let Some(rules) = &self.process else {
            return self.fallback("no process section", "process execs");
        };
        let full = if command.starts_with('/') {
            match normalize_path(command) {
                Ok(path) => path,
                Err(_) => {
                    return outcome(
                        Decision::Deny,
                        "process.command",
                        "the command contains a NUL byte",
                    );
                }
            }
        } else {
            command.to_owned()
        };
        let name = full.rsplit('/').next().unwrap_or(&full);
        // A deny pattern catches the program under any path; an allow pattern naming only the
        // program covers it bare or in a system directory, not a copy planted elsewhere.
        let denied = rules
            .deny
            .as_ref()
            .and_then(|set| set.find(&full).or_else(|| set.find(name)));
        if let Some(p) = denied {
            return outcome(
                Decision::Deny,
                "process.deny",
                format!("\"{full}\" matches denied \"{p}\""),
            );
        }
        let Some(allow) = &rules.allow else {
            return outcome(
                Decision::Allow,
                "process.deny",
                format!("\"{full}\" matches no denied program"),
            );
        };
        let in_system_dir = full
            .rsplit_once('/')
            .is_some_and(|(dir, _)| SYSTEM_BIN_DIRS.contains(&dir));
        match allow
            .find(&full)
            .or_else(|| in_system_dir.then(|| allow.find(name)).flatten())
        {
            Some(p) => outcome(
                Decision::Allow,
                "process.allow",
                format!("\"{full}\" matches \"{p}\""),
            ),
            None => outcome(
                Decision::Deny,
                "process.allow",
                format!("\"{full}\" is not in the allow list"),
            ),
        }
    }
}

/// Directories where a program named by an allow pattern without a path may live.
const SYSTEM_BIN_DIRS: [&str; 6] = [
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

fn past(operation: FileOperation) -> &'static str {
    match operation {
        FileOperation::Read => "read",
        FileOperation::Write => "written",
        FileOperation::Delete => "deleted",
    }
}

/// Evaluates one condition: true, or not evaluable (fail closed), yields `decision`.
fn check(
    cond: &Option<Condition>,
    activation: &mut Activation<'_>,
    decision: Decision,
    base: &str,
    key: &str,
) -> Option<Outcome> {
    let cond = cond.as_ref()?;
    let rule = format!("{base}.{key}");
    match activation.evaluate(cond) {
        Ok(false) => None,
        Ok(true) => Some(outcome(
            decision,
            rule,
            format!("{key} matched: {}", cond.source()),
        )),
        Err(e) => Some(outcome(
            decision,
            rule,
            format!(
                "{key} could not be evaluated ({e}); treated as true: {}",
                cond.source()
            ),
        )),
    }
}

fn allowed_tool(rule: &ToolRule, tool: &str, base: String) -> Outcome {
    let how = if rule.key() == tool {
        String::new()
    } else {
        format!(" by \"{}\"", rule.key())
    };
    outcome(
        Decision::Allow,
        base,
        format!("tool \"{tool}\" is allowed{how}"),
    )
}
