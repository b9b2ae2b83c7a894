//! The keyword prefilter: every occurrence of every rule keyword, ignoring ASCII case.
//!
//! The search walks an Aho-Corasick DFA, from the `aho-corasick` crate's automaton laid out
//! here as a table a step reads without bounds checks or state tests beyond one comparison.
//! The automaton holds each keyword's first [`HEAD`] bytes only; where a head occurs, the rest
//! of a longer keyword is compared byte by byte. One walk is bound by the latency of its table
//! loads (each step needs the state the last one found), so a text is cut into two or four
//! parts, each started a head's length early, and the walks advance together: their loads
//! overlap. Short heads keep that overlap short, so texts of a few dozen bytes are split too.
//!
//! With the `vectorscan` feature the search runs on a Vectorscan literal database instead
//! (SIMD); the table serves whenever Vectorscan reports an error, so a scan never fails.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::noncontiguous::NFA;
use aho_corasick::{Anchored, MatchKind};

use crate::error::SecurityError;

/// The bytes of a keyword the automaton holds: the longest overlap between split walks.
const HEAD: usize = 8;

/// From this many bytes a text is walked in two parts, and from [`SPLIT_IN_FOUR`] in four:
/// each extra walk reads a head's length again, which outweighs the overlapped loads only
/// in shorter texts. More than four walks add register pressure, not speed.
const SPLIT_IN_TWO: usize = 32;
const SPLIT_IN_FOUR: usize = 64;

/// Entries in the transition table: a state and a byte class, both 16-bit, index it, so no
/// step needs a bounds check. The built-in keywords' heads take under three fifths of it.
const TABLE: usize = 1 << 16;

/// The keyword DFA, laid out for walking: a state is the index of its row in `next` (a
/// multiple of the row length, a power of two), so a step is one load from `classes` and one
/// from `next`, with no bounds check. Match states come first, so one comparison tells
/// whether a state needs a look.
struct Table {
    /// Each byte's class: bytes no keyword tells apart (a letter's two cases among them) share
    /// one.
    classes: [u8; 256],
    next: Box<[u16; TABLE]>,
    start: u16,
    /// States below this one match.
    matching_below: u16,
    row_shift: u32,
    rows: usize,
    /// The keywords (index and length) each match state ends, by row.
    ends: Vec<Vec<(usize, usize)>>,
    longest: usize,
}

