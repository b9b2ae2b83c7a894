//! Redacting a JSON document: every string, keys and values, is read in the order the document
//! is serialised (each key just before its value), scanned on its own, and scanned again
//! together with its neighbours across each seam.
//!
//! The seams matter because a credential cut in two and sent as two fields, or as a key and its
//! value, passes a field-by-field scan, yet whoever reads the stored document can join the
//! pieces again. So runs of two and three neighbouring values (in reading order, whatever keys
//! lie between them), and each key with its string value, are glued and scanned, each run on
//! its own line so that a run starts and ends where its strings do. A seam is only glued where
//! a credential could cross it (not at white space, quotes, brackets, commas or semicolons).
//! Only credentials count there: personal data joined from neighbouring fields (digits from
//! three cells forming a phone number) would mostly be false alarms that corrupt a document.
//!
//! The document is only read until every cut is known, so all receipts refer to the strings as
//! they came; then the strings that change are rewritten, found by their paths.
//!
//! A document of a known shape (an audit event) comes with a [`Layout`]: the names of its
//! schema's fields and its tags from closed sets are not read at all, neither alone nor glued,
//! so that a redacted document still reads as what it was.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use aa_core::RedactionReceipt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::redact::{
    Labelled, Limits, OVERSIZED, Oversize, digest_prefix, finish_digest, oversized_receipt,
    receipts_of, spans_of, splice_text,
};
use crate::rules::is_personal_data;
use crate::scanner::{Finding, Scanner};

/// Bytes on each side of a seam that are read together; a credential with more than this on
/// one side of a cut is not found (PEM blocks are the one kind that long).
const SEAM_REACH: usize = 256;

/// Most strings a credential is looked for across (a key cut in three is found, in four not).
const MAX_PIECES: usize = 3;

/// Passes over a document. A renamed key moves (objects are sorted by key), which can make
/// strings neighbours that were not, and a piece cut from a string changes what its rest reads
/// as; so after either, another pass reads the document as it now is, its receipts referring
/// to the strings as the pass before left them.
const MAX_PASSES: usize = 3;

/// Strings cut for being past the event's allowance that get a receipt each; the one after
/// them gets a receipt (rule `oversized_rest`) for itself and every later one, so that a
/// document of a million tiny strings past the allowance yields a bounded list of receipts.
const OVERSIZED_RECEIPTS: usize = 32;

/// Bytes of a key kept in a receipt's field name: a field is named so that an auditor can find
/// it, and a key of many kilobytes repeated in every receipt under it would multiply a hostile
/// event's size by its number of strings.
const KEY_IN_FIELD_NAME: usize = 64;

/// Bytes of a receipt's field name kept (its end), however deep the field: the name is copied
/// into each of the field's receipts.
const FIELD_NAME_BYTES: usize = 256;

/// The longest string of an array read as the name of the string after it: names of secrets
/// (`--aws-secret-access-key`) are short.
const NAME_ALONE_BYTES: usize = 64;

/// About how many containers and values an event holds: room for that many up front spares
/// regrowing the lists a document is read into.
const TYPICAL_NODES: usize = 32;

/// Where a document's shape is fixed by a schema: the objects whose keys are the schema's
/// names rather than data, and the values that are tags from a closed set (an action's type,
/// a verdict's decision). Neither is scanned or glued to a neighbour: no secret is held in
/// them, and a rewritten name or tag would leave the document unreadable as what it is.
pub(crate) struct Layout {
    /// Paths, from the root, of the objects whose keys are names.
    pub(crate) named: &'static [&'static [&'static str]],
    /// Paths of the values that are tags, each in an object at a path of `named`.
    pub(crate) tags: &'static [&'static [&'static str]],
    /// Paths of the values under named objects that are free JSON, not the schema's: a number
    /// there is data, where a number the schema names is not.
    pub(crate) free: &'static [&'static [&'static str]],
}

/// One step from a container to a child.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A container or value of the document, linked to its parent.
struct Node<'a> {
    parent: usize,
    step: Step<'a>,
    value: &'a Value,
}

/// A string of the document: a value (at `node`), or a key of the object at `node`; or a
/// number of free JSON long enough to be personal data (`{"card": 4111111111111111}`), read
/// as its digits.
struct Spot<'a> {
    text: Cow<'a, str>,
    node: usize,
    is_key: bool,
    is_number: bool,
}

/// Every string of a document in reading order, with paths kept as parent links so that none
/// is built unless needed.
struct Strings<'a> {
    /// Node 0 is the root.
    nodes: Vec<Node<'a>>,
    spots: Vec<Spot<'a>>,
}

