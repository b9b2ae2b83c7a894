//! A thin reader over `saphyr`'s marked YAML tree that keeps every value's location, checks
//! types and keys, and collects located [`Diagnostic`]s instead of stopping at the first.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::error::{Diagnostic, PolicyError};
use crate::suggest::did_you_mean;

pub(crate) type Node<'a> = MarkedYaml<'a>;

/// A 1-based position in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl Loc {
    pub(crate) fn of(node: &Node<'_>) -> Loc {
        Loc {
            line: node.span.start.line(),
            col: node.span.start.col() + 1,
        }
    }
}

/// A value with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Located<T> {
    pub(crate) value: T,
    pub(crate) loc: Loc,
    /// For a string written on one line whose source text is exactly its value: how many
    /// characters precede the value (an opening quote), so an error inside the string can
    /// point at its column. `None` when escapes, folding or block style break that mapping.
    pub(crate) content_offset: Option<usize>,
}

/// How deep collections may nest. Policies, price tables and tests are a few levels deep; a
/// loaded tree is built, read and freed by recursion, so a file nested many thousands of
/// levels deep (a few hundred kilobytes of `- - - …`) would overflow the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// Parses a YAML stream into its documents, or a located syntax error; a stream nested past
/// [`MAX_DEPTH`] is refused before any tree is built.
pub(crate) fn load(source: &str) -> Result<Vec<Node<'_>>, PolicyError> {
    within_depth(source)?;
    MarkedYaml::load_from_str(source).map_err(|e| {
        let m = e.marker();
        PolicyError::Invalid(vec![Diagnostic {
            line: m.line(),
            col: m.col() + 1,
            message: format!("invalid YAML: {}", e.info()),
        }])
    })
}