impl Table {
    /// Lays out the DFA of `nfa`, the ASCII-case-insensitive automaton of `words`: its
    /// reachable states, each with a transition for every byte class.
    fn new(nfa: &NFA, words: &[&str]) -> Result<Table, SecurityError> {
        // A byte in no keyword leads every state back to the start, so all such bytes share
        // class 0; the others have a class each, a letter's two cases one between them.
        let mut classes = [0u8; 256];
        let mut representatives: Vec<Option<u8>> = vec![None];
        for word in words {
            for byte in word.bytes().map(|b| b.to_ascii_lowercase()) {
                if classes[usize::from(byte)] == 0 {
                    let class = u8::try_from(representatives.len()).map_err(|e| internal(&e))?;
                    representatives.push(Some(byte));
                    classes[usize::from(byte)] = class;
                    classes[usize::from(byte.to_ascii_uppercase())] = class;
                }
            }
        }
        representatives[0] = (0..=u8::MAX).find(|&b| classes[usize::from(b)] == 0);
        let start = nfa.start_state(Anchored::No).map_err(|e| internal(&e))?;
        // Every reachable state, numbered in the order found (by its id, a small integer).
        let mut states = Vec::new();
        let mut number: Vec<Option<usize>> = Vec::new();
        let mut numbered = |state: StateID, states: &mut Vec<StateID>| {
            let at = state.as_usize();
            if number.len() <= at {
                number.resize(at + 1, None);
            }
            *number[at].get_or_insert_with(|| {
                states.push(state);
                states.len() - 1
            })
        };
        numbered(start, &mut states);
        // Each state's target by class (none for a class without bytes).
        let mut targets: Vec<Vec<Option<usize>>> = Vec::new();
        while let Some(&state) = states.get(targets.len()) {
            let row = representatives
                .iter()
                .map(|byte| {
                    byte.map(|b| numbered(nfa.next_state(Anchored::No, state, b), &mut states))
                })
                .collect();
            targets.push(row);
        }
        // Rows: match states first, then the others, each in the order found.
        let is_match = |n: &usize| nfa.is_match(states[*n]);
        let order: Vec<usize> = (0..states.len())
            .filter(is_match)
            .chain((0..states.len()).filter(|n| !is_match(n)))
            .collect();
        let mut row_of = vec![0usize; states.len()];
        for (row, &n) in order.iter().enumerate() {
            row_of[n] = row;
        }
        let row_shift = representatives.len().next_power_of_two().trailing_zeros();
        if order.len() << row_shift > TABLE {
            return Err(internal(&format_args!(
                "{} states of {} byte classes exceed the table",
                order.len(),
                representatives.len()
            )));
        }
        let id = |n: usize| u16::try_from(row_of[n] << row_shift).map_err(|e| internal(&e));
        let mut next: Box<[u16; TABLE]> = vec![0u16; TABLE]
            .into_boxed_slice()
            .try_into()
            .map_err(|_| internal(&"table size"))?;
        for (n, row) in targets.iter().enumerate() {
            for (class, target) in row.iter().enumerate() {
                if let Some(target) = *target {
                    next[(row_of[n] << row_shift) + class] = id(target)?;
                }
            }
        }
        let ends = order
            .iter()
            .take_while(|n| is_match(n))
            .map(|&n| {
                let state = states[n];
                (0..nfa.match_len(state))
                    .map(|k| {
                        let keyword = nfa.match_pattern(state, k);
                        (keyword.as_usize(), nfa.pattern_len(keyword))
                    })
                    .collect()
            })
            .collect::<Vec<Vec<_>>>();
        Ok(Table {
            classes,
            next,
            start: id(0)?,
            matching_below: u16::try_from(ends.len() << row_shift).map_err(|e| internal(&e))?,
            row_shift,
            rows: order.len(),
            ends,
            longest: nfa.max_pattern_len(),
        })
    }

    #[inline(always)]
    fn step(&self, state: u16, byte: u8) -> u16 {
        self.next[usize::from(state | u16::from(self.classes[usize::from(byte)]))]
    }

    /// Steps one walk over each of `lanes` (all of one length), together, from byte `from`
    /// until a state matches; returns the index of the byte that led there (`states` then
    /// holds the states after it), or the lanes' length. Kept apart from what a match calls,
    /// so that the loop keeps its states in registers.
    #[inline(never)]
    fn advance<const N: usize>(
        &self,
        lanes: [&[u8]; N],
        states: &mut [u16; N],
        from: usize,
    ) -> usize {
        let below = self.matching_below;
        let len = lanes.iter().map(|lane| lane.len()).min().unwrap_or(0);
        // Cut to one length (none is shorter), so that no byte's read needs a bounds check.
        let lanes = lanes.map(|lane| &lane[..len]);
        let mut walks = *states;
        for i in from..len {
            let mut matched = false;
            for (state, lane) in walks.iter_mut().zip(lanes) {
                *state = self.step(*state, lane[i]);
                matched |= *state < below;
            }
            if matched {
                *states = walks;
                return i;
            }
        }
        *states = walks;
        len
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("states", &self.rows)
            .field("match_states", &self.ends.len())
            .field("row_shift", &self.row_shift)
            .finish_non_exhaustive()
    }
}

/// A failure building the search, which the built-in keywords never cause.
fn internal(e: &dyn std::fmt::Display) -> SecurityError {
    SecurityError::Internal(format!("keyword automaton: {e}"))
}

#[derive(Debug)]
pub(crate) struct Keywords {
    table: Table,
    /// The keywords, lowercase, by index: a head's occurrence is one of its keyword's only
    /// when the rest follows.
    words: Vec<Box<[u8]>>,
    #[cfg(feature = "vectorscan")]
    vectorscan: vectorscan::Literals,
}