impl<'a> Strings<'a> {
    /// The strings of `doc`, less the names and tags `layout` fixes.
    fn of(doc: &'a Value, layout: Option<&Layout>) -> Strings<'a> {
        /// A value comes with whether its container is at a named path, which is looked up
        /// once for all of the container's keys and values rather than for each.
        enum Item<'a> {
            Value(&'a Value, usize, bool),
            Key(&'a str, usize),
        }
        // Sized for a typical event, so that most documents are read without regrowing.
        let mut nodes = Vec::with_capacity(TYPICAL_NODES);
        nodes.push(Node {
            parent: 0,
            step: Step::Index(0),
            value: doc,
        });
        let mut spots = Vec::with_capacity(2 * TYPICAL_NODES);
        // Whether `node` is at one of the paths the layout lists in `paths`.
        let on = |nodes: &[Node<'_>], node: usize, paths: fn(&Layout) -> &[&[&str]]| {
            layout.is_some_and(|l| paths(l).iter().any(|path| is_at(nodes, node, path)))
        };
        // An explicit stack: documents built in memory may nest deeper than a parser allows.
        let mut stack = Vec::with_capacity(TYPICAL_NODES);
        // The root is its own parent.
        stack.push(Item::Value(doc, 0, on(&nodes, 0, |l| l.named)));
        let value = |text: Cow<'a, str>, node: usize, is_number: bool| Spot {
            text,
            node,
            is_key: false,
            is_number,
        };
        while let Some(item) = stack.pop() {
            match item {
                Item::Key(text, node) => spots.push(Spot {
                    text: Cow::Borrowed(text),
                    node,
                    is_key: true,
                    is_number: false,
                }),
                // A tag lies in a named object.
                Item::Value(Value::String(text), node, in_named) => {
                    if !(in_named && on(&nodes, node, |l| l.tags)) {
                        spots.push(value(Cow::Borrowed(text), node, false));
                    }
                }
                Item::Value(Value::Number(number), node, in_named) => {
                    // A number a schema names (a timestamp, a depth) is no agent's data, and
                    // must stay a number for the document to read as what it is.
                    let schemas = || in_named && !on(&nodes, node, |l| l.free);
                    // Most numbers are short: their digits are looked at before their place.
                    if let Some(digits) = digits_of(number).filter(|_| !schemas())
                        && !(in_named && on(&nodes, node, |l| l.tags))
                    {
                        spots.push(value(Cow::Owned(digits), node, true));
                    }
                }
                Item::Value(Value::Array(items), node, _) => {
                    let names = on(&nodes, node, |l| l.named);
                    for (i, child) in items.iter().enumerate().rev() {
                        nodes.push(Node {
                            parent: node,
                            step: Step::Index(i),
                            value: child,
                        });
                        stack.push(Item::Value(child, nodes.len() - 1, names));
                    }
                }
                Item::Value(Value::Object(map), node, _) => {
                    // A key is fixed by the path of its object.
                    let names = on(&nodes, node, |l| l.named);
                    for (key, child) in map.iter().rev() {
                        nodes.push(Node {
                            parent: node,
                            step: Step::Key(key),
                            value: child,
                        });
                        stack.push(Item::Value(child, nodes.len() - 1, names));
                        if !names {
                            stack.push(Item::Key(key, node));
                        }
                    }
                }
                Item::Value(Value::Null | Value::Bool(_), ..) => {}
            }
        }
        Strings { nodes, spots }
    }

    /// The spot of the value (a string, or a number read as its digits) of the key at spot
    /// `key`, if it is a key with one (a key is read just before its value).
    fn value_of_key(&self, key: usize) -> Option<usize> {
        let spot = self.spots.get(key).filter(|s| s.is_key)?;
        let value = self.spots.get(key + 1).filter(|v| !v.is_key)?;
        let node = self.nodes.get(value.node)?;
        (node.parent == spot.node && matches!(node.step, Step::Key(k) if k == spot.text.as_ref()))
            .then_some(key + 1)
    }

    /// The spot of the string the name at spot `name` assigns, with the name as it reads: a
    /// key's string value, or the next string of an array after a name standing alone in it,
    /// as a command's arguments pass a secret (`["--password", "..."]`, `["token=", "..."]`).
    fn assignment(&self, name: usize) -> Option<(usize, &str)> {
        let spot = self.spots.get(name).filter(|s| !s.is_number)?;
        if spot.is_key {
            return self
                .value_of_key(name)
                .map(|value| (value, spot.text.as_ref()));
        }
        let value = self.spots.get(name + 1).filter(|v| !v.is_key)?;
        let (first, next) = (self.nodes.get(spot.node)?, self.nodes.get(value.node)?);
        let neighbours = first.parent == next.parent
            && matches!((first.step, next.step), (Step::Index(i), Step::Index(j)) if j == i + 1);
        neighbours
            .then(|| name_alone(&spot.text))
            .flatten()
            .map(|text| (name + 1, text))
    }

    /// The nodes from the root (excluded) down to `node`.
    fn lineage(&self, mut node: usize) -> Vec<usize> {
        let mut line = Vec::new();
        while node != 0 {
            line.push(node);
            node = self.nodes.get(node).map_or(0, |n| n.parent);
        }
        line.reverse();
        line
    }

    /// The steps from the root to `node`, owned, to find it again for writing. Each key is
    /// copied once, into `keys` (by node), and shared by every path through it: a document
    /// of many strings under one long key would otherwise hold a copy of it per string.
    fn path(&self, node: usize, keys: &mut HashMap<usize, Rc<str>>) -> Vec<OwnedStep> {
        self.lineage(node)
            .into_iter()
            .filter_map(|n| self.step_to(n, keys))
            .collect()
    }

    /// The step from `node`'s parent to it, owned as [`path`](Self::path) owns it.
    fn step_to(&self, node: usize, keys: &mut HashMap<usize, Rc<str>>) -> Option<OwnedStep> {
        Some(match self.nodes.get(node)?.step {
            Step::Key(k) => OwnedStep::Key(Rc::clone(keys.entry(node).or_insert_with(|| k.into()))),
            Step::Index(i) => OwnedStep::Index(i),
        })
    }
}

/// The smallest number read: of seven digits, the fewest a phone number has.
const SMALLEST_READ: u64 = 1_000_000;

/// The digits of an integer (or of a float that holds one exactly) from [`SMALLEST_READ`]
/// up: a card number or an SSN sent as a JSON number.
fn digits_of(number: &serde_json::Number) -> Option<String> {
    let whole = number
        .as_u64()
        .or_else(|| number.as_i64().map(i64::unsigned_abs));
    let whole = whole.or_else(|| {
        let f = number.as_f64()?.abs();
        // Below 2^53 a float holds every integer exactly.
        (f.fract() == 0.0 && f < 9_007_199_254_740_992.0).then_some(f as u64)
    })?;
    (whole >= SMALLEST_READ).then(|| whole.to_string())
}

/// The name an array's string is, standing alone before what it names: one short word, with
/// no operator but a trailing `=` or `:` (dropped). A string holding its own value
/// (`--password=x`) or words is no name.
fn name_alone(text: &str) -> Option<&str> {
    let text = text.trim_end();
    let name = text.strip_suffix(['=', ':']).unwrap_or(text);
    let word = !name.is_empty()
        && name.len() <= NAME_ALONE_BYTES
        && !name.contains(|c: char| c.is_whitespace() || c == '=' || c == ':');
    word.then_some(name)
}

/// Whether `node` is the one `path` (keys from the root) leads to.
fn is_at(nodes: &[Node<'_>], mut node: usize, path: &[&str]) -> bool {
    for key in path.iter().rev() {
        match nodes.get(node) {
            Some(Node {
                parent,
                step: Step::Key(k),
                ..
            }) if node != 0 && k == key => node = *parent,
            _ => return false,
        }
    }
    node == 0
}

enum OwnedStep {
    Key(Rc<str>),
    Index(usize),
}

/// What becomes of one string.
enum Cut {
    /// Over a size cap: replaced whole; with no receipt of its own when an `oversized_rest`
    /// receipt covers it.
    Oversized(Option<Box<RedactionReceipt>>),
    /// These spans replaced (ordered, not overlapping).
    Spans(Vec<RedactionReceipt>),
}

impl Cut {
    fn receipts(&self) -> &[RedactionReceipt] {
        match self {
            Cut::Oversized(r) => r.as_deref().map_or(&[], std::slice::from_ref),
            Cut::Spans(rs) => rs,
        }
    }

    /// Whether the whole of a string `len` bytes long is cut already, so that nothing more
    /// can be found in it.
    fn covers(&self, len: usize) -> bool {
        matches!(self, Cut::Oversized(_))
            || self
                .receipts()
                .iter()
                .any(|r| r.start == 0 && r.end as usize >= len)
    }

    fn receipts_mut(&mut self) -> &mut [RedactionReceipt] {
        match self {
            Cut::Oversized(r) => r.as_deref_mut().map_or(&mut [], std::slice::from_mut),
            Cut::Spans(rs) => rs,
        }
    }

    fn new_text(&self, text: &str) -> Cow<'static, str> {
        match self {
            Cut::Oversized(_) => Cow::Borrowed(OVERSIZED),
            Cut::Spans(rs) => Cow::Owned(splice_text(text, rs)),
        }
    }
}

impl Scanner {
    /// Redacts every string of `doc` in place, but for the names and tags `layout` fixes; see
    /// the module docs.
    pub(crate) fn redact_document(
        &self,
        doc: &mut Value,
        limits: &Limits,
        layout: Option<&Layout>,
    ) -> Vec<RedactionReceipt> {
        let mut receipts = Vec::new();
        // After the first pass, only the strings it cut can read differently on their own;
        // every string is read again only when keys moved, renumbering them.
        let mut changed: Option<BTreeSet<usize>> = None;
        // The allowance is spent in the first pass. A later one reads what it scanned (or
        // their labels, which may be longer), and its oversized strings as their label.
        let read_again = Limits {
            max_field_bytes: usize::MAX,
            max_event_bytes: usize::MAX,
            ..*limits
        };
        for pass in 0..MAX_PASSES {
            let limits = if pass == 0 { limits } else { &read_again };
            let (cuts, split, edits) = {
                let strings = Strings::of(doc, layout);
                let (mut cuts, split) = self.cuts(&strings, limits, changed.as_ref());
                let edits = name_and_locate(&strings, &mut cuts);
                (cuts, split, edits)
            };
            let moved = edits.iter().any(|e| matches!(e.change, Change::Keys(_)));
            apply(doc, edits);
            changed = (!moved).then(|| cuts.keys().copied().collect());
            receipts.extend(cuts.into_values().flat_map(|c| match c {
                Cut::Oversized(r) => r.map(|r| *r).into_iter().collect(),
                Cut::Spans(rs) => rs,
            }));
            if !moved && !split {
                break;
            }
        }
        self.sealed(receipts)
    }

