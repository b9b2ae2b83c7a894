//! Custom patterns: what a policy adds to the scanner (`spec.data.patterns`), checked where
//! the policy is loaded and again where the scanner is built.

/// A pattern added at run time, such as a policy's `data.patterns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomPattern {
    /// Its name: the rule id (`custom-<name>`) and the redaction kind.
    pub name: String,
    /// A regular expression (Rust `regex` syntax); the whole match is the secret.
    pub regex: String,
}

impl CustomPattern {
    /// Whether `name` can name a pattern: letters, digits, `_` and `-`, as it becomes part of
    /// a rule id and of every `[REDACTED:<name>]` label.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    /// Whether `regex` can match the empty string (`\d*`, `(EMP-\d+)?`): as a pattern it
    /// would label every position of every text. A regex that does not parse is judged where
    /// it is compiled, not here.
    pub fn matches_empty(regex: &str) -> bool {
        regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(regex)
            .is_ok_and(|hir| hir.properties().minimum_len() == Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_letters_digits_underscores_and_dashes() {
        for good in ["employee_id", "EMP-1", "x"] {
            assert!(CustomPattern::valid_name(good), "{good}");
        }
        for bad in ["", "employee id", "emp]", "ém", "a:b"] {
            assert!(!CustomPattern::valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_pattern_that_can_match_nothing_at_all_is_told_apart() {
        for empty in [r"\d*", r"(EMP-\d{6})?", r"\b", "x?|y", "^", "(?i)a*"] {
            assert!(CustomPattern::matches_empty(empty), "{empty}");
        }
        for fine in [r"EMP-\d{6}", r"\bx+\b", "a|b?c", "(", r"\xFF+"] {
            assert!(!CustomPattern::matches_empty(fine), "{fine}");
        }
    }
}