impl Keywords {
    pub(crate) fn new(words: &[&str]) -> Result<Keywords, SecurityError> {
        let heads: Vec<&str> = words
            .iter()
            .map(|word| word.get(..HEAD).unwrap_or(word))
            .collect();
        // Standard semantics report overlapping occurrences ("secret" inside "aws_secret"),
        // as Vectorscan does, so both searches trigger the same rules.
        // The crate's NFA, cheaper to build than its DFA: the table holds the DFA it stands for.
        let nfa = NFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(&heads)
            .map_err(|e| internal(&e))?;
        Ok(Keywords {
            table: Table::new(&nfa, &heads)?,
            words: words
                .iter()
                .map(|word| word.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect(),
            #[cfg(feature = "vectorscan")]
            vectorscan: vectorscan::Literals::new(words)?,
        })
    }

    /// How much of the transition table the keywords take, as a share.
    #[cfg(test)]
    pub(crate) fn table_share(&self) -> f64 {
        (self.table.rows << self.table.row_shift) as f64 / TABLE as f64
    }

    /// Whether any keyword occurs in `bytes`, a short text.
    pub(crate) fn occur_in(&self, bytes: &[u8]) -> bool {
        let mut occurs = false;
        self.find(bytes, |_, _, _| occurs = true);
        occurs
    }

    /// Calls `found(keyword, start, end)` for every occurrence of every keyword, overlapping
    /// ones included, in no particular order. An occurrence may be reported twice (after a
    /// Vectorscan error).
    pub(crate) fn find(&self, bytes: &[u8], mut found: impl FnMut(usize, usize, usize)) {
        // Below a few hundred bytes a Vectorscan call's fixed cost outweighs its speed.
        #[cfg(feature = "vectorscan")]
        if bytes.len() >= vectorscan::MIN_BYTES && self.vectorscan.find(bytes, &mut found) {
            return;
        }
        if bytes.len() >= SPLIT_IN_FOUR {
            self.find_split::<4>(bytes, &mut found);
        } else if bytes.len() >= SPLIT_IN_TWO {
            self.find_split::<2>(bytes, &mut found);
        } else {
            self.walk(Text::whole(bytes), 0, self.table.start, &mut found);
        }
    }

    /// [`find`](Self::find) with `N` walks in step. Walk k owns the heads ending in
    /// `(k * part, (k + 1) * part]` (the last, to the text's end) and reads `part` bytes and a
    /// head's length more: the others from a head's length before their part, so as to see
    /// every head ending in it; the first from the text's start, past its part.
    fn find_split<const N: usize>(
        &self,
        bytes: &[u8],
        found: &mut impl FnMut(usize, usize, usize),
    ) {
        let part = bytes.len() / N;
        let overlap = self.table.longest.saturating_sub(1);
        if part < overlap {
            return self.walk(Text::whole(bytes), 0, self.table.start, found);
        }
        let from = |k: usize| if k == 0 { 0 } else { k * part - overlap };
        let owned = |k: usize| {
            let to = if k == N - 1 {
                bytes.len()
            } else {
                (k + 1) * part
            };
            (k * part, to)
        };
        let steps = part + overlap;
        let lanes: [&[u8]; N] =
            std::array::from_fn(|k| bytes.get(from(k)..from(k) + steps).unwrap_or_default());
        let states = self.walk_together(lanes, [self.table.start; N], |k, state, i| {
            let text = Text {
                bytes,
                owned: owned(k),
            };
            self.report(text, state, from(k) + i + 1, found);
        });
        // The last walk finishes alone what the parts' rounding left (fewer than N bytes).
        if let Some(&state) = states.last() {
            let text = Text {
                bytes,
                owned: owned(N - 1),
            };
            self.walk(text, N * part, state, found);
        }
    }

    /// Advances one walk over each lane, from `states`, in step as far as the shortest lane;
    /// calls `matched(lane, state, i)` for every lane when a state after byte `i` matches.
    /// Returns the states at the end.
    fn walk_together<const N: usize>(
        &self,
        lanes: [&[u8]; N],
        mut states: [u16; N],
        mut matched: impl FnMut(usize, u16, usize),
    ) -> [u16; N] {
        let steps = lanes.iter().map(|lane| lane.len()).min().unwrap_or(0);
        let mut i = 0;
        while i < steps {
            i = self.table.advance(lanes, &mut states, i);
            if i < steps {
                for (k, &state) in states.iter().enumerate() {
                    matched(k, state, i);
                }
                i += 1;
            }
        }
        states
    }

    /// Walks `text` from byte `from` to its end, from `state`, reporting the occurrences it
    /// owns.
    fn walk(
        &self,
        text: Text<'_>,
        from: usize,
        state: u16,
        found: &mut impl FnMut(usize, usize, usize),
    ) {
        let rest = text.bytes.get(from..).unwrap_or_default();
        self.walk_together([rest], [state], |_, state, i| {
            self.report(text, state, from + i + 1, found);
        });
    }

    /// Reports the keywords whose heads `state`, reached at `end`, ends, if `text` owns `end`
    /// and the rest of the keyword follows.
    fn report(
        &self,
        text: Text<'_>,
        state: u16,
        end: usize,
        found: &mut impl FnMut(usize, usize, usize),
    ) {
        if end <= text.owned.0 || end > text.owned.1 {
            return;
        }
        let row = usize::from(state) >> self.table.row_shift;
        for &(keyword, head) in self.table.ends.get(row).into_iter().flatten() {
            let start = end.saturating_sub(head);
            let Some(word) = self.words.get(keyword) else {
                continue;
            };
            let whole = start + word.len();
            if word.len() == head
                || text
                    .bytes
                    .get(start..whole)
                    .is_some_and(|t| t.eq_ignore_ascii_case(word))
            {
                found(keyword, start, whole);
            }
        }
    }
}

/// A text being searched, and the ends of occurrences (`owned.0 < end <= owned.1`) that a
/// walk over it reports.
#[derive(Debug, Clone, Copy)]
struct Text<'a> {
    bytes: &'a [u8],
    owned: (usize, usize),
}