    /// The cut of every string that changes, by spot: its own findings, and the pieces of
    /// credentials that cross its seams; and whether the document must be read again (there
    /// were such pieces: a piece cut from a string changes what its rest reads as).
    fn cuts(
        &self,
        strings: &Strings<'_>,
        limits: &Limits,
        only: Option<&BTreeSet<usize>>,
    ) -> (BTreeMap<usize, Cut>, bool) {
        let mut cuts = BTreeMap::new();
        let mut budget = limits.max_event_bytes;
        let mut oversized = 0;
        // The spot whose receipt covers the oversized strings past the first few, and theirs.
        let mut rest: Option<(usize, u64, Sha256)> = None;
        for (i, spot) in strings.spots.iter().enumerate() {
            let text = spot.text.as_ref();
            let over = text.len() > limits.max_field_bytes || text.len() > budget;
            if over && limits.oversize == Oversize::Redact {
                oversized += 1;
                let receipt = if oversized <= OVERSIZED_RECEIPTS {
                    Some(Box::new(oversized_receipt("", text.as_bytes())))
                } else {
                    let (_, bytes, digest) = rest.get_or_insert_with(|| (i, 0, Sha256::new()));
                    *bytes += text.len() as u64;
                    digest.update(text.as_bytes());
                    None
                };
                cuts.insert(i, Cut::Oversized(receipt));
                continue;
            }
            // Only what is scanned counts against the event's budget.
            budget = budget.saturating_sub(text.len());
            if only.is_some_and(|only| !only.contains(&i)) {
                continue;
            }
            let receipts = receipts_of(text.as_bytes(), self.scan(text));
            if !receipts.is_empty() {
                cuts.insert(i, Cut::Spans(receipts));
            }
        }
        // Each string read as assigned to the name before it: its key, or a name alone before
        // it in an array.
        for key in 0..strings.spots.len() {
            let Some((value, name)) = strings.assignment(key) else {
                continue;
            };
            let wanted = only.is_none_or(|only| only.contains(&key) || only.contains(&value));
            let Some(text) = strings.spots.get(value).map(|v| v.text.as_ref()) else {
                continue;
            };
            if !wanted || cuts.get(&value).is_some_and(|c| c.covers(text.len())) {
                continue;
            }
            let found = receipts_of(text.as_bytes(), self.assigned(name, text));
            if found.is_empty() {
                continue;
            }
            if let Cut::Spans(spans) = cuts.entry(value).or_insert_with(|| Cut::Spans(Vec::new())) {
                spans.extend(found);
            }
        }
        if let Some((spot, bytes, digest)) = rest {
            cuts.insert(
                spot,
                Cut::Oversized(Some(Box::new(RedactionReceipt {
                    rule_id: "oversized_rest".to_owned(),
                    end: bytes,
                    sha256_prefix: finish_digest(digest),
                    ..oversized_receipt("", &[])
                }))),
            );
        }
        merge_cuts(&mut cuts, strings);
        if strings.spots.len() < 2 {
            return (cuts, false);
        }
        // The seams are read as the document will be stored, each string with what its own
        // scan found already replaced by labels (an oversized one is its label): a cut beside
        // a seam changes what the seam reads as, and the secrets found already are not looked
        // for again in every run that holds them.
        let labelled: BTreeMap<usize, Labelled> = cuts
            .iter()
            .filter_map(|(&spot, cut)| match (cut, strings.spots.get(spot)) {
                (Cut::Spans(spans), Some(s)) => {
                    Some((spot, Labelled::new(s.text.as_bytes(), spans_of(spans))))
                }
                _ => None,
            })
            .collect();
        let texts: Vec<&str> = strings
            .spots
            .iter()
            .enumerate()
            .map(|(i, s)| match (cuts.get(&i), labelled.get(&i)) {
                (Some(Cut::Oversized(_)), _) => OVERSIZED,
                // Labels are ASCII and spans fall on character boundaries: always UTF-8.
                (_, Some(l)) => std::str::from_utf8(&l.bytes).unwrap_or(&s.text),
                _ => &s.text,
            })
            .collect();
        let pieces = self.seam_pieces(strings, &texts, &labelled, &cuts, only);
        let split = !pieces.is_empty();
        for (spot, piece) in pieces {
            match cuts.entry(spot).or_insert_with(|| Cut::Spans(Vec::new())) {
                Cut::Oversized(_) => {}
                Cut::Spans(spans) => spans.push(piece),
            }
        }
        if split {
            merge_cuts(&mut cuts, strings);
        }
        (cuts, split)
    }

