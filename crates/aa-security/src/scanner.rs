//! The scanning engine: keyword prefilter (Vectorscan or Aho-Corasick) and digit-run detection find
//! candidates; regexes confirm them in small windows; gates reject decoys; normalisation and
//! decoding layers uncover hidden secrets; overlapping findings resolve to the strongest.

use std::sync::Arc;

use aa_core::CustomPattern;
use aho_corasick::AhoCorasick;
use regex::bytes::{Regex, RegexBuilder};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::decode::{self, Encoding};
use crate::error::SecurityError;
use crate::gates;
use crate::keywords::Keywords;
use crate::normalize::{Invisible, normalize};
use crate::redact::{Labelled, ReceiptKey, digest_prefix};
use crate::rules::{Gate, RULES, RuleDef, Severity, Trigger, is_personal_data};
use crate::runs::{self, DigitRun};

/// How far past its window a match that reaches the window's end may be extended.
const MAX_EXTENSION: usize = 64 * 1024;

/// How far past their windows one rule's matches may be extended in all, in a text of `len`
/// bytes: twice the text, and one extension more. Without a bound, a text that is one long
/// run of assignments (`token=token=...`) had each of its windows extended over the rest of
/// the run, and took seconds for a hundred kilobytes. Past it, a secret that reaches its
/// window's end is redacted up to the next white space ([`Scanner::confirm`]).
fn extension_budget(len: usize) -> usize {
    MAX_EXTENSION.saturating_add(len.saturating_mul(2))
}

/// How many encoded layers are peeled (an encoding inside an encoding is found).
const DECODE_DEPTH: usize = 2;

/// The most times a text is scanned again as it will read once redacted ([`Scanner::settle`]);
/// one is almost always enough, and each round only adds findings.
const SETTLE_ROUNDS: usize = 3;

/// The `inner` of a finding in escapes decoded in place, mapped back to its own span: exact, as
/// a direct finding is, so never dropped for the direct findings inside it ([`resolve_overlaps`]).
const EXACT: usize = usize::MAX;

/// One secret or piece of personal data found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule that matched, e.g. `aws-access-key-id`.
    pub rule_id: String,
    /// What was found, e.g. `aws_access_key`; also the redaction label.
    pub kind: String,
    /// How bad it is.
    pub severity: Severity,
    /// Byte offset of the start of the span to redact, in the scanned text.
    pub start: usize,
    /// Byte offset of its end (exclusive).
    pub end: usize,
    /// Set when the secret was found inside an encoded segment; the span is the whole segment.
    pub encoding: Option<Encoding>,
    /// The rule's position in the scanner (earlier is more specific), for tie-breaks.
    pub(crate) order: usize,
    /// For a finding over a whole decoded segment: how many findings the decoded text held;
    /// [`EXACT`] for one mapped to its own span.
    pub(crate) inner: usize,
    /// The receipt's digest prefix, when the secret is not the span's text as written: it
    /// was found decoded, or normalised (a fullwidth or zero-width-split key). A known leaked
    /// value is then recognised by its receipt however it was disguised.
    pub(crate) digest: Option<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    kind: String,
    severity: Severity,
    regex: Regex,
    /// Capture groups, the whole match's included.
    groups: usize,
    gate: Gate,
    /// Matched from the operator of an assignment to a name around a keyword
    /// ([`Trigger::Assigned`]).
    assigned: bool,
    /// Personal data a label names ([`Trigger::Label`]): found in a JSON value by its key.
    labelled: bool,
    /// Matched from the end of a keyword that starts a word, where no rule confirmed before
    /// it found something ([`Trigger::Prefix`]).
    prefix: bool,
    /// The fewest bytes the pattern matches.
    min_len: usize,
    before: usize,
    after: usize,
}

/// A compiled set of rules. Build once, share freely (`Sync`), scan many texts.
#[derive(Debug, Clone)]
pub struct Scanner {
    rules: Vec<Rule>,
    keywords: Arc<Keywords>,
    keyword_rules: Vec<Vec<usize>>,
    digit_rules: Vec<usize>,
    /// Custom patterns with no literal prefix: they run over every text.
    whole_text_rules: Vec<usize>,
    /// Custom patterns whose every match starts with one of a few literals: they run over the
    /// texts that hold one.
    prefixed: Option<Prefixes>,
    /// The fewest bytes any rule's pattern matches: a shorter text holds no finding.
    shortest_match: usize,
    /// Texts shorter than this are looked at before being scanned
    /// ([`cannot_hold_a_finding`](Self::cannot_hold_a_finding)).
    gated_below: usize,
    /// What receipts' digests are keyed with, if anything.
    pub(crate) receipt_key: Option<ReceiptKey>,
}

impl Scanner {
    /// The built-in rules.
    pub fn new() -> Result<Scanner, SecurityError> {
        Scanner::with_patterns(&[])
    }

    /// The built-in rules plus `patterns`; an invalid pattern is an error naming it.
    pub fn with_patterns(patterns: &[CustomPattern]) -> Result<Scanner, SecurityError> {
        let mut rules = Vec::with_capacity(RULES.len() + patterns.len());
        let mut keyword_list: Vec<&'static str> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut digit_rules = Vec::new();
        for def in RULES {
            let index = rules.len();
            rules.push(compile(def)?);
            match def.trigger {
                Trigger::Digits => digit_rules.push(index),
                Trigger::Keywords(words)
                | Trigger::Assigned(words)
                | Trigger::Label(words)
                | Trigger::Prefix(words) => {
                    for word in words {
                        match keyword_list.iter().position(|k| k == word) {
                            Some(k) => keyword_rules[k].push(index),
                            None => {
                                keyword_list.push(word);
                                keyword_rules.push(vec![index]);
                            }
                        }
                    }
                }
            }
        }
        let shortest_match = rules.iter().map(|r| r.min_len).min().unwrap_or(0);
        let built_in = Scanner {
            rules,
            keywords: Arc::new(Keywords::new(&keyword_list)?),
            keyword_rules,
            digit_rules,
            whole_text_rules: Vec::new(),
            prefixed: None,
            shortest_match,
            gated_below: runs::MIN_ENCODED,
            receipt_key: None,
        };
        built_in.added(patterns)
    }