impl Text<'_> {
    fn whole(bytes: &[u8]) -> Text<'_> {
        Text {
            bytes,
            owned: (0, bytes.len()),
        }
    }
}

#[cfg(feature = "vectorscan")]
mod vectorscan {
    use std::sync::Mutex;

    use hyperscan::prelude::{
        BlockDatabase, Builder as _, CompileFlags, Matching, Pattern, Patterns, Scratch,
    };

    use crate::error::SecurityError;

    /// The shortest text worth a Vectorscan call.
    pub(super) const MIN_BYTES: usize = 512;

    /// The most bytes handed to one Vectorscan scan, whose length argument is 32-bit.
    const CHUNK: usize = 1 << 30;

    pub(super) struct Literals {
        database: BlockDatabase,
        lens: Vec<usize>,
        longest: usize,
        /// Scratch space is per concurrent scan; a scan borrows one and gives it back.
        scratch: Mutex<Vec<Scratch>>,
    }

    impl std::fmt::Debug for Literals {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Literals")
                .field("keywords", &self.lens.len())
                .finish_non_exhaustive()
        }
    }

    impl Literals {
        pub(super) fn new(words: &[&str]) -> Result<Literals, SecurityError> {
            let internal =
                |e: hyperscan::Error| SecurityError::Internal(format!("vectorscan: {e}"));
            let patterns = words
                .iter()
                .enumerate()
                .map(|(id, word)| {
                    // Escaped byte by byte: the keywords are literals, not regexes.
                    let expression: String = word.bytes().map(|b| format!("\\x{b:02x}")).collect();
                    let mut pattern = Pattern::with_flags(expression, CompileFlags::CASELESS)?;
                    pattern.id = Some(id);
                    Ok(pattern)
                })
                .collect::<Result<Vec<_>, hyperscan::Error>>()
                .map_err(internal)?;
            let database: BlockDatabase = Patterns(patterns).build().map_err(internal)?;
            let lens: Vec<usize> = words.iter().map(|w| w.len()).collect();
            Ok(Literals {
                database,
                longest: lens.iter().copied().max().unwrap_or(1),
                lens,
                scratch: Mutex::new(Vec::new()),
            })
        }

        /// Reports every occurrence; false when Vectorscan failed and the caller must search
        /// another way.
        pub(super) fn find(
            &self,
            bytes: &[u8],
            found: &mut impl FnMut(usize, usize, usize),
        ) -> bool {
            let pooled = self.scratch.lock().ok().and_then(|mut pool| pool.pop());
            let Some(scratch) = pooled.or_else(|| self.database.alloc_scratch().ok()) else {
                return false;
            };
            let mut ok = true;
            let (mut from, mut reported_to) = (0, 0);
            while from < bytes.len() {
                let to = (from + CHUNK).min(bytes.len());
                let chunk = bytes.get(from..to).unwrap_or_default();
                let scanned = self.database.scan(chunk, &scratch, |id, _, end, _| {
                    let (keyword, end) = (id as usize, from + end as usize);
                    // Chunks overlap by a keyword's length; each occurrence is reported once.
                    if end > reported_to {
                        let len = self.lens.get(keyword).copied().unwrap_or(0);
                        found(keyword, end.saturating_sub(len), end);
                    }
                    Matching::Continue
                });
                if scanned.is_err() {
                    ok = false;
                    break;
                }
                if to == bytes.len() {
                    break;
                }
                reported_to = to;
                from = to - (self.longest - 1);
            }
            if let Ok(mut pool) = self.scratch.lock() {
                pool.push(scratch);
            }
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_reported_whatever_the_case() {
        let keywords = Keywords::new(&["secret", "aws_secret", "ghp_"]).unwrap();
        let mut hits = Vec::new();
        keywords.find(b"AWS_SECRET=1 ghp_x Secret", |k, s, e| hits.push((k, s, e)));
        hits.sort_unstable();
        assert_eq!(hits, [(0, 4, 10), (0, 19, 25), (1, 0, 10), (2, 13, 17)]);
    }

    #[test]
    fn an_occurrence_anywhere_is_seen() {
        let keywords = Keywords::new(&["secret", "ghp_"]).unwrap();
        for (text, occurs) in [
            ("my SECRET", true),
            ("ghp_", true),
            ("xghp_x", true),
            ("secre", false),
            ("gh p_", false),
            ("", false),
        ] {
            assert_eq!(keywords.occur_in(text.as_bytes()), occurs, "{text:?}");
        }
    }

    /// Every occurrence, by comparing each keyword at each position.
    fn reference(words: &[&str], text: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut hits = Vec::new();
        for (k, word) in words.iter().enumerate() {
            for start in 0..text.len() {
                let end = start + word.len();
                if text
                    .get(start..end)
                    .is_some_and(|t| t.eq_ignore_ascii_case(word.as_bytes()))
                {
                    hits.push((k, start, end));
                }
            }
        }
        hits.sort_unstable();
        hits
    }

    proptest::proptest! {
        /// Texts short and long (split in two parts or four), dense with keywords and their
        /// pieces, so that occurrences straddle the parts' edges, and keywords longer than
        /// their heads occur whole and cut short.
        #[test]
        fn split_walks_report_what_one_walk_does(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "secret", "SeC", "ret", "aws_", "x", " ", "ghp_", "token", "AWS_", "é", "\0",
                    "~", "begin rsa", " private", " key", "BEGIN RSA PRIVATE KEY",
                ]),
                0..400,
            )
        ) {
            let words = [
                "secret", "aws_secret", "ghp_", "token", "cre", "t", "begin rsa private key",
                "begin rsa",
            ];
            let keywords = Keywords::new(&words).unwrap();
            let text = pieces.concat();
            let mut hits = Vec::new();
            keywords.find(text.as_bytes(), |k, s, e| hits.push((k, s, e)));
            hits.sort_unstable();
            proptest::prop_assert_eq!(hits, reference(&words, text.as_bytes()));
        }
    }
}