    /// The pieces of credentials found only across seams, with spans in the strings as they
    /// came: along runs of up to [`MAX_PIECES`] values in reading order, and across each key
    /// and its string value. `texts` holds each spot's text as it will be stored, `labelled`
    /// where its labels came from, `own` what each string's own scan found: a credential one
    /// of whose pieces is all label was found already, and finding it again across a seam
    /// would only be the glue (a key stuck to a secret value) talking. With `only`, just the
    /// runs holding one of those strings are glued: any other reads as it did in the pass
    /// before, which found nothing across it.
    fn seam_pieces(
        &self,
        strings: &Strings<'_>,
        texts: &[&str],
        labelled: &BTreeMap<usize, Labelled>,
        own: &BTreeMap<usize, Cut>,
        only: Option<&BTreeSet<usize>>,
    ) -> Vec<(usize, RedactionReceipt)> {
        let mut joined = Joined {
            text: String::with_capacity(4 * SEAM_REACH),
            segments: Vec::with_capacity(TYPICAL_NODES),
            lines: Vec::with_capacity(TYPICAL_NODES),
        };
        let wanted = |run: &[usize]| only.is_none_or(|only| run.iter().any(|i| only.contains(i)));
        // Whether each string's first and last characters can be inside a credential, looked
        // at once rather than in every run the string is glued into.
        let ends: Vec<(bool, bool)> = texts
            .iter()
            .map(|t| {
                (
                    t.chars().next().is_some_and(joins_a_credential),
                    t.chars().next_back().is_some_and(joins_a_credential),
                )
            })
            .collect();
        // Numbers are read for personal data, which is not looked for across seams.
        let values: Vec<usize> = (0..texts.len())
            .filter(|&i| {
                strings
                    .spots
                    .get(i)
                    .is_some_and(|s| !s.is_key && !s.is_number)
            })
            .collect();
        for n in 0..values.len() {
            for pieces in 2..=MAX_PIECES {
                // A run that does not join cannot be lengthened into one that does.
                match values.get(n..n + pieces) {
                    Some(run) if joined.push_run(run, texts, &ends, wanted(run)) => {}
                    _ => break,
                }
            }
        }
        for key in 0..strings.spots.len() {
            let value = strings.value_of_key(key);
            if let Some(value) =
                value.filter(|&v| strings.spots.get(v).is_some_and(|s| !s.is_number))
            {
                let pair = [key, value];
                joined.push_run(&pair, texts, &ends, wanted(&pair));
            }
        }
        if joined.segments.is_empty() {
            return Vec::new();
        }
        let mut pieces = Vec::new();
        let found = joined.findings_by_run(self, self.scan_as_is(&joined.text));
        for finding in found {
            if is_personal_data(&finding.kind) {
                continue;
            }
            // Segments are in text order and apart, as lines are.
            let first = joined
                .segments
                .partition_point(|s| s.at + s.len <= finding.start);
            let crossed: Vec<&Segment> = joined
                .segments
                .get(first..)
                .unwrap_or_default()
                .iter()
                .take_while(|s| s.at < finding.end)
                .filter(|s| finding.start < s.at + s.len)
                .collect();
            let one_run = crossed.windows(2).all(|w| w[0].run == w[1].run);
            let named_by_a_neighbour = match crossed.as_slice() {
                [s] => joined.inside_whole(s, finding.start, finding.end, texts),
                _ => false,
            };
            if !(crossed.len() >= 2 && one_run || named_by_a_neighbour) {
                continue;
            }
            let span_in = |s: &Segment| {
                let start = finding.start.max(s.at) - s.at + s.offset;
                let end = finding.end.min(s.at + s.len) - s.at + s.offset;
                labelled
                    .get(&s.spot)
                    .map_or((start, end), |l| l.original_span(start, end))
            };
            let redacted_already = crossed.iter().any(|s| {
                let (start, end) = span_in(s);
                own.get(&s.spot).is_some_and(|cut| {
                    cut.receipts()
                        .iter()
                        .any(|r| r.start as usize <= start && end <= r.end as usize)
                })
            });
            if redacted_already {
                continue;
            }
            // Every piece carries the digest of the whole secret, the value one would look up.
            let whole = joined.text.as_bytes().get(finding.start..finding.end);
            let digest = digest_prefix(whole.unwrap_or_default());
            for s in crossed {
                let (start, end) = span_in(s);
                pieces.push((
                    s.spot,
                    RedactionReceipt {
                        rule_id: finding.rule_id.clone(),
                        kind: finding.kind.clone(),
                        field: String::new(),
                        start: start as u64,
                        end: end as u64,
                        sha256_prefix: digest.clone(),
                    },
                ));
            }
        }
        pieces
    }
}

/// Runs of strings glued together, one run a line, scanned in one go.
struct Joined {
    text: String,
    segments: Vec<Segment>,
    /// Each run's line in `text`, without its line break.
    lines: Vec<(usize, usize)>,
}

/// Part of a string inside [`Joined`].
struct Segment {
    spot: usize,
    run: usize,
    /// Where the part starts in its string.
    offset: usize,
    /// Where it starts in the joined text.
    at: usize,
    len: usize,
}

impl Joined {
    /// Glues the strings of `run` (spots into `texts`), if `wanted`: the tail of the first,
    /// the middle ones whole, the head of the last. Returns false, adding nothing, when a seam
    /// cannot be inside a credential (`ends` tells, for each spot, whether its first and its
    /// last character can) or a middle string is too long to be a piece of one.
    fn push_run(
        &mut self,
        run: &[usize],
        texts: &[&str],
        ends: &[(bool, bool)],
        wanted: bool,
    ) -> bool {
        let joins = run
            .windows(2)
            .all(|w| ends.get(w[0]).is_some_and(|e| e.1) && ends.get(w[1]).is_some_and(|e| e.0));
        let middle_fits = run.get(1..run.len().saturating_sub(1)).is_some_and(|m| {
            m.iter()
                .all(|&i| texts.get(i).is_some_and(|t| t.len() <= SEAM_REACH))
        });
        if !joins || !middle_fits {
            return false;
        }
        if !wanted {
            return true;
        }
        let parts = run
            .iter()
            .map(|&i| texts.get(i).copied().unwrap_or_default());
        let last = run.len() - 1;
        let line_start = self.text.len();
        for (n, (&spot, text)) in run.iter().zip(parts).enumerate() {
            let mut from = if n == 0 {
                text.len().saturating_sub(SEAM_REACH)
            } else {
                0
            };
            let mut to = if n == last {
                text.len().min(SEAM_REACH)
            } else {
                text.len()
            };
            while from < to && !text.is_char_boundary(from) {
                from += 1;
            }
            while to > from && !text.is_char_boundary(to) {
                to -= 1;
            }
            let part = text.get(from..to).unwrap_or_default();
            self.segments.push(Segment {
                spot,
                run: self.lines.len(),
                offset: from,
                at: self.text.len(),
                len: part.len(),
            });
            self.text.push_str(part);
        }
        self.lines.push((line_start, self.text.len()));
        self.text.push('\n');
        true
    }

