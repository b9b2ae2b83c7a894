//! The price table budgets are charged by: USD per million tokens for each model, what a call
//! reserves before it runs, and the conservative price of a model the table does not know.
//! [`BUILTIN_PRICES`] is the table shipped with the gateway; operators load their own with
//! [`PriceTable::parse`].

use std::collections::HashMap;

use crate::error::PolicyError;
use crate::pattern::{GlobList, compile_glob, is_glob};
use crate::yaml::{self, Loc, Node, Reader, join_path};

/// The shipped table (`data/prices.yaml`).
pub const BUILTIN_PRICES: &str = include_str!("../data/prices.yaml");

/// A model's price, in USD per million tokens (so, micro-USD per token).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per million input (prompt) tokens.
    pub input: f64,
    /// Per million output (completion) tokens.
    pub output: f64,
}

/// The most a cost is counted as, in micro-USD: one past it is as good as infinite, and every
/// cost stays a signed 64-bit integer, as stores keep amounts.
pub const MAX_COST_MICROS: u64 = i64::MAX as u64;

impl Price {
    /// What `input` and `output` tokens cost, in micro-USD, rounded up, at most
    /// [`MAX_COST_MICROS`].
    pub fn cost_micros(&self, input: u64, output: u64) -> u64 {
        let usd_micros = input as f64 * self.input + output as f64 * self.output;
        // The conversion saturates; the bound keeps the cost storable.
        (usd_micros.ceil() as u64).min(MAX_COST_MICROS)
    }
}

/// A model's price and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Priced<'t> {
    /// The price charged.
    pub price: Price,
    /// The table entry that priced it; `None` for a model the table does not list, charged
    /// the `unknown` price.
    pub entry: Option<&'t str>,
}

/// What a call reserves before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    /// Input tokens, when the call sends no estimate of its own.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// A compiled price table.
#[derive(Debug, Clone)]
pub struct PriceTable {
    as_of: String,
    reserve: Reserve,
    unknown: Price,
    entries: Vec<(String, Price)>,
    exact: HashMap<String, usize>,
    globs: GlobList,
    glob_entries: Vec<usize>,
}

impl PriceTable {
    /// Parses and checks a table; every problem is reported at its line and column.
    pub fn parse(source: &str) -> Result<PriceTable, PolicyError> {
        let docs = yaml::load(source)?;
        let mut r = Reader::new(source);
        let table = match docs.as_slice() {
            [doc] => table(&mut r, doc),
            _ => {
                r.error(
                    Loc { line: 1, col: 1 },
                    "",
                    "a price table is exactly one YAML document",
                );
                None
            }
        };
        let table = r.finish(table)?;
        table.ok_or_else(|| {
            PolicyError::Invalid(vec![crate::Diagnostic {
                line: 1,
                col: 1,
                message: "the price table is incomplete".into(),
            }])
        })
    }

    /// The table shipped with the gateway.
    pub fn builtin() -> Result<PriceTable, PolicyError> {
        PriceTable::parse(BUILTIN_PRICES)
    }

    /// The date the prices were taken, as the file says.
    pub fn as_of(&self) -> &str {
        &self.as_of
    }

    /// What a call reserves when it does not say.
    pub fn reserve(&self) -> Reserve {
        self.reserve
    }

    /// How many models (names and globs) the table lists.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table lists no model (everything is priced as unknown).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The price of `model`: an exact name (as written, then without a provider prefix),
    /// else the first glob in file order that matches either; else the `unknown` price.
    pub fn price(&self, model: &str) -> Priced<'_> {
        let model = model.trim().to_lowercase();
        let bare = model.rsplit('/').next().unwrap_or(&model);
        let names = [model.as_str(), bare];
        let index = names
            .iter()
            .find_map(|name| self.exact.get(*name).copied())
            .or_else(|| {
                names.iter().find_map(|name| {
                    self.globs
                        .first_match(name)
                        .and_then(|g| self.glob_entries.get(g).copied())
                })
            });
        match index.and_then(|i| self.entries.get(i)) {
            Some((entry, price)) => Priced {
                price: *price,
                entry: Some(entry),
            },
            None => Priced {
                price: self.unknown,
                entry: None,
            },
        }
    }

    /// The tokens a call to `model` reserves (its own estimate of input, if it gave one) and
    /// their cost in micro-USD.
    pub fn estimate(&self, model: &str, input_estimate: Option<u64>) -> (Priced<'_>, u64) {
        let priced = self.price(model);
        let input = input_estimate.unwrap_or(self.reserve.input_tokens);
        let cost = priced.price.cost_micros(input, self.reserve.output_tokens);
        (priced, cost)
    }
}

const KEYS: &[&str] = &["as_of", "reserve", "unknown", "models"];

fn table(r: &mut Reader<'_>, doc: &Node<'_>) -> Option<PriceTable> {
    let entries = r.mapping(doc, "", Some(KEYS))?;
    r.require(doc, "", &entries, &["unknown", "models"]);
    let mut as_of = String::new();
    let mut reserve = Reserve {
        input_tokens: 4000,
        output_tokens: 1000,
    };
    let (mut unknown, mut models) = (None, None);
    for (key, value) in &entries {
        let path = key.value.as_str();
        match path {
            "as_of" => as_of = r.string_or_number(value, path)?.value,
            "reserve" => {
                let fields = r.mapping(value, path, Some(&["input_tokens", "output_tokens"]))?;
                for (k, v) in &fields {
                    let n = r.integer(v, &join_path(path, &k.value), 0, 10_000_000)?;
                    let n = u64::try_from(n).ok()?;
                    if k.value == "input_tokens" {
                        reserve.input_tokens = n;
                    } else {
                        reserve.output_tokens = n;
                    }
                }
            }
            "unknown" => unknown = price(r, value, path),
            _ => models = model_list(r, value, path),
        }
    }
    let (entries, exact, globs, glob_entries) = models?;
    Some(PriceTable {
        as_of,
        reserve,
        unknown: unknown?,
        entries,
        exact,
        globs,
        glob_entries,
    })
}

