//! The error type of `aa-policy`, and the located [`Diagnostic`] it carries.

use std::fmt;

/// One problem in a document, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong; starts with the key path it concerns, e.g.
    /// `spec.tools.shell.alow: unknown key; did you mean "allow"?`.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// Everything that can go wrong loading policies or policy tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The document is not a valid policy (or test file); every problem found is listed.
    #[error("{}", join(.0))]
    Invalid(Vec<Diagnostic>),
}

impl PolicyError {
    /// The located problems.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid(d) => d,
        }
    }
}

fn join(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
