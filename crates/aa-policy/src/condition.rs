//! CEL conditions (`deny_if`, `requires_approval_if`): compiled once at load, evaluated against
//! the request. A condition that cannot be evaluated counts as true, so errors fail closed.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use aa_core::{Action, AgentContext};
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::{Context, Env, Program, Value};
use chrono::{DateTime, Utc};

use crate::native::Native;

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

/// Type names an expression may mention, as in `type(args.n) == int`.
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// Bounds on what the CEL parser and evaluator are given. Both recurse over the expression, so
/// unbounded input could exhaust a thread's stack — an abort, not an error. Measured in a debug
/// build on a 2 MiB stack (tokio's default): parsing survives chains of 400 operators,
/// evaluation trees 48 deep; the bounds stay well inside both.
const MAX_LEN: usize = 2048;
const MAX_NESTING: usize = 12;
const MAX_DEPTH: usize = 32;
const MAX_OPERATORS: usize = 256;

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
    /// The same condition for the native evaluator, when it has that shape.
    native: Option<Native>,
}

/// Where a compile error lies within the expression (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConditionError {
    pub(crate) line: usize,
    pub(crate) col: usize,
    pub(crate) message: String,
}

impl ConditionError {
    fn at_start(message: impl Into<String>) -> Self {
        ConditionError {
            line: 1,
            col: 1,
            message: message.into(),
        }
    }

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
        let (line, col) = line_col(source, offset);
        ConditionError { line, col, message }
    }
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let prefix = source.get(..offset).unwrap_or_default();
    let line = prefix.matches('\n').count() + 1;
    let col = prefix
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    (line, col)
}

impl Condition {
    pub(crate) fn compile(source: &str) -> Result<Condition, ConditionError> {
        if source.trim().is_empty() {
            return Err(ConditionError::at_start("empty expression"));
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
        let shape = inspect(program.expression());
        if shape.depth > MAX_DEPTH {
            return Err(ConditionError::at_start(format!(
                "the expression is nested {} levels deep; the limit is {MAX_DEPTH} (split it into smaller conditions)",
                shape.depth
            )));
        }
        let refs = program.references();
        let mut problems: Vec<ConditionError> = Vec::new();
        for var in refs.variables() {
            let known = VARIABLES.contains(&var)
                || TYPE_NAMES.contains(&var)
                || shape.bound_names.iter().any(|b| b == var);
            if !known {
                let hint = crate::suggest::did_you_mean(var, &VARIABLES);
                let message = format!(
                    "unknown variable \"{var}\" (conditions see {}){hint}",
                    VARIABLES.join(", ")
                );
                problems.push(ConditionError::at_name(source, var, message));
            }
        }
        for function in refs.functions() {
            let is_operator = !function.starts_with(|c: char| c.is_ascii_alphabetic());
            if !is_operator && !FUNCTIONS.contains(&function) {
                let hint = crate::suggest::did_you_mean(function, FUNCTIONS);
                let message = format!("unknown function \"{function}\"{hint}");
                problems.push(ConditionError::at_name(source, function, message));
            }
        }
        for pattern in &shape.regexes {
            if let Err(why) = crate::pattern::check_regex(pattern) {
                let offset = source.find(pattern.as_str()).unwrap_or(0);
                let (line, col) = line_col(source, offset);
                let message = format!("invalid regex in matches(): {why}");
                problems.push(ConditionError { line, col, message });
            }
        }
        if let Some(first) = problems.into_iter().min_by_key(|e| (e.line, e.col)) {
            return Err(first);
        }
        let uses = VARIABLES.map(|v| refs.has_variable(v));
        let native = Native::compile(program.expression());
        Ok(Condition {
            source: source.to_owned(),
            program,
            uses,
            native,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }
}

/// Rejects expressions too long, too nested or with too many operators to parse safely.
fn check_bounds(source: &str) -> Result<(), ConditionError> {
    if source.len() > MAX_LEN {
        return Err(ConditionError::at_start(format!(
            "expression is {} bytes long; the limit is {MAX_LEN}",
            source.len()
        )));
    }
    let (mut depth, mut operators, mut quote, mut escaped) = (0usize, 0usize, None, false);
    for (offset, c) in source.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                operators += 1;
                if depth > MAX_NESTING {
                    let (line, col) = line_col(source, offset);
                    let message = format!("brackets nest deeper than {MAX_NESTING} levels");
                    return Err(ConditionError { line, col, message });
                }
            }
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            (None, '.' | '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '?' | '&' | '|') => {
                operators += 1;
            }
            (None, _) => {}
        }
    }
    if operators > MAX_OPERATORS {
        return Err(ConditionError::at_start(format!(
            "the expression has {operators} operators; the limit is {MAX_OPERATORS}"
        )));
    }
    Ok(())
}

