//! Event ids that are unique without asking the operating system for randomness each time,
//! and that sort in the order they were made.
//!
//! An id is a random prefix, drawn once per generator by its owner, then a counter: 32 hex
//! digits, as many as 16 random bytes would give. Ids from one generator never repeat, and
//! two generators collide only if their 64-bit prefixes do. Because a generator's ids sort in
//! the order they were made, a store indexing them appends at the end of its index instead of
//! writing somewhere random in it for every event.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of ids: `prefix` then a counter.
#[derive(Debug)]
pub struct IdSequence {
    prefix: String,
    next: AtomicU64,
}

impl IdSequence {
    /// A generator whose ids start with `seed` (random bytes, drawn by the caller) as hex.
    pub fn new(seed: [u8; 8]) -> IdSequence {
        IdSequence {
            prefix: crate::hex::encode(&seed),
            next: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:016x}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_sorted_and_as_long_as_random_ones() {
        let ids = IdSequence::new([0xab, 1, 2, 3, 4, 5, 6, 7]);
        let made: Vec<String> = (0..1000).map(|_| ids.next_id()).collect();
        assert_eq!(made[0], "ab010203040506070000000000000000");
        assert_eq!(made[17], "ab010203040506070000000000000011");
        assert!(made.windows(2).all(|w| w[0] < w[1]));
        assert!(made.iter().all(|id| id.len() == 32));
    }

    #[test]
    fn generators_with_other_seeds_do_not_collide() {
        let a = IdSequence::new([1; 8]);
        let b = IdSequence::new([2; 8]);
        assert_ne!(a.next_id(), b.next_id());
    }
}
