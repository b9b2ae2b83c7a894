//! CEL conditions (`deny_if`, `requires_approval_if`): compiled once at load, evaluated against
//! the request. A condition that cannot be evaluated counts as true, so errors fail closed.

use std::sync::{Arc, OnceLock};

use aa_core::{Action, AgentContext};
use cel::{Context, Env, Program, Value};
use chrono::{DateTime, Utc};

/// The variables a condition may use.
pub(crate) const VARIABLES: [&str; 5] = ["tool", "args", "agent", "action", "now"];

/// CEL's standard functions and macros; anything else is reported at load, not discovered by a
/// fail-closed deny in production.
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "max",
    "min",
];

/// Longest expression accepted, in bytes, and deepest bracket nesting. The CEL parser and
/// evaluator recurse over the expression, so unbounded input could exhaust a thread's stack
/// (an abort, not an error); these bounds keep the worst case well inside a 2 MiB stack.
const MAX_LEN: usize = 4096;
const MAX_NESTING: usize = 12;

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled condition.
#[derive(Debug)]
pub(crate) struct Condition {
    source: String,
    program: Program,
    uses: [bool; 5],
}

/// Where a compile error lies within the expression (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConditionError {
    pub(crate) line: usize,
    pub(crate) col: usize,
    pub(crate) message: String,
}

impl ConditionError {
    /// An error about `name`, located at its first use as a whole identifier in `source`.
    fn at_name(source: &str, name: &str, message: String) -> Self {
        let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let offset = source
            .match_indices(name)
            .find(|(i, _)| {
                let before = source[..*i].chars().next_back();
                let after = source[i + name.len()..].chars().next();
                !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
            })
            .map_or(0, |(i, _)| i);
        let prefix = &source[..offset];
        let line = prefix.matches('\n').count() + 1;
        let col = prefix
            .rsplit('\n')
            .next()
            .unwrap_or_default()
            .chars()
            .count()
            + 1;
        ConditionError { line, col, message }
    }
}

impl Condition {
    pub(crate) fn compile(source: &str) -> Result<Condition, ConditionError> {
        if source.trim().is_empty() {
            return Err(ConditionError {
                line: 1,
                col: 1,
                message: "empty expression".into(),
            });
        }
        check_bounds(source)?;
        let program = env().compile(source).map_err(|errors| {
            let first = errors.errors.first();
            let (line, col) = first.map_or((1, 1), |e| (e.pos.0.max(1), e.pos.1.max(1)));
            let message = first.map_or_else(|| "invalid expression".to_owned(), |e| e.msg.clone());
            ConditionError {
                line: line as usize,
                col: col as usize,
                message,
            }
        })?;
        let refs = program.references();
        let mut unknown: Vec<ConditionError> = Vec::new();
        for var in refs.variables() {
            if !VARIABLES.contains(&var) {
                let hint = crate::suggest::did_you_mean(var, &VARIABLES);
                let message = format!(
                    "unknown variable \"{var}\" (conditions see {}){hint}",
                    VARIABLES.join(", ")
                );
                unknown.push(ConditionError::at_name(source, var, message));
            }
        }
        for function in refs.functions() {
            let is_operator = !function.starts_with(|c: char| c.is_ascii_alphabetic());
            if !is_operator && !FUNCTIONS.contains(&function) {
                let hint = crate::suggest::did_you_mean(function, FUNCTIONS);
                let message = format!("unknown function \"{function}\"{hint}");
                unknown.push(ConditionError::at_name(source, function, message));
            }
        }
        if let Some(first) = unknown.into_iter().min_by_key(|e| (e.line, e.col)) {
            return Err(first);
        }
        let uses = VARIABLES.map(|v| refs.has_variable(v));
        Ok(Condition {
            source: source.to_owned(),
            program,
            uses,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }
}

/// Rejects expressions too long or too deeply nested to parse safely.
fn check_bounds(source: &str) -> Result<(), ConditionError> {
    if source.len() > MAX_LEN {
        let message = format!(
            "expression is {} bytes long; the limit is {MAX_LEN}",
            source.len()
        );
        return Err(ConditionError {
            line: 1,
            col: 1,
            message,
        });
    }
    let (mut depth, mut quote, mut escaped) = (0usize, None, false);
    let (mut line, mut col) = (1, 0);
    for c in source.chars() {
        col += 1;
        match (quote, c) {
            (_, '\n') => (line, col) = (line + 1, 0),
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    let message = format!("brackets nest deeper than {MAX_NESTING} levels");
                    return Err(ConditionError { line, col, message });
                }
            }
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    Ok(())
}

/// The request, as conditions see it.
#[derive(Debug)]
pub(crate) struct Input<'r> {
    pub(crate) tool: &'r str,
    pub(crate) args: &'r serde_json::Value,
    pub(crate) agent: &'r AgentContext,
    pub(crate) action: &'r Action,
    pub(crate) now: DateTime<Utc>,
}

impl Input<'_> {
    fn value(&self, name: &str) -> Result<Value, String> {
        let converted = match name {
            "tool" => return Ok(Value::from(self.tool)),
            "now" => return Ok(Value::Timestamp(self.now.fixed_offset())),
            "agent" => {
                let text = |s: &Option<String>| s.as_deref().map_or(Value::Null, Value::from);
                let agent = std::collections::HashMap::from([
                    ("id", Value::from(self.agent.id.as_str())),
                    ("team", text(&self.agent.team)),
                    ("depth", Value::Int(i64::from(self.agent.depth))),
                    ("parent", text(&self.agent.parent)),
                ]);
                return Ok(Value::from(agent));
            }
            "args" => cel::to_value(self.args),
            "action" => cel::to_value(self.action),
            other => return Err(format!("unknown variable \"{other}\"")),
        };
        converted.map_err(|e| format!("{name} cannot be given to the condition: {e}"))
    }
}