/// What the compiled tree looks like: its depth, the names macros bind (`x` in
/// `args.list.exists(x, x == 1)`), and the constant patterns given to `matches`.
#[derive(Debug, Default)]
struct Shape {
    depth: usize,
    bound_names: Vec<String>,
    regexes: Vec<String>,
}

/// Walks the tree without recursion, so a deep tree cannot overflow the stack here either.
fn inspect(root: &IdedExpr) -> Shape {
    let mut shape = Shape::default();
    let mut stack: Vec<(&IdedExpr, usize)> = vec![(root, 1)];
    while let Some((node, depth)) = stack.pop() {
        shape.depth = shape.depth.max(depth);
        let below = depth + 1;
        match &node.expr {
            Expr::Call(call) => {
                if call.func_name == "matches" {
                    let pattern = if call.target.is_some() {
                        call.args.first()
                    } else {
                        call.args.get(1)
                    };
                    if let Some(IdedExpr {
                        expr: Expr::Literal(LiteralValue::String(s)),
                        ..
                    }) = pattern
                    {
                        shape.regexes.push(s.inner().to_owned());
                    }
                }
                stack.extend(call.target.iter().map(|t| (t.as_ref(), below)));
                stack.extend(call.args.iter().map(|a| (a, below)));
            }
            Expr::Comprehension(c) => {
                shape.bound_names.push(c.iter_var.clone());
                shape.bound_names.extend(c.iter_var2.clone());
                shape.bound_names.push(c.accu_var.clone());
                for e in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    stack.push((e, below));
                }
            }
            Expr::Select(select) => stack.push((&select.operand, below)),
            Expr::List(list) => stack.extend(list.elements.iter().map(|e| (e, below))),
            Expr::Map(map) => stack.extend(
                map.entries
                    .iter()
                    .flat_map(|e| entry(&e.expr))
                    .map(|e| (e, below)),
            ),
            Expr::Struct(st) => stack.extend(
                st.entries
                    .iter()
                    .flat_map(|e| entry(&e.expr))
                    .map(|e| (e, below)),
            ),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    shape
}

fn entry(e: &EntryExpr) -> Vec<&IdedExpr> {
    match e {
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
        EntryExpr::StructField(f) => vec![&f.value],
    }
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
        Ok(match name {
            "tool" => Value::from(self.tool),
            "now" => Value::Timestamp(self.now.fixed_offset()),
            "agent" => {
                let text = |s: &Option<String>| s.as_deref().map_or(Value::Null, Value::from);
                let agent = HashMap::from([
                    ("id", Value::from(self.agent.id.as_str())),
                    ("team", text(&self.agent.team)),
                    ("depth", Value::Int(i64::from(self.agent.depth))),
                    ("parent", text(&self.agent.parent)),
                ]);
                Value::from(agent)
            }
            "args" => json_to_cel(self.args),
            "action" => {
                let json = serde_json::to_value(self.action)
                    .map_err(|e| format!("action cannot be given to the condition: {e}"))?;
                json_to_cel(&json)
            }
            other => return Err(format!("unknown variable \"{other}\"")),
        })
    }
}

/// JSON to CEL. Integers become `int` whenever they fit, so `args.n + 1` works for `n: 3`
/// (a generic serialiser would make non-negative numbers `uint`, and `uint + int` is an error).
fn json_to_cel(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(map) => {
            let entries: HashMap<&str, Value> = map
                .iter()
                .map(|(k, v)| (k.as_str(), json_to_cel(v)))
                .collect();
            Value::from(entries)
        }
    }
}