/// Counts nesting over the parser's events, which it makes without recursing. A syntax
/// error ends the count: the load that follows reports it.
fn within_depth(source: &str) -> Result<(), PolicyError> {
    use saphyr_parser::{Event, Parser};
    let mut depth = 0usize;
    for parsed in Parser::new_from_str(source) {
        let Ok((event, span)) = parsed else {
            return Ok(());
        };
        match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(PolicyError::Invalid(vec![Diagnostic {
                        line: span.start.line(),
                        col: span.start.col() + 1,
                        message: format!("nested more than {MAX_DEPTH} levels deep"),
                    }]));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Walks nodes and collects diagnostics.
#[derive(Debug)]
pub(crate) struct Reader<'s> {
    source: &'s str,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Byte offset of every character, built on first need and only for non-ASCII sources
    /// (markers count characters; in ASCII text characters and bytes coincide).
    char_offsets: std::cell::OnceCell<Vec<usize>>,
    ascii: bool,
}

impl<'s> Reader<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        Reader {
            source,
            diagnostics: Vec::new(),
            char_offsets: std::cell::OnceCell::new(),
            ascii: source.is_ascii(),
        }
    }

    pub(crate) fn error(&mut self, loc: Loc, path: &str, message: impl AsRef<str>) {
        let message = message.as_ref();
        let message = if path.is_empty() {
            message.to_owned()
        } else {
            format!("{path}: {message}")
        };
        self.diagnostics.push(Diagnostic {
            line: loc.line,
            col: loc.col,
            message,
        });
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, PolicyError> {
        if self.diagnostics.is_empty() {
            Ok(value)
        } else {
            let mut d = self.diagnostics;
            d.sort_by_key(|d| (d.line, d.col));
            d.dedup();
            Err(PolicyError::Invalid(d))
        }
    }

    /// The entries of a mapping, in file order. Keys must be strings; keys outside `allowed`
    /// are reported with a suggestion (pass `None` to accept any key, e.g. tool names).
    pub(crate) fn mapping<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        path: &str,
        allowed: Option<&[&str]>,
    ) -> Option<Vec<(Located<String>, &'n Node<'a>)>> {
        let node = untag(node);
        let YamlData::Mapping(map) = &node.data else {
            self.type_error(node, path, "a mapping");
            return None;
        };
        let mut out = Vec::with_capacity(map.len());
        for (key, value) in map {
            let Some(name) = self.key_string(key, path) else {
                continue;
            };
            if let Some(allowed) = allowed
                && !allowed.contains(&name.value.as_str())
            {
                let hint = did_you_mean(&name.value, allowed);
                let full = join_path(path, &name.value);
                self.error(name.loc, &full, format!("unknown key{hint}"));
                continue;
            }
            out.push((name, value));
        }
        Some(out)
    }

    fn key_string(&mut self, key: &Node<'_>, path: &str) -> Option<Located<String>> {
        match &untag(key).data {
            YamlData::Value(Scalar::String(s)) => Some(self.located(key, s.to_string())),
            _ => {
                self.error(Loc::of(key), path, "keys must be strings");
                None
            }
        }
    }

    /// Reports the keys of `required` that `entries` lacks, at `node`.
    pub(crate) fn require(
        &mut self,
        node: &Node<'_>,
        path: &str,
        entries: &[(Located<String>, &Node<'_>)],
        required: &[&str],
    ) {
        for key in required {
            if !entries.iter().any(|(k, _)| k.value == *key) {
                self.error(
                    Loc::of(node),
                    path,
                    format!("missing required key \"{key}\""),
                );
            }
        }
    }

    pub(crate) fn string(&mut self, node: &Node<'_>, path: &str) -> Option<Located<String>> {
        match &untag(node).data {
            YamlData::Value(Scalar::String(s)) => Some(self.located(node, s.to_string())),
            _ => {
                self.type_error(node, path, "a string");
                None
            }
        }
    }

    /// A string, or a number written without quotes (for versions like `3` or `1.2`).
    pub(crate) fn string_or_number(
        &mut self,
        node: &Node<'_>,
        path: &str,
    ) -> Option<Located<String>> {
        match &untag(node).data {
            YamlData::Value(Scalar::Integer(i)) => Some(self.located(node, i.to_string())),
            YamlData::Value(Scalar::FloatingPoint(f)) => Some(self.located(node, f.to_string())),
            _ => self.string(node, path),
        }
    }

    pub(crate) fn boolean(&mut self, node: &Node<'_>, path: &str) -> Option<bool> {
        match &untag(node).data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                self.type_error(node, path, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn integer(
        &mut self,
        node: &Node<'_>,
        path: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match &untag(node).data {
            YamlData::Value(Scalar::Integer(i)) if (min..=max).contains(i) => Some(*i),
            YamlData::Value(Scalar::Integer(i)) => {
                self.error(
                    Loc::of(node),
                    path,
                    format!("{i} is out of range {min}..={max}"),
                );
                None
            }
            _ => {
                self.type_error(node, path, "an integer");
                None
            }
        }
    }

    /// A finite, non-negative number.
    pub(crate) fn amount(&mut self, node: &Node<'_>, path: &str) -> Option<f64> {
        let value = match &untag(node).data {
            YamlData::Value(Scalar::Integer(i)) => *i as f64,
            YamlData::Value(Scalar::FloatingPoint(f)) => f.into_inner(),
            _ => {
                self.type_error(node, path, "a number");
                return None;
            }
        };
        if value.is_finite() && value >= 0.0 {
            Some(value)
        } else {
            self.error(Loc::of(node), path, "must be a non-negative number");
            None
        }
    }

    pub(crate) fn string_list(
        &mut self,
        node: &Node<'_>,
        path: &str,
    ) -> Option<Vec<Located<String>>> {
        let items = self.sequence(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.string(item, &format!("{path}[{i}]")) {
                out.push(s);
            }
        }
        Some(out)
    }

    pub(crate) fn sequence<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        path: &str,
    ) -> Option<&'n [Node<'a>]> {
        match &untag(node).data {
            YamlData::Sequence(items) => Some(items.as_slice()),
            _ => {
                self.type_error(node, path, "a list");
                None
            }
        }
    }

    /// Converts a node to JSON (for agents and actions written in test files).
    pub(crate) fn json(&mut self, node: &Node<'_>, path: &str) -> Option<serde_json::Value> {
        use serde_json::Value as J;
        Some(match &untag(node).data {
            YamlData::Value(Scalar::Null) => J::Null,
            YamlData::Value(Scalar::Boolean(b)) => J::Bool(*b),
            YamlData::Value(Scalar::Integer(i)) => J::from(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => {
                serde_json::Number::from_f64(f.into_inner())
                    .map(J::Number)
                    .unwrap_or(J::Null)
            }
            YamlData::Value(Scalar::String(s)) => J::String(s.to_string()),
            YamlData::Sequence(items) => J::Array(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| self.json(n, &format!("{path}[{i}]")))
                    .collect(),
            ),
            YamlData::Mapping(_) => {
                let entries = self.mapping(node, path, None)?;
                J::Object(
                    entries
                        .into_iter()
                        .filter_map(|(k, v)| {
                            let value = self.json(v, &join_path(path, &k.value))?;
                            Some((k.value, value))
                        })
                        .collect(),
                )
            }
            _ => {
                self.type_error(node, path, "a plain YAML value");
                return None;
            }
        })
    }

    fn located(&self, node: &Node<'_>, value: String) -> Located<String> {
        let content_offset = self.raw_text(node).and_then(|raw| {
            let quoted = raw.starts_with(['\'', '"']);
            let inner = if quoted {
                raw.get(1..raw.len().saturating_sub(1))?
            } else {
                raw
            };
            (inner == value && !raw.contains('\n')).then_some(usize::from(quoted))
        });
        Located {
            value,
            loc: Loc::of(node),
            content_offset,
        }
    }

    /// The node's source text, from its start marker to its end marker.
    fn raw_text(&self, node: &Node<'_>) -> Option<&'s str> {
        let start = self.byte_offset(node.span.start.index())?;
        let end = self.byte_offset(node.span.end.index())?;
        self.source.get(start..end)
    }

    /// The byte offset of a character index (markers count characters).
    fn byte_offset(&self, index: usize) -> Option<usize> {
        if self.ascii {
            return (index <= self.source.len()).then_some(index);
        }
        let offsets = self.char_offsets.get_or_init(|| {
            self.source
                .char_indices()
                .map(|(i, _)| i)
                .chain([self.source.len()])
                .collect()
        });
        offsets.get(index).copied()
    }

    fn type_error(&mut self, node: &Node<'_>, path: &str, expected: &str) {
        let found = describe(untag(node));
        self.error(
            Loc::of(node),
            path,
            format!("expected {expected}, found {found}"),
        );
    }
}

/// `a.b` + `c` → `a.b.c`; quotes keys that are not plain identifiers.
pub(crate) fn join_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '*');
    let key = if plain {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn untag<'n, 'a>(node: &'n Node<'a>) -> &'n Node<'a> {
    match &node.data {
        YamlData::Tagged(_, inner) => untag(inner),
        _ => node,
    }
}

fn describe(node: &Node<'_>) -> String {
    match &node.data {
        YamlData::Value(Scalar::Null) => "null".to_owned(),
        YamlData::Value(Scalar::Boolean(b)) => format!("boolean {b}"),
        YamlData::Value(Scalar::Integer(i)) => format!("integer {i}"),
        YamlData::Value(Scalar::FloatingPoint(f)) => format!("number {f}"),
        YamlData::Value(Scalar::String(s)) => {
            let shown: String = s.chars().take(40).collect();
            format!("string \"{shown}\"")
        }
        YamlData::Sequence(_) => "a list".to_owned(),
        YamlData::Mapping(_) => "a mapping".to_owned(),
        YamlData::Alias(_) => "an alias (aliases are not supported)".to_owned(),
        YamlData::Representation(..) | YamlData::BadValue | YamlData::Tagged(..) => {
            "an unreadable value".to_owned()
        }
    }
}
