//! The keyword prefilter: every occurrence of every rule keyword, ignoring ASCII case.
//!
//! With the `vectorscan` feature the search runs on a Vectorscan literal database (SIMD, several
//! GiB/s over a hundred keywords). The Aho-Corasick automaton is always built: it serves when
//! the feature is off, and whenever Vectorscan reports an error, so a scan never fails.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use crate::error::SecurityError;

#[derive(Debug)]
pub(crate) struct Keywords {
    automaton: AhoCorasick,
    #[cfg(feature = "vectorscan")]
    vectorscan: vectorscan::Literals,
}

impl Keywords {
    pub(crate) fn new(words: &[&str]) -> Result<Keywords, SecurityError> {
        // Standard semantics report overlapping occurrences ("secret" inside "aws_secret"),
        // as Vectorscan does, so both searches trigger the same rules.
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(words)
            .map_err(|e| SecurityError::Internal(format!("keyword automaton: {e}")))?;
        Ok(Keywords {
            automaton,
            #[cfg(feature = "vectorscan")]
            vectorscan: vectorscan::Literals::new(words)?,
        })
    }

    /// Calls `found(keyword, start, end)` for every occurrence of every keyword, overlapping
    /// ones included. An occurrence may be reported twice (after a Vectorscan error).
    pub(crate) fn find(&self, bytes: &[u8], mut found: impl FnMut(usize, usize, usize)) {
        // Below a few hundred bytes a Vectorscan call's fixed cost outweighs its speed.
        #[cfg(feature = "vectorscan")]
        if bytes.len() >= vectorscan::MIN_BYTES && self.vectorscan.find(bytes, &mut found) {
            return;
        }
        for m in self.automaton.find_overlapping_iter(bytes) {
            found(m.pattern().as_usize(), m.start(), m.end());
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
}