    /// This scanner, its receipts' digests keyed with `key` ([`ReceiptKey`]); scanners it
    /// adds patterns to keep the key.
    pub fn with_receipt_key(mut self, key: ReceiptKey) -> Scanner {
        self.receipt_key = Some(key);
        self
    }

    /// This scanner's rules plus `patterns`, its own shared rather than compiled again (a
    /// policy bundle's patterns are added to the built-in rules each time it changes); this
    /// scanner itself when there are none. An invalid pattern is an error naming it.
    pub fn with_patterns_added(
        self: &Arc<Self>,
        patterns: &[CustomPattern],
    ) -> Result<Arc<Scanner>, SecurityError> {
        if patterns.is_empty() {
            return Ok(Arc::clone(self));
        }
        Ok(Arc::new(self.added(patterns)?))
    }

    fn added(&self, patterns: &[CustomPattern]) -> Result<Scanner, SecurityError> {
        let mut scanner = self.clone();
        let mut prefixes = self
            .prefixed
            .as_ref()
            .map(|p| p.prefixes.clone())
            .unwrap_or_default();
        for pattern in patterns {
            let order = scanner.rules.len();
            scanner.rules.push(custom(pattern)?);
            match literal_prefixes(&pattern.regex) {
                Some(literals) => prefixes.extend(literals.into_iter().map(|l| (l, order))),
                None => scanner.whole_text_rules.push(order),
            }
        }
        if !prefixes.is_empty() {
            scanner.prefixed = Some(Prefixes::new(prefixes)?);
        }
        scanner.shortest_match = scanner.rules.iter().map(|r| r.min_len).min().unwrap_or(0);
        // A text too short to hold an encoded run is started on by a keyword or a digit run
        // only, unless a custom pattern runs over every text.
        scanner.gated_below = if scanner.whole_text_rules.is_empty() {
            runs::MIN_ENCODED
        } else {
            scanner.shortest_match.min(runs::MIN_ENCODED)
        };
        Ok(scanner)
    }

