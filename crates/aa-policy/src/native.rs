//! Conditions of the common shape evaluated without the CEL interpreter: string and integer
//! tests of the request's fields against literals (`args.path.startsWith("/etc/")`,
//! `tool == "crm_export"`, `agent.depth > 0`, `args.command.matches("rm\\s+-rf")`) joined by
//! `!`, `&&` and `||`. The interpreter needs every variable converted to CEL values first (the
//! whole of `args`, however large), a context built per request, and compiles the pattern of
//! `matches` on every call; this reads the one field a test names, in place, against a pattern
//! compiled once.
//!
//! It only ever answers what the interpreter would: a condition outside the shape is not
//! compiled here, and whenever evaluation meets a field that is not of the type it tests (a
//! missing key, a number where a string is tested, a null, a fraction), it gives up and the
//! interpreter decides, errors included.
//! A property test holds the two to the same answers.

use aa_core::AgentContext;
use cel::common::ast::operators::{
    EQUALS, GREATER, GREATER_EQUALS, LESS, LESS_EQUALS, LOGICAL_AND, LOGICAL_NOT, LOGICAL_OR,
    NOT_EQUALS,
};
use cel::common::ast::{Expr, IdedExpr, LiteralValue};

use crate::condition::Input;

/// A condition of the shape this module evaluates.
#[derive(Debug, Clone)]
pub(crate) enum Native {
    Bool(bool),
    Not(Box<Native>),
    And(Box<Native>, Box<Native>),
    Or(Box<Native>, Box<Native>),
    Text {
        subject: Field,
        test: TextTest,
        literal: String,
    },
    Integer {
        subject: Field,
        order: Order,
        literal: i64,
    },
    /// `matches`, with the `regex` crate as the interpreter uses it (`Regex::new`, then
    /// `is_match`; the workspace enables the `cel` crate's `regex` feature, without which the
    /// interpreter would know no `matches`).
    Matches {
        subject: Field,
        pattern: regex::Regex,
    },
}

/// What a string is tested for against a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextTest {
    Equals,
    NotEquals,
    StartsWith,
    EndsWith,
    Contains,
}

/// How an integer compares with a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Order {
    fn of(operator: &str) -> Option<Order> {
        Some(match operator {
            EQUALS => Order::Equal,
            NOT_EQUALS => Order::NotEqual,
            LESS => Order::Less,
            LESS_EQUALS => Order::LessOrEqual,
            GREATER => Order::Greater,
            GREATER_EQUALS => Order::GreaterOrEqual,
            _ => return None,
        })
    }

    /// The same test with its sides swapped: `3 < x` is `x > 3`.
    fn swapped(self) -> Order {
        match self {
            Order::Less => Order::Greater,
            Order::LessOrEqual => Order::GreaterOrEqual,
            Order::Greater => Order::Less,
            Order::GreaterOrEqual => Order::LessOrEqual,
            same => same,
        }
    }

    fn holds(self, left: i64, right: i64) -> bool {
        match self {
            Order::Equal => left == right,
            Order::NotEqual => left != right,
            Order::Less => left < right,
            Order::LessOrEqual => left <= right,
            Order::Greater => left > right,
            Order::GreaterOrEqual => left >= right,
        }
    }
}

/// A field of the request a test reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    Tool,
    /// Keys from `args` down (`args.a.b` is `["a", "b"]`).
    Args(Vec<String>),
    AgentId,
    AgentTeam,
    AgentParent,
    AgentDepth,
}

/// The evaluation met something outside the shape: the interpreter decides instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsure;