    /// Whether `start..end` of the joined text lies in segment `s` and clear of where the
    /// segment's string was cut to fit: a finding inside one string that the string's own scan
    /// did not make (its own findings are labels here) was made by a neighbour, as
    /// `password=` ending one argument names the next (the line is scanned alone, so the
    /// neighbour is one of its run), unless a cut end made it.
    fn inside_whole(&self, s: &Segment, start: usize, end: usize, texts: &[&str]) -> bool {
        let whole = texts.get(s.spot).map_or(0, |t| t.len());
        let clear_of_head = s.offset == 0 || start > s.at;
        let clear_of_tail = s.offset + s.len == whole || end < s.at + s.len;
        s.at <= start && end <= s.at + s.len && clear_of_head && clear_of_tail
    }

    /// What scanning each line touched by a finding of `joined` (the scan of the whole text)
    /// on its own finds, in the whole text's offsets. The runs share one text to be scanned in
    /// one go, but a match can reach across the line break between two of them (`password=`
    /// ending one, a value starting the next), and what is found across runs is no
    /// credential: the lines it touches are read again alone, which is what each run reads
    /// as. A line no finding touches holds none when alone either.
    fn findings_by_run(&self, scanner: &Scanner, joined: Vec<Finding>) -> Vec<Finding> {
        // Lines are in text order and apart, so those a finding touches are found by halving:
        // a document of many short strings holds as many findings as lines.
        let mut lines: Vec<(usize, usize)> = joined
            .iter()
            .flat_map(|f| {
                let first = self.lines.partition_point(|&(_, end)| end < f.start);
                self.lines
                    .get(first..)
                    .unwrap_or_default()
                    .iter()
                    .copied()
                    .take_while(move |&(start, _)| start <= f.end)
            })
            .collect();
        lines.sort_unstable();
        lines.dedup();
        lines
            .into_iter()
            .flat_map(|(start, end)| {
                let line = self.text.get(start..end).unwrap_or_default();
                scanner.scan_as_is(line).into_iter().map(move |mut f| {
                    f.start += start;
                    f.end += start;
                    f
                })
            })
            .collect()
    }
}

/// Whether a credential can hold this character where two strings meet: none holds white
/// space, quotes, brackets, commas or semicolons.
fn joins_a_credential(c: char) -> bool {
    !(c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>' | ',' | ';'
        ))
}