    /// How many rules the scanner runs.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Every finding in `text`, non-overlapping, in text order.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        self.settle(text.as_bytes(), self.scan_as_is(text))
    }

    /// The credentials in `value` when it is assigned to the name `key`, as a JSON object's
    /// string value is to its key: read as `"key": "value"` reads in the serialised document,
    /// which a field-by-field scan never sees (`{"password": "..."}`), and the personal data
    /// a key labels (`{"ssn": "..."}`). Only names holding a keyword of an assignment rule or
    /// a label are read this way. Spans are in `value`.
    pub(crate) fn assigned(&self, key: &str, value: &str) -> Vec<Finding> {
        let mut names_a_secret = false;
        self.keywords.find(key.as_bytes(), |keyword, _, _| {
            names_a_secret |= self
                .keyword_rules
                .get(keyword)
                .into_iter()
                .flatten()
                .any(|&rule| {
                    self.rules
                        .get(rule)
                        .is_some_and(|r| r.assigned || r.labelled)
                });
        });
        if !names_a_secret {
            return Vec::new();
        }
        let mut line = format!("\"{key}\": \"");
        let start = line.len();
        line.push_str(value);
        let end = line.len();
        line.push('"');
        self.scan(&line)
            .into_iter()
            // Personal data the value holds alone is found in it alone; only what its key
            // labels needs the key.
            .filter(|f| {
                let labelled = self.rules.get(f.order).is_some_and(|r| r.labelled);
                start <= f.start && f.end <= end && (labelled || !is_personal_data(&f.kind))
            })
            .map(|mut f| {
                // A value a secret's name is assigned is that secret whole: an assignment rule
                // reads one only up to white space or punctuation, as it would in code, which
                // left the rest of `"Tr0ub4dor&3xK9;qLm"` or `"Xk9#mQ2vLp, hunter2"` behind.
                if f.start == start && self.rules.get(f.order).is_some_and(|r| r.assigned) {
                    f.end = end;
                    // The secret is the value whole now, digested as it reads (normalised),
                    // not as the part first found.
                    f.digest =
                        normalize(value, Invisible::Drop).map(|n| digest_prefix(n.text.as_bytes()));
                }
                (f.start, f.end) = (f.start - start, f.end - start);
                f
            })
            .collect()
    }

    /// [`scan`](Self::scan) without settling: what the text holds as it is, not as it will
    /// read once redacted. A document's seams are read this way; the document's own passes
    /// read them again once cut.
    pub(crate) fn scan_as_is(&self, text: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.scan_layer(text, 0, &mut findings);
        resolve_overlaps(findings)
    }

    /// Like [`scan`](Self::scan) for bytes that may not be UTF-8: each valid run is scanned;
    /// invalid bytes are skipped, never a panic.
    pub fn scan_bytes(&self, bytes: &[u8]) -> Vec<Finding> {
        self.settle(bytes, self.scan_bytes_as_is(bytes))
    }

    /// A label is not what it replaces: a secret that ends in a digit becomes a label that
    /// ends in `]`, which a pattern may take as a boundary (in `4111 1111 1111 1111+4111 1111
    /// 1111` a phone number starts at the `+` only once the card before it is a label). So a
    /// text with findings is scanned again as it will read once redacted, and what that finds
    /// is added, until nothing new is found: redacting a redacted text then finds nothing.
    fn settle(&self, input: &[u8], mut findings: Vec<Finding>) -> Vec<Finding> {
        for _ in 0..SETTLE_ROUNDS {
            if findings.is_empty() {
                break;
            }
            let labelled =
                Labelled::new(input, findings.iter().map(|f| (f.start, f.end, &*f.kind)));
            let reach = Reach::new(&findings);
            let new: Vec<Finding> = self
                .scan_bytes_as_is(&labelled.bytes)
                .into_iter()
                .map(|mut f| {
                    (f.start, f.end) = labelled.original_span(f.start, f.end);
                    f
                })
                .filter(|f| !reach.covers(f.start, f.end))
                .collect();
            if new.is_empty() {
                break;
            }
            findings.extend(new);
            findings = resolve_overlaps(findings);
        }
        findings
    }

    /// [`scan_bytes`](Self::scan_bytes) without settling.
    fn scan_bytes_as_is(&self, bytes: &[u8]) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut offset = 0;
        let mut valid_runs = 0;
        for chunk in bytes.utf8_chunks() {
            let valid = chunk.valid();
            let mut part = Vec::new();
            self.scan_layer(valid, 0, &mut part);
            findings.extend(part.into_iter().map(|mut f| {
                f.start += offset;
                f.end += offset;
                f
            }));
            offset += valid.len() + chunk.invalid().len();
            valid_runs += usize::from(!valid.is_empty());
        }
        if valid_runs > 1 {
            let joined = self.scan_joined(bytes);
            add_uncovered(&mut findings, 0, joined);
        }
        resolve_overlaps(findings)
    }

    /// The findings in the valid runs of `bytes` joined, its invalid bytes dropped, with spans
    /// in `bytes` (over the bytes dropped inside them): a byte that is not UTF-8 inside a
    /// secret splits it into pieces, each too short to be found alone.
    fn scan_joined(&self, bytes: &[u8]) -> Vec<Finding> {
        let mut joined = String::with_capacity(bytes.len());
        // Where each valid run starts, in `joined` and in `bytes`.
        let mut starts = Vec::new();
        let mut offset = 0;
        for chunk in bytes.utf8_chunks() {
            starts.push((joined.len(), offset));
            joined.push_str(chunk.valid());
            offset += chunk.valid().len() + chunk.invalid().len();
        }
        // Of runs starting at the same place, all but the last are empty.
        let in_bytes = |at: usize| {
            let run = starts
                .partition_point(|&(from, _)| from <= at)
                .saturating_sub(1);
            starts.get(run).map_or(at, |&(from, to)| to + (at - from))
        };
        let mut found = Vec::new();
        self.scan_layer(&joined, 0, &mut found);
        for f in &mut found {
            if f.digest.is_none() {
                let secret = joined.as_bytes().get(f.start..f.end).unwrap_or_default();
                f.digest = Some(digest_prefix(secret));
            }
            (f.start, f.end) = (in_bytes(f.start), in_bytes(f.end.saturating_sub(1)) + 1);
        }
        found
    }

    /// Scans `text` (normalised when that changes it), then its decoded segments. A text that
    /// held invisible characters is read twice: with them dropped, and with each one as a
    /// space, since one may split a secret (`ghp_R8xk\u{200B}Q2m…`) or part two words
    /// (`token\u{200B}ghp_…`, which dropping it glues into one). What the second reading adds
    /// is kept.
    fn scan_layer(&self, text: &str, depth: usize, out: &mut Vec<Finding>) {
        self.scan_layer_as(text, Invisible::Drop, depth, out);
    }

    /// [`scan_layer`](Self::scan_layer), reading invisible characters as `invisible` says.
    fn scan_layer_as(
        &self,
        text: &str,
        invisible: Invisible,
        depth: usize,
        out: &mut Vec<Finding>,
    ) {
        let normalized = normalize(text, invisible);
        let view = normalized.as_ref().map_or(text, |n| n.text.as_str());
        let first = out.len();
        if !self.cannot_hold_a_finding(view) {
            let runs = runs::find(view.as_bytes());
            let mut found = Vec::new();
            self.match_rules(view, &runs.digits, &mut found);
            if depth < DECODE_DEPTH {
                decode::segments(view, &runs, |segment| {
                    let mut inner = Vec::new();
                    self.scan_layer(&segment.decoded, depth + 1, &mut inner);
                    let digest = |f: &Finding| {
                        f.digest.clone().unwrap_or_else(|| {
                            let secret = segment.decoded.as_bytes().get(f.start..f.end);
                            digest_prefix(secret.unwrap_or_default())
                        })
                    };
                    if let Some(origin) = &segment.origin {
                        for f in inner {
                            let digest = Some(digest(&f));
                            found.push(Finding {
                                start: origin.get(f.start).copied().unwrap_or(segment.end),
                                end: origin.get(f.end).copied().unwrap_or(segment.end),
                                encoding: Some(segment.encoding),
                                inner: EXACT,
                                digest,
                                ..f
                            });
                        }
                    } else if let Some(strongest) = inner.iter().max_by_key(|f| f.severity) {
                        found.push(Finding {
                            rule_id: strongest.rule_id.clone(),
                            kind: strongest.kind.clone(),
                            severity: strongest.severity,
                            start: segment.start,
                            end: segment.end,
                            encoding: Some(segment.encoding),
                            order: strongest.order,
                            inner: inner.len(),
                            digest: Some(digest(strongest)),
                        });
                    }
                });
            }
            if let Some(n) = &normalized {
                for f in &mut found {
                    if f.digest.is_none() {
                        let secret = n.text.as_bytes().get(f.start..f.end).unwrap_or_default();
                        f.digest = Some(digest_prefix(secret));
                    }
                    (f.start, f.end) = n.original_span(text, f.start, f.end);
                }
            }
            out.extend(found);
        }
        if invisible == Invisible::Drop && normalized.is_some_and(|n| n.had_invisible) {
            let mut spaced = Vec::new();
            self.scan_layer_as(text, Invisible::Space, depth, &mut spaced);
            add_uncovered(out, first, spaced);
        }
    }

    /// Whether `view`, a normalised text shorter than an encoded run, can hold no finding,
    /// nor anything it could decode to: it holds no `%` or `\` (which start percent and escape
    /// decoding; decoding never lengthens a text, but the decoded text is normalised again,
    /// which can: NFKC expands some ligatures), and it is shorter than any rule's shortest
    /// match, or holds no keyword, no custom pattern's prefix and too few digits for a digit
    /// run. Most keys and many values of an event are this short (`id`, `type`, `path`,
    /// `tool_call`), and a scan's fixed cost is most of theirs.
    fn cannot_hold_a_finding(&self, view: &str) -> bool {
        let bytes = view.as_bytes();
        if bytes.len() >= self.gated_below || bytes.iter().any(|&b| b == b'%' || b == b'\\') {
            return false;
        }
        bytes.len() < self.shortest_match
            || (bytes.iter().filter(|b| b.is_ascii_digit()).count() < runs::MIN_DIGITS
                && !self.keywords.occur_in(bytes)
                && !self.prefixed.as_ref().is_some_and(|p| p.occur_in(bytes)))
    }

    /// Runs the rules over one text, as is.
    fn match_rules(&self, text: &str, digit_runs: &[DigitRun], out: &mut Vec<Finding>) {
        let bytes = text.as_bytes();
        let mut windows: Vec<(usize, usize, usize)> = Vec::new();
        // Windows for anchored patterns, which start at an assignment's operator or at a
        // prefix's end: never merged.
        let mut anchored: Vec<(usize, usize, usize)> = Vec::new();
        self.keywords.find(bytes, |keyword, start, end| {
            for &rule in self.keyword_rules.get(keyword).into_iter().flatten() {
                match self.rules.get(rule) {
                    Some(r) if r.assigned => {
                        if let Some(op) = gates::assignment_operator(bytes, start, end, r.after) {
                            anchored.push((rule, op, (op + r.after).min(bytes.len())));
                        }
                    }
                    Some(r) if r.prefix => {
                        let word_start = start
                            .checked_sub(1)
                            .and_then(|before| bytes.get(before))
                            .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
                        if word_start {
                            anchored.push((rule, end, (end + r.after).min(bytes.len())));
                        }
                    }
                    _ => windows.push(self.window(rule, start, end, bytes.len())),
                }
            }
        });
        for run in digit_runs {
            for &rule in &self.digit_rules {
                // A cheap look at the run and its context spares most regex searches.
                if self
                    .rules
                    .get(rule)
                    .is_some_and(|r| gates::may_hold(r.gate, bytes, run))
                {
                    windows.push(self.window(rule, run.start, run.end, bytes.len()));
                }
            }
        }
        if let Some(prefixed) = &self.prefixed {
            prefixed.started(bytes, |rule| windows.push((rule, 0, bytes.len())));
        }
        for &rule in &self.whole_text_rules {
            windows.push((rule, 0, bytes.len()));
        }
        // Merge overlapping windows of the same rule in place, so each region is searched once.
        windows.sort_unstable();
        windows.dedup_by(|next, last| {
            let overlaps = last.0 == next.0 && next.1 <= last.2;
            if overlaps {
                last.2 = last.2.max(next.2);
            }
            overlaps
        });
        anchored.sort_unstable();
        anchored.dedup();
        // A rule's windows are together in either list, and no rule is in both.
        let mut current: Option<(usize, RuleState)> = None;
        for (rule, start, end) in windows.into_iter().chain(anchored) {
            let Some(window) = bytes.get(start..end) else {
                continue;
            };
            let state = match &mut current {
                Some((r, state)) if *r == rule => state,
                _ => {
                    let prefix = self.rules.get(rule).is_some_and(|r| r.prefix);
                    let state = RuleState {
                        extensions_left: extension_budget(bytes.len()),
                        redacted_to: 0,
                        // What the rules confirmed before this one found, as it stands now.
                        earlier: prefix.then(|| Reach::new(out)),
                    };
                    &mut current.insert((rule, state)).1
                }
            };
            if start < state.redacted_to {
                continue;
            }
            // A prefix's secret is the token after its white space: where another rule's
            // finding covers it whole, that rule names it, and no search is needed. One that
            // covers only a part (a custom pattern's `ACME-1234` of `ACME-1234abcd…`) leaves
            // the rest to this rule.
            if let Some(earlier) = &state.earlier {
                let blanks = window
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
                let token = window
                    .get(blanks..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b))
                    .count();
                let at = start + blanks;
                if token > 0 && earlier.covers(at, at + token) {
                    continue;
                }
            }
            self.confirm(rule, window, start, text, state, out);
        }
    }

    fn window(&self, rule: usize, start: usize, end: usize, len: usize) -> (usize, usize, usize) {
        let (before, after) = self.rules.get(rule).map_or((0, 0), |r| (r.before, r.after));
        (
            rule,
            start.saturating_sub(before),
            end.saturating_add(after).min(len),
        )
    }

    /// Adds the matches of the rule at `order` in `window` (at `offset` in `text`) that pass
    /// its gate, extending those that reach the window's end by what is left of the rule's
    /// budget in `state`.
    fn confirm(
        &self,
        order: usize,
        window: &[u8],
        offset: usize,
        text: &str,
        state: &mut RuleState,
        out: &mut Vec<Finding>,
    ) {
        let Some(rule) = self.rules.get(order) else {
            return;
        };
        let bytes = text.as_bytes();
        let window_end = offset + window.len();
        // Resume each search where the secret ended, not where the match did: a match may
        // consume the delimiter that the next one needs to start with.
        let mut locations = rule.regex.capture_locations();
        let mut at = 0;
        while at <= window.len() {
            let Some(mut whole) = rule.regex.captures_read_at(&mut locations, window, at) else {
                break;
            };
            // A match that runs into the window's end may be cut short (a long value, a long
            // JWT): search again from its start over the rest of the text, up to MAX_EXTENSION.
            let mut cut = false;
            if whole.end() == window.len() && window_end < text.len() {
                if state.extensions_left > 0 {
                    let limit =
                        (window_end + MAX_EXTENSION.min(state.extensions_left)).min(text.len());
                    let wider = bytes.get(offset..limit).unwrap_or(window);
                    if let Some(longer) =
                        rule.regex
                            .captures_read_at(&mut locations, wider, whole.start())
                    {
                        whole = longer;
                    }
                    state.extensions_left = state
                        .extensions_left
                        .saturating_sub((offset + whole.end()).saturating_sub(window_end));
                } else {
                    cut = true;
                }
            }
            // The secret is the first group that took part (a pattern's alternatives may each
            // have their own), else the whole match.
            let (start, end) = (1..rule.groups)
                .find_map(|group| locations.get(group))
                .unwrap_or((whole.start(), whole.end()));
            at = end.max(whole.start() + 1);
            let (start, mut end) = (offset + start, offset + end);
            // Cut by its window's end, a secret may stop inside a character; it is redacted on
            // to the next white space (below), so it is judged up to the character's start.
            let cut_by_window = cut && end == window_end;
            if cut_by_window {
                while end > start && !text.is_char_boundary(end) {
                    end -= 1;
                }
            }
            let span = bytes.get(start..end).unwrap_or_default();
            // A span must fall on character boundaries to be redacted cleanly. An empty span
            // has nothing to redact: a label there would only add text.
            if start < end && text.is_char_boundary(start) && text.is_char_boundary(end) {
                let accepted = if gates::passes(rule.gate, bytes, start, end) {
                    Some((start, end))
                } else {
                    gates::narrowed(rule.gate, span).map(|(s, e)| (start + s, start + e))
                };
                let Some((start, end)) = accepted else {
                    continue;
                };
                // Past the budget, a secret cut by its window's end is redacted up to the next
                // white space: more than the secret perhaps, never less (but for one that
                // holds white space).
                let redact_to = if cut_by_window {
                    bytes
                        .get(end..)
                        .and_then(|rest| rest.iter().position(u8::is_ascii_whitespace))
                        .map_or(text.len(), |p| end + p)
                } else {
                    end
                };
                if redact_to > end {
                    state.redacted_to = state.redacted_to.max(redact_to);
                }
                out.push(Finding {
                    rule_id: rule.id.clone(),
                    kind: rule.kind.clone(),
                    severity: rule.severity,
                    start,
                    end: redact_to,
                    encoding: None,
                    order,
                    inner: 0,
                    digest: None,
                });
            }
        }
    }
}