impl Native {
    /// `expr` as a native condition, when all of it has the shape.
    pub(crate) fn compile(expr: &IdedExpr) -> Option<Native> {
        match &expr.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Native::Bool(*b.inner())),
            Expr::Call(call) => {
                let args = call.args.as_slice();
                match (call.func_name.as_str(), call.target.as_deref(), args) {
                    (LOGICAL_NOT, None, [operand]) => {
                        Some(Native::Not(Box::new(Native::compile(operand)?)))
                    }
                    (LOGICAL_AND, None, [a, b]) => Some(Native::And(
                        Box::new(Native::compile(a)?),
                        Box::new(Native::compile(b)?),
                    )),
                    (LOGICAL_OR, None, [a, b]) => Some(Native::Or(
                        Box::new(Native::compile(a)?),
                        Box::new(Native::compile(b)?),
                    )),
                    (operator, None, [a, b]) => Native::comparison(Order::of(operator)?, a, b),
                    ("matches", Some(target), [argument]) => Some(Native::Matches {
                        subject: Field::of(target)?,
                        pattern: regex::Regex::new(&string_literal(argument)?).ok()?,
                    }),
                    (name, Some(target), [argument]) => {
                        let test = match name {
                            "startsWith" => TextTest::StartsWith,
                            "endsWith" => TextTest::EndsWith,
                            "contains" => TextTest::Contains,
                            _ => return None,
                        };
                        Some(Native::Text {
                            subject: Field::of(target)?,
                            test,
                            literal: string_literal(argument)?,
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `a <operator> b`, a field against a literal, either way round.
    fn comparison(order: Order, a: &IdedExpr, b: &IdedExpr) -> Option<Native> {
        let (subject, literal, order) = match (Field::of(a), Field::of(b)) {
            (Some(field), None) => (field, b, order),
            (None, Some(field)) => (field, a, order.swapped()),
            _ => return None,
        };
        match (&literal.expr, order) {
            (Expr::Literal(LiteralValue::String(text)), Order::Equal | Order::NotEqual) => {
                Some(Native::Text {
                    subject,
                    test: if order == Order::Equal {
                        TextTest::Equals
                    } else {
                        TextTest::NotEquals
                    },
                    literal: text.inner().to_owned(),
                })
            }
            (Expr::Literal(LiteralValue::Int(n)), order) => Some(Native::Integer {
                subject,
                order,
                literal: *n.inner(),
            }),
            _ => None,
        }
    }

    /// The condition's value, or [`Unsure`] where the interpreter must decide.
    pub(crate) fn evaluate(&self, input: &Input<'_>) -> Result<bool, Unsure> {
        match self {
            Native::Bool(b) => Ok(*b),
            Native::Not(operand) => Ok(!operand.evaluate(input)?),
            // Left to right, stopping where CEL's answer no longer depends on the right.
            Native::And(a, b) => Ok(a.evaluate(input)? && b.evaluate(input)?),
            Native::Or(a, b) => Ok(a.evaluate(input)? || b.evaluate(input)?),
            Native::Text {
                subject,
                test,
                literal,
            } => {
                let text = subject.text(input).ok_or(Unsure)?;
                Ok(match test {
                    TextTest::Equals => text == literal,
                    TextTest::NotEquals => text != literal,
                    TextTest::StartsWith => text.starts_with(literal.as_str()),
                    TextTest::EndsWith => text.ends_with(literal.as_str()),
                    TextTest::Contains => text.contains(literal.as_str()),
                })
            }
            Native::Integer {
                subject,
                order,
                literal,
            } => Ok(order.holds(subject.integer(input).ok_or(Unsure)?, *literal)),
            Native::Matches { subject, pattern } => {
                Ok(pattern.is_match(subject.text(input).ok_or(Unsure)?))
            }
        }
    }
}

impl Field {
    /// The field `expr` selects, if it is a chain of plain selections from a variable this
    /// module reads (`has(args.x)` is a presence test, not a selection).
    fn of(expr: &IdedExpr) -> Option<Field> {
        let mut keys = Vec::new();
        let mut node = expr;
        loop {
            match &node.expr {
                Expr::Select(select) if !select.test => {
                    keys.push(select.field.clone());
                    node = &select.operand;
                }
                Expr::Ident(name) => {
                    keys.reverse();
                    return match (name.as_str(), keys.as_slice()) {
                        ("tool", []) => Some(Field::Tool),
                        ("args", [_, ..]) => Some(Field::Args(keys)),
                        ("agent", [key]) => match key.as_str() {
                            "id" => Some(Field::AgentId),
                            "team" => Some(Field::AgentTeam),
                            "parent" => Some(Field::AgentParent),
                            "depth" => Some(Field::AgentDepth),
                            _ => None,
                        },
                        _ => None,
                    };
                }
                _ => return None,
            }
        }
    }

    /// The field's text, if it is a string.
    fn text<'r>(&self, input: &Input<'r>) -> Option<&'r str> {
        let agent: &'r AgentContext = input.agent;
        match self {
            Field::Tool => Some(input.tool),
            Field::Args(keys) => json_at(input.args, keys)?.as_str(),
            Field::AgentId => Some(agent.id.as_str()),
            Field::AgentTeam => agent.team.as_deref(),
            Field::AgentParent => agent.parent.as_deref(),
            Field::AgentDepth => None,
        }
    }

    /// The field's value, if it is an integer CEL sees as `int` (a JSON number that fits
    /// an `i64`; a larger one is a `uint`, a fraction a `double`).
    fn integer(&self, input: &Input<'_>) -> Option<i64> {
        match self {
            Field::Args(keys) => json_at(input.args, keys)?.as_i64(),
            Field::AgentDepth => Some(i64::from(input.agent.depth)),
            Field::Tool | Field::AgentId | Field::AgentTeam | Field::AgentParent => None,
        }
    }
}

/// The value under `keys`, each a key of an object.
fn json_at<'v>(mut value: &'v serde_json::Value, keys: &[String]) -> Option<&'v serde_json::Value> {
    for key in keys {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

fn string_literal(expr: &IdedExpr) -> Option<String> {
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
        _ => None,
    }
}