/// Orders and joins the spans of every string's cut (its own findings, what it holds as
/// assigned to its key, the pieces found across its seams).
fn merge_cuts(cuts: &mut BTreeMap<usize, Cut>, strings: &Strings<'_>) {
    for (spot, cut) in cuts.iter_mut() {
        if let (Cut::Spans(spans), Some(s)) = (cut, strings.spots.get(*spot)) {
            merge_overlaps(spans, &s.text);
        }
    }
}

/// Orders spans and joins overlapping ones (a piece of a split secret over a field's own
/// finding, or one piece found by both readings), so that no byte is left between them.
fn merge_overlaps(spans: &mut Vec<RedactionReceipt>, text: &str) {
    spans.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut merged: Vec<RedactionReceipt> = Vec::with_capacity(spans.len());
    for span in spans.drain(..) {
        match merged.last_mut() {
            Some(last) if span.start < last.end => {
                if span.end > last.end {
                    last.end = span.end;
                    let joined = text.as_bytes().get(last.start as usize..last.end as usize);
                    last.sha256_prefix = digest_prefix(joined.unwrap_or_default());
                }
            }
            _ => merged.push(span),
        }
    }
    *spans = merged;
}

/// Strings to rewrite, found by the path of their node or container (keys as they came).
struct Edit {
    path: Vec<OwnedStep>,
    change: Change,
}