/// One rule's state over a text's windows: how many bytes past their windows its matches
/// may still be extended ([`extension_budget`]), how far a match found past that budget was
/// redacted (a window that starts before there adds nothing to it), and for a prefix rule,
/// where the rules confirmed before it found something.
#[derive(Debug)]
struct RuleState {
    extensions_left: usize,
    redacted_to: usize,
    earlier: Option<Reach>,
}

/// Spans sorted by start, each end raised to the furthest end so far: one binary search tells
/// how far the spans that start up to a point reach.
#[derive(Debug)]
struct Reach(Vec<(usize, usize)>);

impl Reach {
    fn new(findings: &[Finding]) -> Reach {
        let mut spans: Vec<(usize, usize)> = findings.iter().map(|f| (f.start, f.end)).collect();
        spans.sort_unstable();
        let mut furthest = 0;
        for span in &mut spans {
            furthest = furthest.max(span.1);
            span.1 = furthest;
        }
        Reach(spans)
    }

    /// The furthest end of the spans that start at or before `at`, if any does.
    fn up_to(&self, at: usize) -> Option<usize> {
        let before = self.0.partition_point(|&(start, _)| start <= at);
        before
            .checked_sub(1)
            .and_then(|i| self.0.get(i))
            .map(|&(_, end)| end)
    }