/// What conditions are evaluated against. Variables are converted to CEL values on first use
/// and shared by every condition evaluated for the same request.
pub(crate) struct Activation<'r> {
    input: Input<'r>,
    /// Built when a condition first needs the interpreter.
    context: Option<Context<'static, 'static>>,
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
            context: None,
            bound: [false; 5],
        }
    }

    /// Evaluates to `Ok(bool)`, or `Err(why)` when the expression cannot be evaluated (a missing
    /// key, a wrong type, a non-boolean result) — callers treat that as true. A condition the
    /// native evaluator is sure of is answered there; the interpreter answers the rest.
    pub(crate) fn evaluate(&mut self, condition: &Condition) -> Result<bool, String> {
        if let Some(answer) = condition
            .native
            .as_ref()
            .and_then(|native| native.evaluate(&self.input).ok())
        {
            return Ok(answer);
        }
        self.interpret(condition)
    }

    /// Evaluates with the CEL interpreter alone.
    fn interpret(&mut self, condition: &Condition) -> Result<bool, String> {
        let context = self
            .context
            .get_or_insert_with(|| Context::with_env(Arc::clone(env())));
        for (i, name) in VARIABLES.iter().enumerate() {
            if condition.uses[i] && !self.bound[i] {
                let value = self.input.value(name)?;
                context.add_variable_from_value(*name, value);
                self.bound[i] = true;
            }
        }
        match condition.program.execute(context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(_) => Err("the condition returned a value that is not a boolean".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool call and its caller, owned, for an [`Input`] to borrow.
    struct Call {
        tool: &'static str,
        args: serde_json::Value,
        agent: AgentContext,
        action: Action,
    }

    impl Call {
        fn new(tool: &'static str, args: serde_json::Value, agent: AgentContext) -> Call {
            let action = Action::ToolCall {
                tool: tool.into(),
                args: args.clone(),
            };
            Call {
                tool,
                args,
                agent,
                action,
            }
        }

        fn input(&self) -> Input<'_> {
            Input {
                tool: self.tool,
                args: &self.args,
                agent: &self.agent,
                action: &self.action,
                now: Utc::now(),
            }
        }
    }

    fn eval(src: &str, args: serde_json::Value) -> Result<bool, String> {
        let agent = AgentContext {
            id: "bot".into(),
            team: Some("support".into()),
            depth: 1,
            parent: None,
        };
        let call = Call::new("shell", args, agent);
        Activation::new(call.input()).evaluate(&Condition::compile(src).unwrap())
    }

    #[test]
    fn evaluates_over_every_variable() {
        let args = serde_json::json!({"command": "sudo rm -rf /", "n": 3, "tags": ["a", "prod"]});
        let cases = [
            r#"args.command.contains("sudo")"#,
            r#"tool == "shell" && args.n > 2"#,
            "args.n + 1 == 4",
            "args.n * -2 < 0",
            r#"agent.team == "support" && agent.depth == 1 && agent.parent == null"#,
            r#"action.type == "tool_call" && action.args.n == 3"#,
            r#"now > timestamp("2000-01-01T00:00:00Z")"#,
            r#"args.tags.exists(t, t == "prod")"#,
            r#"args.tags.all(x, size(x) > 0) && args.tags.map(x, x + "!").size() == 2"#,
            "type(args.n) == int && type(args) == map",
            r#"args.command.matches("^sudo\\s")"#,
            r#"!has(args.path)"#,
        ];
        for src in cases {
            assert_eq!(eval(src, args.clone()), Ok(true), "{src}");
        }
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
        let err = Condition::compile(r#"args.p.matches("[")"#).unwrap_err();
        assert_eq!((err.line, err.col), (1, 17), "{err:?}");
        assert!(
            err.message.starts_with("invalid regex in matches()"),
            "{}",
            err.message
        );
        // A name bound by one macro is not known outside it.
        assert!(Condition::compile("args.l.exists(x, x == 1) && y == 2").is_err());
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
        let long = vec!["false"; 500].join(" || ");
        assert!(
            Condition::compile(&long)
                .unwrap_err()
                .message
                .contains("limit is 2048")
        );
        let chain = vec!["1"; 100].join("+") + " > 0";
        assert!(
            Condition::compile(&chain)
                .unwrap_err()
                .message
                .contains("levels deep")
        );
        let ops = vec!["1"; 300].join("+");
        assert!(
            Condition::compile(&ops)
                .unwrap_err()
                .message
                .contains("operators")
        );
    }

    #[test]
    fn string_tests_are_evaluated_natively_and_the_rest_interpreted() {
        let native = [
            r#"args.path.startsWith("/etc/") || args.path.contains(".ssh")"#,
            r#"!args.path.startsWith("/workspace/")"#,
            r#"args.path.contains("/.git/") && args.path.endsWith("config")"#,
            r#"tool == "crm_export" || tool == "crm_delete_customer""#,
            r#""support" == agent.team && agent.id != "bot" && !(agent.parent == "p")"#,
            r#"args.request.headers.host.endsWith(".internal")"#,
            "agent.depth > 0 || args.retries >= 3 || 2 < args.n",
            r#"args.command.matches("rm\\s+-rf\\s+/(\\s|$)") || args.command.contains("mkfs")"#,
            "true",
        ];
        for src in native {
            assert!(Condition::compile(src).unwrap().native.is_some(), "{src}");
        }
        let interpreted = [
            r#"matches(args.command, "^sudo")"#,
            "double(args.amount_usd) > 100.0 || agent.depth > 0",
            r#"has(args.path) && args.path.startsWith("/")"#,
            r#"args["path"].startsWith("/")"#,
            r#"args.tags.exists(t, t == "prod")"#,
            r#"args.path.startsWith(args.root)"#,
            r#"action.type == "tool_call""#,
            r#"tool.name == "x""#,
            "agent.depth > 0.5",
            "args.n > args.m",
            r#""a" == "a""#,
        ];
        for src in interpreted {
            assert!(Condition::compile(src).unwrap().native.is_none(), "{src}");
        }
    }

    #[test]
    fn the_native_evaluator_answers_strings_and_leaves_the_rest_to_the_interpreter() {
        let args =
            serde_json::json!({"path": "/etc/passwd", "n": 3, "nested": {"host": "db.internal"}});
        let call = Call::new("read_file", args, AgentContext::new("bot"));
        let native = |src: &str| {
            let condition = Condition::compile(src).unwrap();
            condition.native.unwrap().evaluate(&call.input())
        };
        assert_eq!(native(r#"args.path.startsWith("/etc/")"#), Ok(true));
        assert_eq!(
            native(r#"args.nested.host.endsWith(".internal")"#),
            Ok(true)
        );
        assert_eq!(
            native(r#"tool == "shell" || args.path.contains("ssh")"#),
            Ok(false)
        );
        // CEL's answer does not depend on the right side here, whatever it holds.
        assert_eq!(
            native(r#"tool == "read_file" || args.missing == "x""#),
            Ok(true)
        );
        assert_eq!(native("3 >= args.n && agent.depth == 0"), Ok(true));
        assert_eq!(native("args.n != 3"), Ok(false));
        // A number, a missing key and an absent team: the interpreter decides.
        for src in [
            r#"args.n == "3""#,
            r#"agent.depth == "0""#,
            "args.path > 1",
            r#"args.missing.startsWith("/")"#,
            r#"agent.team == "x""#,
            r#"tool == "shell" || args.n.contains("3")"#,
        ] {
            assert_eq!(native(src), Err(crate::native::Unsure), "{src}");
        }
    }

    #[test]
    fn one_activation_serves_native_and_interpreted_conditions_in_either_order() {
        let args = serde_json::json!({"path": "/etc/passwd"});
        let call = Call::new("read_file", args, AgentContext::new("bot"));
        let input = || call.input();
        let native = Condition::compile(r#"args.path.startsWith("/etc/")"#).unwrap();
        let interpreted = Condition::compile(r#"has(args.path) && size(args.path) == 11"#).unwrap();
        assert!(native.native.is_some() && interpreted.native.is_none());
        let mut activation = Activation::new(input());
        assert_eq!(activation.evaluate(&native), Ok(true));
        assert_eq!(activation.evaluate(&interpreted), Ok(true));
        assert_eq!(activation.evaluate(&native), Ok(true));
        let mut activation = Activation::new(input());
        assert_eq!(activation.evaluate(&interpreted), Ok(true));
        assert_eq!(activation.evaluate(&native), Ok(true));
    }

    /// The worst shapes within the bounds compile (or are refused) and evaluate on a 2 MiB
    /// stack — the default for spawned threads and tokio workers — in whatever profile the
    /// tests run.
    #[test]
    fn worst_case_expressions_fit_a_small_stack() {
        let worst = [
            format!("{}true{}", "(".repeat(12), ")".repeat(12)),
            format!("{}{} == []", "[".repeat(12), "]".repeat(12)),
            vec!["false"; 2048 / 9].join(" || "),
            vec!["1"; MAX_OPERATORS].join("+"),
            vec!["1"; MAX_DEPTH - 2].join("+") + " > 0",
            format!("{}args.x", "!".repeat(MAX_OPERATORS)),
            format!("args{}", ".a".repeat(MAX_OPERATORS)),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for src in worst {
                    if let Ok(condition) = Condition::compile(&src) {
                        let call =
                            Call::new("t", serde_json::json!({"x": true}), AgentContext::new("a"));
                        let _ = Activation::new(call.input()).evaluate(&condition);
                        // Most of these have the native shape: the interpreter must fit too.
                        let _ = Activation::new(call.input()).interpret(&condition);
                    }
                }
            })
            .unwrap();
        assert!(handle.join().is_ok());
    }

    mod native_against_interpreter {
        use proptest::prelude::*;

        use super::*;

        fn field() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "tool",
                "args.path",
                "args.a.b",
                "args.n",
                "args.missing",
                "agent.id",
                "agent.team",
                "agent.parent",
                "agent.depth",
            ])
        }

        /// Short texts of few letters, so that tests often hold and often fail.
        fn text() -> impl Strategy<Value = String> {
            "[aé/]{0,2}"
        }

        fn leaf() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::bool::ANY.prop_map(|b| b.to_string()),
                (
                    field(),
                    prop::sample::select(vec!["startsWith", "endsWith", "contains"]),
                    text()
                )
                    .prop_map(|(f, m, t)| format!("{f}.{m}(\"{t}\")")),
                (
                    field(),
                    prop::sample::select(vec!["^a", "é$", "a|/", "^$", ".", "^(?i)A"])
                )
                    .prop_map(|(f, p)| format!("{f}.matches(\"{p}\")")),
                (
                    field(),
                    prop::sample::select(vec!["==", "!="]),
                    text(),
                    prop::bool::ANY
                )
                    .prop_map(|(f, op, t, flip)| if flip {
                        format!("\"{t}\" {op} {f}")
                    } else {
                        format!("{f} {op} \"{t}\"")
                    }),
                (
                    // Mostly fields that hold integers, the odd one a string or missing.
                    prop::sample::select(vec!["agent.depth", "args.n", "args.n", "args.path"]),
                    prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]),
                    prop_oneof![-1i64..4, Just(i64::MAX), Just(i64::MIN)],
                    prop::bool::ANY,
                )
                    .prop_map(|(f, op, n, flip)| if flip {
                        format!("{n} {op} {f}")
                    } else {
                        format!("{f} {op} {n}")
                    }),
            ]
        }

        fn expression() -> impl Strategy<Value = String> {
            leaf().prop_recursive(3, 12, 2, |inner| {
                prop_oneof![
                    inner.clone().prop_map(|e| format!("!({e})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                    (inner.clone(), inner).prop_map(|(a, b)| format!("({a}) || ({b})")),
                ]
            })
        }

        fn json_text() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                text().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
                (-1i64..4).prop_map(serde_json::Value::from),
                Just(serde_json::json!(1.5)),
                Just(serde_json::json!(-0.0)),
                Just(serde_json::json!(u64::MAX)),
                Just(serde_json::json!(i64::MAX)),
                Just(serde_json::json!(i64::MIN)),
                Just(serde_json::json!(true)),
                Just(serde_json::json!(["a"])),
            ]
        }

        fn args() -> impl Strategy<Value = serde_json::Value> {
            let object = (
                prop::option::of(json_text()),
                prop::option::of(prop_oneof![
                    json_text(),
                    prop::option::of(json_text()).prop_map(|b| match b {
                        Some(b) => serde_json::json!({"b": b}),
                        None => serde_json::json!({}),
                    }),
                ]),
                prop::option::of(json_text()),
            )
                .prop_map(|(path, a, n)| {
                    let mut args = serde_json::Map::new();
                    for (key, value) in [("path", path), ("a", a), ("n", n)] {
                        if let Some(value) = value {
                            args.insert(key.to_owned(), value);
                        }
                    }
                    serde_json::Value::Object(args)
                });
            // Now and then `args` is not an object at all, or `path` is one.
            prop_oneof![
                8 => object,
                1 => json_text(),
                1 => Just(serde_json::json!({"path": {"b": "a"}})),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Whatever the native evaluator answers, the interpreter answers too; where it is
            /// unsure, the interpreter's answer (an error included) is what a caller gets.
            #[test]
            fn the_two_agree(
                src in expression(),
                args in args(),
                tool in prop::sample::select(vec!["aé", "/a", ""]),
                team in prop::option::of(text()),
                parent in prop::option::of(text()),
                depth in 0u32..3,
            ) {
                let condition = Condition::compile(&src).unwrap();
                prop_assert!(condition.native.is_some(), "{}", src);
                let call = Call::new(tool, args, AgentContext { id: "é/a".into(), team, depth, parent });
                let input = || call.input();
                let interpreted = Activation::new(input()).interpret(&condition);
                prop_assert_eq!(Activation::new(input()).evaluate(&condition), interpreted.clone());
                if let Some(Ok(native)) = condition.native.as_ref().map(|n| n.evaluate(&input())) {
                    prop_assert_eq!(Ok(native), interpreted);
                }
            }
        }
    }
}