/// What conditions are evaluated against. Variables are converted to CEL values on first use
/// and shared by every condition evaluated for the same request.
pub(crate) struct Activation<'r> {
    input: Input<'r>,
    context: Context<'static, 'static>,
    bound: [bool; 5],
}

impl std::fmt::Debug for Activation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl<'r> Activation<'r> {
    pub(crate) fn new(input: Input<'r>) -> Self {
        Activation {
            input,
            context: Context::with_env(Arc::clone(env())),
            bound: [false; 5],
        }
    }

    /// Evaluates to `Ok(bool)`, or `Err(why)` when the expression cannot be evaluated (a missing
    /// key, a wrong type, a non-boolean result) — callers treat that as true.
    pub(crate) fn evaluate(&mut self, condition: &Condition) -> Result<bool, String> {
        for (i, name) in VARIABLES.iter().enumerate() {
            if condition.uses[i] && !self.bound[i] {
                let value = self.input.value(name)?;
                self.context.add_variable_from_value(*name, value);
                self.bound[i] = true;
            }
        }
        match condition.program.execute(&self.context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(_) => Err("the condition returned a value that is not a boolean".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str, args: serde_json::Value) -> Result<bool, String> {
        let agent = AgentContext {
            id: "bot".into(),
            team: Some("support".into()),
            depth: 1,
            parent: None,
        };
        let action = Action::ToolCall {
            tool: "shell".into(),
            args: args.clone(),
        };
        let input = Input {
            tool: "shell",
            args: &args,
            agent: &agent,
            action: &action,
            now: Utc::now(),
        };
        Activation::new(input).evaluate(&Condition::compile(src).unwrap())
    }

    #[test]
    fn evaluates_over_every_variable() {
        let args = serde_json::json!({"command": "sudo rm -rf /", "n": 3});
        assert_eq!(
            eval(r#"args.command.contains("sudo")"#, args.clone()),
            Ok(true)
        );
        assert_eq!(
            eval(r#"tool == "shell" && args.n > 2"#, args.clone()),
            Ok(true)
        );
        assert_eq!(
            eval(
                r#"agent.team == "support" && agent.depth == 1"#,
                args.clone()
            ),
            Ok(true)
        );
        assert_eq!(
            eval(r#"action.type == "tool_call""#, args.clone()),
            Ok(true)
        );
        assert_eq!(
            eval(r#"now > timestamp("2000-01-01T00:00:00Z")"#, args.clone()),
            Ok(true)
        );
        assert_eq!(eval(r#"has(args.path)"#, args), Ok(false));
    }

    #[test]
    fn unevaluable_conditions_are_errors() {
        let args = serde_json::json!({"command": 7});
        let missing = eval(r#"args.path.startsWith("/etc/")"#, args.clone()).unwrap_err();
        assert!(missing.contains("path"), "{missing}");
        assert!(eval(r#"args.command.contains("x")"#, args.clone()).is_err());
        assert!(
            eval("args.command", args)
                .unwrap_err()
                .contains("not a boolean")
        );
    }

    #[test]
    fn compile_errors_are_located_and_named() {
        let err = Condition::compile("args.command.contains(").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.col > 1, "{err:?}");
        let err = Condition::compile(r#"argz.x == 1"#).unwrap_err();
        assert!(
            err.message.contains(r#"did you mean "args"?"#),
            "{}",
            err.message
        );
        let err = Condition::compile(r#"args.p.startswith("/")"#).unwrap_err();
        assert!(
            err.message.contains(r#"did you mean "startsWith"?"#),
            "{}",
            err.message
        );
        assert!(Condition::compile("  ").is_err());
    }

    #[test]
    fn bounds_reject_what_could_exhaust_the_stack() {
        let deep = format!("{}true{}", "(".repeat(13), ")".repeat(13));
        let err = Condition::compile(&deep).unwrap_err();
        assert_eq!((err.line, err.col), (1, 13), "{err:?}");
        assert!(
            err.message.contains("nest deeper than 12"),
            "{}",
            err.message
        );
        // Brackets inside string literals do not count.
        assert!(Condition::compile(&format!("args.x == \"{}\"", "(".repeat(50))).is_ok());
        let long = vec!["false"; 700].join(" || ");
        assert!(
            Condition::compile(&long)
                .unwrap_err()
                .message
                .contains("limit is 4096")
        );
    }

    /// The worst shapes within the bounds compile and evaluate on a 2 MiB stack (the default
    /// for spawned threads and tokio workers), in whatever profile the tests run.
    #[test]
    fn worst_case_expressions_fit_a_small_stack() {
        let nested = format!("{}true{}", "(".repeat(12), ")".repeat(12));
        let lists = format!("{}{} == []", "[".repeat(12), "]".repeat(12));
        let chain = vec!["false"; 4096 / 9].join(" || ");
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for src in [nested, lists, chain] {
                    let _ = eval(&src, serde_json::json!({}));
                }
            })
            .unwrap();
        assert!(handle.join().is_ok());
    }
}