    /// Whether `start..end` lies wholly within a span.
    fn covers(&self, start: usize, end: usize) -> bool {
        self.up_to(start).is_some_and(|reach| reach >= end)
    }
}

fn compile(def: &RuleDef) -> Result<Rule, SecurityError> {
    let regex = RegexBuilder::new(def.pattern)
        .unicode(false)
        .size_limit(4 << 20)
        .build()
        .map_err(|e| SecurityError::Internal(format!("rule {}: {e}", def.id)))?;
    Ok(Rule {
        id: def.id.to_owned(),
        kind: def.kind.to_owned(),
        severity: def.severity,
        groups: regex.captures_len(),
        regex,
        gate: def.gate,
        assigned: matches!(def.trigger, Trigger::Assigned(_)),
        labelled: matches!(def.trigger, Trigger::Label(_)),
        prefix: matches!(def.trigger, Trigger::Prefix(_)),
        min_len: shortest_match(def.pattern, false),
        before: def.before,
        after: def.after,
    })
}

fn custom(pattern: &CustomPattern) -> Result<Rule, SecurityError> {
    if !CustomPattern::valid_name(&pattern.name) {
        return Err(SecurityError::InvalidPattern {
            name: pattern.name.clone(),
            message: "names are letters, digits, '_' and '-'".to_owned(),
        });
    }
    let regex = RegexBuilder::new(&pattern.regex)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let last = text.lines().last().unwrap_or_default().trim();
            SecurityError::InvalidPattern {
                name: pattern.name.clone(),
                message: last.strip_prefix("error: ").unwrap_or(last).to_owned(),
            }
        })?;
    if CustomPattern::matches_empty(&pattern.regex) {
        return Err(SecurityError::InvalidPattern {
            name: pattern.name.clone(),
            message: "it can match the empty string".to_owned(),
        });
    }
    Ok(Rule {
        id: format!("custom-{}", pattern.name),
        kind: pattern.name.clone(),
        severity: Severity::High,
        groups: 1,
        regex,
        gate: Gate::None,
        assigned: false,
        labelled: false,
        prefix: false,
        min_len: shortest_match(&pattern.regex, true),
        before: 0,
        after: 0,
    })
}