enum Change {
    /// The new text of the document, a string.
    Value(Cow<'static, str>),
    /// A container's values to rewrite, by their step from it, and their new texts: one path
    /// for all of a container's, so that a document of many strings deep down holds one.
    Values(Vec<(OwnedStep, Cow<'static, str>)>),
    /// An object's keys to rename: old name, new name.
    Keys(Vec<(String, String)>),
}

/// Names each receipt's field (`args.command`, `items[2]`, a key as `args{key}`; keys on the
/// way under their new names, so that no receipt names a field by a secret, and cut short
/// past [`KEY_IN_FIELD_NAME`] bytes with `…`) and lists the edits.
fn name_and_locate(strings: &Strings<'_>, cuts: &mut BTreeMap<usize, Cut>) -> Vec<Edit> {
    // New key names, unique within their object.
    let mut renamed: HashMap<(usize, &str), String> = HashMap::new();
    let mut by_object: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    // Keys being renamed (their names are free for others), the new names taken, and the next
    // `#n` to try for a name: each only grows, so a name found taken stays taken, and an
    // object of many keys redacted alike is renamed in linear time.
    let renamed_away: HashSet<(usize, &str)> = cuts
        .keys()
        .filter_map(|spot| strings.spots.get(*spot).filter(|s| s.is_key))
        .map(|s| (s.node, s.text.as_ref()))
        .collect();
    let mut taken: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut next_suffix: HashMap<(usize, String), usize> = HashMap::new();
    for (spot, cut) in cuts.iter() {
        let Some(key) = strings.spots.get(*spot).filter(|s| s.is_key) else {
            continue;
        };
        let Some(Value::Object(map)) = strings.nodes.get(key.node).map(|n| n.value) else {
            continue;
        };
        let taken = taken.entry(key.node).or_default();
        let base = cut.new_text(&key.text).into_owned();
        let free = |k: &str| {
            !taken.contains(k) && (!map.contains_key(k) || renamed_away.contains(&(key.node, k)))
        };
        let new = if free(&base) {
            base
        } else {
            let suffix = next_suffix.entry((key.node, base.clone())).or_insert(2);
            let new = (*suffix..)
                .map(|n| (n, format!("{base}#{n}")))
                .find(|(_, k)| free(k));
            match new {
                Some((n, new)) => {
                    *suffix = n + 1;
                    new
                }
                None => base,
            }
        };
        taken.insert(new.clone());
        renamed.insert((key.node, key.text.as_ref()), new.clone());
        by_object
            .entry(key.node)
            .or_default()
            .push((key.text.to_string(), new));
    }
    let mut edits = Vec::new();
    let mut keys = HashMap::new();
    let mut by_container: BTreeMap<usize, Vec<(OwnedStep, Cow<'static, str>)>> = BTreeMap::new();
    for (spot, cut) in cuts.iter_mut() {
        let Some(s) = strings.spots.get(*spot) else {
            continue;
        };
        if !cut.receipts().is_empty() {
            let field = field_name(strings, s, &renamed);
            for r in cut.receipts_mut() {
                r.field.clone_from(&field);
            }
        }
        if s.is_key {
            continue;
        }
        let new = cut.new_text(&s.text);
        if s.node == 0 {
            edits.push(Edit {
                path: Vec::new(),
                change: Change::Value(new),
            });
        } else if let (Some(node), Some(step)) = (
            strings.nodes.get(s.node),
            strings.step_to(s.node, &mut keys),
        ) {
            by_container
                .entry(node.parent)
                .or_default()
                .push((step, new));
        }
    }
    for (node, values) in by_container {
        edits.push(Edit {
            path: strings.path(node, &mut keys),
            change: Change::Values(values),
        });
    }
    for (node, renames) in by_object {
        edits.push(Edit {
            path: strings.path(node, &mut keys),
            change: Change::Keys(renames),
        });
    }
    edits
}

fn field_name(
    strings: &Strings<'_>,
    spot: &Spot<'_>,
    renamed: &HashMap<(usize, &str), String>,
) -> String {
    let mut name = String::new();
    for n in strings.lineage(spot.node) {
        let Some(node) = strings.nodes.get(n) else {
            continue;
        };
        match node.step {
            Step::Key(k) => {
                let k = renamed.get(&(node.parent, k)).map_or(k, String::as_str);
                if !name.is_empty() {
                    name.push('.');
                }
                let mut kept = k.len().min(KEY_IN_FIELD_NAME);
                while !k.is_char_boundary(kept) {
                    kept -= 1;
                }
                name.push_str(k.get(..kept).unwrap_or_default());
                if kept < k.len() {
                    name.push('…');
                }
            }
            Step::Index(i) => name.push_str(&format!("[{i}]")),
        }
    }
    if spot.is_key {
        name.push_str("{key}");
    }
    // Deeply nested, the name keeps its end, the part nearest the string.
    if name.len() > FIELD_NAME_BYTES {
        let mut from = name.len() - FIELD_NAME_BYTES;
        while !name.is_char_boundary(from) {
            from += 1;
        }
        name.replace_range(..from, "…");
    }
    name
}

/// Rewrites the document: values first, then keys from the deepest object up, so that no path
/// goes through a key already renamed.
fn apply(doc: &mut Value, mut edits: Vec<Edit>) {
    edits.sort_by_key(|e| {
        (
            matches!(e.change, Change::Keys(_)),
            std::cmp::Reverse(e.path.len()),
        )
    });
    for edit in edits {
        let Some(target) = walk_mut(doc, &edit.path) else {
            continue;
        };
        match (edit.change, target) {
            (Change::Value(new), value @ (Value::String(_) | Value::Number(_))) => {
                *value = Value::String(new.into_owned());
            }
            (Change::Values(values), container) => {
                for (step, new) in values {
                    if let Some(value @ (Value::String(_) | Value::Number(_))) =
                        step_mut(container, &step)
                    {
                        *value = Value::String(new.into_owned());
                    }
                }
            }
            (Change::Keys(renames), Value::Object(map)) => {
                let moved: Vec<(String, Value)> = renames
                    .into_iter()
                    .filter_map(|(old, new)| Some((new, map.remove(&old)?)))
                    .collect();
                map.extend(moved);
            }
            _ => {}
        }
    }
}

fn walk_mut<'v>(mut node: &'v mut Value, path: &[OwnedStep]) -> Option<&'v mut Value> {
    for step in path {
        node = step_mut(node, step)?;
    }
    Some(node)
}

fn step_mut<'v>(node: &'v mut Value, step: &OwnedStep) -> Option<&'v mut Value> {
    match step {
        OwnedStep::Key(k) => node.get_mut(&**k),
        OwnedStep::Index(i) => node.get_mut(*i),
    }
}
