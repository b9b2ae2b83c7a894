//! The keyword prefilter: every occurrence of every rule keyword, ignoring ASCII case.
//!
//! The search walks an Aho-Corasick DFA. One walk is bound by the latency of its table loads
//! (each step needs the state the last one found), so a text of 128 bytes or more is cut into
//! four parts, each started a keyword's length early, and the four walks advance together:
//! their loads overlap, and the search runs about three times as fast as one walk.
//!
//! With the `vectorscan` feature the search runs on a Vectorscan literal database instead
//! (SIMD); the DFA serves whenever Vectorscan reports an error, so a scan never fails.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};

use crate::error::SecurityError;

/// How many walks advance together: on this kind of core more add register pressure, not speed.
const WALKS: usize = 4;

/// Below this many bytes one walk is used: each extra walk re-reads a keyword's length, which
/// outweighs the overlapped loads only in shorter texts. (At 1 KiB, a 430-byte event, whose
/// glued seams are about 1 KB, took 1.4 times as long to redact.)
const MIN_SPLIT: usize = 128;

#[derive(Debug)]
pub(crate) struct Keywords {
    dfa: DFA,
    start: StateID,
    #[cfg(feature = "vectorscan")]
    vectorscan: vectorscan::Literals,
}

impl Keywords {
    pub(crate) fn new(words: &[&str]) -> Result<Keywords, SecurityError> {
        let internal =
            |e: &dyn std::fmt::Display| SecurityError::Internal(format!("keyword automaton: {e}"));
        // Standard semantics report overlapping occurrences ("secret" inside "aws_secret"),
        // as Vectorscan does, so both searches trigger the same rules.
        let dfa = DFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(words)
            .map_err(|e| internal(&e))?;
        let start = dfa.start_state(Anchored::No).map_err(|e| internal(&e))?;
        Ok(Keywords {
            dfa,
            start,
            #[cfg(feature = "vectorscan")]
            vectorscan: vectorscan::Literals::new(words)?,
        })
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
        if bytes.len() < MIN_SPLIT {
            self.walk(bytes, 0, 0, self.start, &mut found);
            return;
        }
        let part = bytes.len() / WALKS;
        let overlap = self.dfa.max_pattern_len().saturating_sub(1);
        // Walk k owns the occurrences ending in (k * part, (k + 1) * part] and starts early
        // enough to see the longest keyword ending there.
        let from = |k: usize| (k * part).saturating_sub(overlap);
        let steps = part.min(bytes.len() - from(WALKS - 1));
        let lane = |k: usize| bytes.get(from(k)..from(k) + steps).unwrap_or_default();
        let lanes = [lane(0), lane(1), lane(2), lane(3)];
        let states = self.walk_together(lanes, |k, state, i| {
            self.report(state, from(k) + i + 1, k * part, &mut found);
        });
        // Each walk finishes its own part alone.
        for (k, &state) in states.iter().enumerate() {
            let end = if k == WALKS - 1 {
                bytes.len()
            } else {
                (k + 1) * part
            };
            let rest = bytes.get(from(k) + steps..end).unwrap_or_default();
            self.walk(rest, from(k) + steps, k * part, state, &mut found);
        }
    }

    /// Advances one walk over each lane (all of one length) in step; calls `special(lane,
    /// state, i)` when a state after byte `i` is special. Returns the states at the end.
    fn walk_together(
        &self,
        [l0, l1, l2, l3]: [&[u8]; WALKS],
        mut special: impl FnMut(usize, StateID, usize),
    ) -> [StateID; WALKS] {
        let dfa = &self.dfa;
        // Four locals rather than an array, so that the states stay in registers.
        let (mut s0, mut s1, mut s2, mut s3) = (self.start, self.start, self.start, self.start);
        for (i, (((&b0, &b1), &b2), &b3)) in l0.iter().zip(l1).zip(l2).zip(l3).enumerate() {
            s0 = dfa.next_state(Anchored::No, s0, b0);
            s1 = dfa.next_state(Anchored::No, s1, b1);
            s2 = dfa.next_state(Anchored::No, s2, b2);
            s3 = dfa.next_state(Anchored::No, s3, b3);
            if dfa.is_special(s0) | dfa.is_special(s1) | dfa.is_special(s2) | dfa.is_special(s3) {
                for (k, state) in [s0, s1, s2, s3].into_iter().enumerate() {
                    special(k, state, i);
                }
            }
        }
        [s0, s1, s2, s3]
    }

    /// Walks `bytes` (at `offset` in the text) from `state`, reporting occurrences that end
    /// after `owned_from`.
    fn walk(
        &self,
        bytes: &[u8],
        offset: usize,
        owned_from: usize,
        mut state: StateID,
        found: &mut impl FnMut(usize, usize, usize),
    ) {
        for (i, &b) in bytes.iter().enumerate() {
            state = self.dfa.next_state(Anchored::No, state, b);
            if self.dfa.is_special(state) {
                self.report(state, offset + i + 1, owned_from, found);
            }
        }
    }

    /// Reports the keywords that `state`, reached at `end`, matches, if the walk owns `end`.
    fn report(
        &self,
        state: StateID,
        end: usize,
        owned_from: usize,
        found: &mut impl FnMut(usize, usize, usize),
    ) {
        if end <= owned_from || !self.dfa.is_match(state) {
            return;
        }
        for n in 0..self.dfa.match_len(state) {
            let keyword = self.dfa.match_pattern(state, n);
            let len = self.dfa.pattern_len(keyword);
            found(keyword.as_usize(), end.saturating_sub(len), end);
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
        /// Texts long enough to be split, dense with keywords and their pieces, so that
        /// occurrences straddle the parts' edges.
        #[test]
        fn split_walks_report_what_one_walk_does(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec!["secret", "SeC", "ret", "aws_", "x", " ", "ghp_", "token"]),
                0..900,
            )
        ) {
            let words = ["secret", "aws_secret", "ghp_", "token", "cre", "t"];
            let keywords = Keywords::new(&words).unwrap();
            let text = pieces.concat();
            let mut hits = Vec::new();
            keywords.find(text.as_bytes(), |k, s, e| hits.push((k, s, e)));
            hits.sort_unstable();
            proptest::prop_assert_eq!(hits, reference(&words, text.as_bytes()));
        }
    }
}