/// The fewest bytes `pattern` matches, parsed as the scanner's regexes are (bytes, Unicode
/// classes as given); 0 when unknown, which only costs a scan.
fn shortest_match(pattern: &str, unicode: bool) -> usize {
    parse(pattern, unicode)
        .and_then(|hir| hir.properties().minimum_len())
        .unwrap_or(0)
}

fn parse(pattern: &str, unicode: bool) -> Option<regex_syntax::hir::Hir> {
    regex_syntax::ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()
}

/// Literals every match of the custom `pattern` starts with, when there are a few: a text
/// holding none of them holds no match, so the pattern need not run over it. `None` when any
/// match could start otherwise (`[A-Z]{3}-\d+`), or with the empty string (`x?`).
fn literal_prefixes(pattern: &str) -> Option<Vec<Vec<u8>>> {
    const MOST: usize = 64;
    let seq = Extractor::new()
        .kind(ExtractKind::Prefix)
        .extract(&parse(pattern, true)?);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.len() > MOST || literals.iter().any(|l| l.is_empty()) {
        return None;
    }
    Some(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
}

/// The prefix search of the custom patterns that have literal prefixes ([`literal_prefixes`]).
/// Such a pattern runs over a text only when the text holds one of its prefixes: before, every
/// custom pattern ran over every text, short ones included, which cost a small event a
/// quarter more to scan.
#[derive(Debug, Clone)]
struct Prefixes {
    search: AhoCorasick,
    /// Whether a literal starts with the byte: most short texts hold none, which this tells
    /// for less than the search's fixed cost.
    first: [bool; 256],
    /// Each literal and the rule (its order) whose matches it starts.
    prefixes: Vec<(Vec<u8>, usize)>,
    rules: usize,
}

impl Prefixes {
    fn new(prefixes: Vec<(Vec<u8>, usize)>) -> Result<Prefixes, SecurityError> {
        let search = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::Standard)
            .build(prefixes.iter().map(|(literal, _)| literal))
            .map_err(|e| SecurityError::Internal(format!("custom pattern prefixes: {e}")))?;
        let mut rules: Vec<usize> = prefixes.iter().map(|&(_, rule)| rule).collect();
        rules.sort_unstable();
        rules.dedup();
        let mut first = [false; 256];
        for (literal, _) in &prefixes {
            if let Some(&b) = literal.first() {
                first[usize::from(b)] = true;
            }
        }
        Ok(Prefixes {
            search,
            first,
            prefixes,
            rules: rules.len(),
        })
    }

    /// Whether `bytes`, a short text, holds a prefix.
    fn occur_in(&self, bytes: &[u8]) -> bool {
        bytes.iter().any(|&b| self.first[usize::from(b)]) && self.search.is_match(bytes)
    }

    /// Calls `start(rule)` once for each rule one of whose prefixes `bytes` holds.
    fn started(&self, bytes: &[u8], mut start: impl FnMut(usize)) {
        // Most texts hold none: one search, on the prefilter, says so.
        if !self.search.is_match(bytes) {
            return;
        }
        let mut started: Vec<usize> = Vec::new();
        // Overlapping matches are what a `Standard` search, as built, allows: never an error.
        let found = self
            .search
            .try_find_overlapping_iter(bytes)
            .into_iter()
            .flatten();
        for found in found {
            let Some(&(_, rule)) = self.prefixes.get(found.pattern().as_usize()) else {
                continue;
            };
            if !started.contains(&rule) {
                started.push(rule);
                start(rule);
                if started.len() == self.rules {
                    break;
                }
            }
        }
    }
}