type Models = (
    Vec<(String, Price)>,
    HashMap<String, usize>,
    GlobList,
    Vec<usize>,
);

fn model_list(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<Models> {
    let listed = r.mapping(node, path, None)?;
    let (mut entries, mut exact, mut globs, mut glob_entries) =
        (Vec::new(), HashMap::new(), Vec::new(), Vec::new());
    for (key, value) in listed {
        let entry_path = join_path(path, &key.value);
        let Some(price) = price(r, value, &entry_path) else {
            continue;
        };
        let name = key.value.trim().to_lowercase();
        let index = entries.len();
        if is_glob(&name) {
            match compile_glob(&name, true) {
                Ok(glob) => {
                    globs.push((name.clone(), glob));
                    glob_entries.push(index);
                }
                Err(e) => {
                    r.error(key.loc, &entry_path, e);
                    continue;
                }
            }
        } else if exact.insert(name.clone(), index).is_some() {
            r.error(key.loc, &entry_path, "listed twice");
            continue;
        }
        entries.push((name, price));
    }
    let globs = match GlobList::new(globs) {
        Ok(list) => list,
        Err(e) => {
            r.error(Loc::of(node), path, e);
            return None;
        }
    };
    Some((entries, exact, globs, glob_entries))
}

fn price(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<Price> {
    let fields = r.mapping(node, path, Some(&["input", "output"]))?;
    r.require(node, path, &fields, &["input", "output"]);
    let (mut input, mut output) = (None, None);
    for (k, v) in &fields {
        let amount = r.amount(v, &join_path(path, &k.value))?;
        if k.value == "input" {
            input = Some(amount);
        } else {
            output = Some(amount);
        }
    }
    Some(Price {
        input: input?,
        output: output?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_builtin_table_parses_and_prices_each_provider() {
        let table = PriceTable::builtin().unwrap();
        assert!(table.len() > 40);
        for (model, entry) in [
            ("gpt-4o", "gpt-4o"),
            ("GPT-4o-2024-08-06", "gpt-4o-20*"),
            ("openai/gpt-4o-mini", "gpt-4o-mini*"),
            ("claude-opus-4-5-20251101", "claude-opus-4-5*"),
            ("claude-opus-4-1-20250805", "claude-opus-4*"),
            ("claude-sonnet-4-5", "claude-sonnet-4*"),
            ("models/gemini-2.5-flash-lite", "gemini-2.5-flash-lite*"),
            ("gemini-2.5-flash", "gemini-2.5-flash*"),
            ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "*llama-3.3-70b*"),
            // An exact name without the prefix beats a glob on the whole name.
            ("deepseek-v3/deepseek-chat", "deepseek-chat"),
        ] {
            assert_eq!(table.price(model).entry, Some(entry), "{model}");
        }
        let unknown = table.price("my-finetune");
        assert_eq!(unknown.entry, None);
        // Unknown is as dear as anything listed, for input and for output.
        for (_, price) in &table.entries {
            assert!(price.input <= unknown.price.input && price.output <= unknown.price.output);
        }
    }

    #[test]
    fn cost_is_micro_usd_per_token_rounded_up() {
        let price = Price {
            input: 2.5,
            output: 10.0,
        };
        assert_eq!(price.cost_micros(1000, 100), 3500);
        let cheap = Price {
            input: 0.075,
            output: 0.3,
        };
        assert_eq!(cheap.cost_micros(1, 0), 1);
        assert_eq!(cheap.cost_micros(0, 0), 0);
        assert_eq!(price.cost_micros(u64::MAX, u64::MAX), MAX_COST_MICROS);
    }

    #[test]
    fn an_estimate_uses_the_call_s_input_and_the_reserved_output() {
        let table = PriceTable::builtin().unwrap();
        let (priced, cost) = table.estimate("gpt-4o", Some(2000));
        assert_eq!(priced.entry, Some("gpt-4o"));
        assert_eq!(cost, 2000 * 5 / 2 + table.reserve().output_tokens * 10);
        let (_, default) = table.estimate("gpt-4o", None);
        assert_eq!(
            default,
            table.reserve().input_tokens * 5 / 2 + table.reserve().output_tokens * 10
        );
    }

    #[test]
    fn mistakes_are_located() {
        let source = "unknown: {input: 1}\nmodels:\n  gpt-x: {input: -1, output: 2}\n  \"[\": {input: 1, output: 1}\n  gpt-y: {input: 1, output: 1, cached: 2}\n";
        let error = PriceTable::parse(source).unwrap_err().to_string();
        for expected in [
            "1:10: unknown: missing required key \"output\"",
            "3:18: models.gpt-x.input: must be a non-negative number",
            "4:3: models.\"[\": invalid glob",
            "5:32: models.gpt-y.cached: unknown key",
        ] {
            assert!(error.contains(expected), "{expected:?} not in:\n{error}");
        }
    }
}