/// Appends to `out` those of `more` not within a finding of `out[first..]`: a second reading
/// of the same text finds most of what the first did again, and a finding counted twice
/// would hide a decoded segment's second secret ([`resolve_overlaps`]).
fn add_uncovered(out: &mut Vec<Finding>, first: usize, more: Vec<Finding>) {
    let reach = Reach::new(out.get(first..).unwrap_or_default());
    out.extend(more.into_iter().filter(|f| !reach.covers(f.start, f.end)));
}

/// Makes findings disjoint and returns them in text order. A decoded segment whose findings
/// are all found directly inside it is dropped (the direct spans are exact); other
/// overlapping findings merge into one span covering both, named after the best of them:
/// direct before decoded, then higher severity, then longer, then the earlier (more specific)
/// rule. Merging rather than dropping leaves no part of any match unredacted.
fn resolve_overlaps(findings: Vec<Finding>) -> Vec<Finding> {
    if findings.len() < 2 {
        return findings;
    }
    // Direct findings by start, to count those inside a decoded segment without a quadratic scan.
    let mut direct_starts: Vec<usize> = findings
        .iter()
        .filter(|f| f.encoding.is_none())
        .map(|f| f.start)
        .collect();
    direct_starts.sort_unstable();
    let direct_within = |f: &Finding| {
        let from = direct_starts.partition_point(|s| *s < f.start);
        let to = direct_starts.partition_point(|s| *s < f.end);
        to - from
    };
    // A decoded segment whose every finding is already found directly adds nothing but a
    // wider span; one that holds more (a second, encoded secret) is kept.
    let mut ranked: Vec<Finding> = findings
        .into_iter()
        .filter(|f| f.encoding.is_none() || direct_within(f) < f.inner)
        .collect();
    ranked.sort_by(|a, b| {
        a.encoding
            .is_some()
            .cmp(&b.encoding.is_some())
            .then(b.severity.cmp(&a.severity))
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.order.cmp(&b.order))
            .then(a.start.cmp(&b.start))
    });
    let mut by_position: Vec<(usize, Finding)> = ranked.into_iter().enumerate().collect();
    by_position.sort_by_key(|(_, f)| (f.start, f.end));
    let mut merged: Vec<(usize, Finding)> = Vec::with_capacity(by_position.len());
    for (rank, f) in by_position {
        match merged.last_mut() {
            Some((best, group)) if f.start < group.end => {
                let (start, end) = (group.start, group.end.max(f.end));
                if rank < *best {
                    *best = rank;
                    *group = f;
                }
                group.start = start;
                group.end = end;
            }
            _ => merged.push((rank, f)),
        }
    }
    merged.into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_counts_rules() {
        let scanner = Scanner::new().unwrap();
        assert!(scanner.rule_count() >= 65);
    }

    /// Keywords added with new rules must still fit the keyword table (`Scanner::new` fails
    /// when they do not): 784 states of 64 classes took 0.77 of its 16-bit index space. Past
    /// 0.9, widen its entries to 32 bits.
    #[test]
    fn the_built_in_keywords_leave_room_in_their_table() {
        let share = Scanner::new().unwrap().keywords.table_share();
        assert!(share < 0.9, "the keywords take {share:.2} of their table");
    }

    #[test]
    fn custom_patterns_are_validated() {
        let bad = CustomPattern {
            name: "emp".into(),
            regex: "EMP-(".into(),
        };
        let err = Scanner::with_patterns(&[bad]).unwrap_err();
        assert_eq!(err.to_string(), "invalid pattern \"emp\": unclosed group");
        let good = CustomPattern {
            name: "employee_id".into(),
            regex: r"EMP-\d{6}".into(),
        };
        let scanner = Scanner::with_patterns(&[good]).unwrap();
        let found = scanner.scan("badge EMP-123456 issued");
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind.as_str(), found[0].start, found[0].end),
            ("employee_id", 6, 16)
        );
    }

    #[test]
    fn the_shortest_match_is_the_shortest_rule() {
        let scanner = Scanner::new().unwrap();
        // An e-mail address (`a@b.co`) is the shortest thing the built-in rules find.
        assert_eq!(scanner.shortest_match, 6);
        assert_eq!(scanner.scan("a@b.co").len(), 1);
        let short = CustomPattern {
            name: "short".into(),
            regex: "x|yz".into(),
        };
        assert_eq!(Scanner::with_patterns(&[short]).unwrap().shortest_match, 1);
        let loose = CustomPattern {
            name: "any".into(),
            regex: "x?".into(),
        };
        assert_eq!(
            Scanner::with_patterns(&[loose]).unwrap_err().to_string(),
            "invalid pattern \"any\": it can match the empty string"
        );
    }

    /// Past its rule's extension budget, a match cut by its window's end is redacted up to the
    /// next white space, even when the window ends inside a character.
    #[test]
    fn a_match_cut_inside_a_character_is_redacted_to_the_white_space() {
        let scanner = Scanner::new().unwrap();
        let order = scanner
            .rules
            .iter()
            .position(|r| r.id == "generic-secret-assignment")
            .unwrap();
        let text = "password = hQ7vL2pX9mR4tZ\u{e9}\u{e9}\u{e9}x rest";
        let op = text.find('=').unwrap();
        let inside = text.find('\u{e9}').unwrap() + 3;
        assert!(!text.is_char_boundary(inside));
        let mut state = RuleState {
            extensions_left: 0,
            redacted_to: 0,
            earlier: None,
        };
        let mut found = Vec::new();
        let window = text.as_bytes().get(op..inside).unwrap();
        scanner.confirm(order, window, op, text, &mut state, &mut found);
        let spans: Vec<&str> = found.iter().map(|f| &text[f.start..f.end]).collect();
        assert_eq!(spans, ["hQ7vL2pX9mR4tZ\u{e9}\u{e9}\u{e9}x"]);
    }

    #[test]
    fn custom_patterns_with_literal_prefixes_run_only_where_one_occurs() {
        let prefixed = |regex: &str| literal_prefixes(regex).map(|l| l.len());
        assert_eq!(prefixed(r"EMP-\d{6}"), Some(1));
        assert_eq!(prefixed(r"\b(?:EMP|CTR)-\d{6}\b"), Some(2));
        // Unicode case folding: `k` also matches the Kelvin sign.
        assert_eq!(prefixed(r"(?i)key-\d+"), Some(12));
        assert_eq!(prefixed(r"[A-Z]{3}-\d+"), None);
        assert_eq!(prefixed(r"x?"), None);
        assert_eq!(prefixed(r".*EMP"), None);
        let scanner = Scanner::with_patterns(&[
            CustomPattern {
                name: "employee_id".into(),
                regex: r"\bEMP-\d{6}\b".into(),
            },
            CustomPattern {
                name: "ticket".into(),
                regex: r"\d{2}#[a-z]{3}".into(),
            },
        ])
        .unwrap();
        assert_eq!(scanner.whole_text_rules, vec![scanner.rule_count() - 1]);
        let kinds = |text: &str| -> Vec<String> {
            scanner.scan(text).into_iter().map(|f| f.kind).collect()
        };
        // Short texts are skipped unless they hold a prefix, and a prefix alone is no match:
        // the regex still decides, over the whole text (so `\b` sees the byte before it).
        assert_eq!(kinds("EMP-123456"), ["employee_id"]);
        assert_eq!(kinds("XEMP-123456"), Vec::<String>::new());
        assert_eq!(kinds("EMP-12"), Vec::<String>::new());
        assert_eq!(kinds("12#abc"), ["ticket"]);
        // Found where normalising or decoding makes the prefix appear.
        assert_eq!(kinds("\u{FF25}MP-123456"), ["employee_id"]);
        assert_eq!(
            kinds("id=YmFkZ2UgRU1QLTEyMzQ1NiBpc3N1ZWQ= ok"),
            ["employee_id"]
        );
    }

    proptest::proptest! {
        /// Texts made of pieces of custom patterns' matches, prefixes and their disguises
        /// (fullwidth, escaped, percent-encoded, base64, split by a zero-width space): running
        /// a pattern only over the texts that hold one of its prefixes finds what running it
        /// over every text does.
        #[test]
        fn prefixed_patterns_find_what_whole_text_patterns_do(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "EMP-", "emp-", "EMP", "-", "123456", "12", " ", "X", "\u{FF25}",
                    "\\u0045", "%45", "YmFkZ2UgRU1QLTEyMzQ1NiBpc3N1ZWQ=", "\u{200B}", "acct_", "ACCT_", "abcd",
                    "Kelvin", "\u{212A}EY-", "key-", "9", "\n",
                ]),
                0..8,
            )
        ) {
            static SCANNERS: std::sync::LazyLock<(Scanner, Scanner)> =
                std::sync::LazyLock::new(|| {
                    let patterns = [
                        (r"EMP-\d{6}", "employee_id"),
                        (r"(?i)\bacct_[a-z]{4}\b", "account"),
                        (r"(?i)^key-\d+$", "key"),
                    ]
                    .map(|(regex, name)| CustomPattern { name: name.into(), regex: regex.into() });
                    let prefixed = Scanner::with_patterns(&patterns).unwrap();
                    let mut everywhere = prefixed.clone();
                    let mut moved: Vec<usize> = everywhere
                        .prefixed
                        .take()
                        .map(|p| p.prefixes.into_iter().map(|(_, rule)| rule).collect())
                        .unwrap_or_default();
                    moved.sort_unstable();
                    moved.dedup();
                    assert_eq!(moved.len(), 3);
                    everywhere.whole_text_rules.extend(moved);
                    // As a scanner with patterns run over every text skips fewer short texts.
                    everywhere.gated_below = everywhere.shortest_match.min(runs::MIN_ENCODED);
                    assert!(prefixed.gated_below > everywhere.gated_below);
                    (prefixed, everywhere)
                });
            let (prefixed, everywhere) = &*SCANNERS;
            let text = pieces.concat();
            proptest::prop_assert_eq!(prefixed.scan(&text), everywhere.scan(&text));
        }

        /// Short texts, from pieces of what the rules find (keywords, digits), escapes whose
        /// decoding NFKC expands (`\u{FDFA}` becomes 18 characters), and noise: skipping those
        /// that cannot hold a finding changes nothing.
        #[test]
        fn skipping_short_texts_finds_what_scanning_them_does(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a@b.co", "@", ".c", "ab", "555", "-", " ", "%41", "%EF%B7%BA",
                    "\\ufdfa", "\\u0040", "\u{FDFA}", "ｂ", "\u{200B}", "ghp_", "x", "1234567", "+1415555", "2671",
                    "AKIA", "pwd=", "sk-",
                ]),
                0..6,
            )
        ) {
            static SCANNERS: std::sync::LazyLock<(Scanner, Scanner)> =
                std::sync::LazyLock::new(|| {
                    let mut unskipped = Scanner::new().unwrap();
                    unskipped.gated_below = 0;
                    (Scanner::new().unwrap(), unskipped)
                });
            let (scanner, unskipped) = &*SCANNERS;
            let text = pieces.concat();
            proptest::prop_assert_eq!(scanner.scan(&text), unskipped.scan(&text));
        }
    }
}
