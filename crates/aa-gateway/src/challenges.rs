//! Registration challenges waiting for their answer, at most [`MAX_OPEN`] of them. Past that
//! the oldest is forgotten: a flood of registrations that never answer (anything that can
//! reach the runtime's socket can send one) pushes out its own challenges, not the few an
//! honest agent answers within milliseconds, and never blocks registration as refusing new
//! challenges while the table was full did.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// Open challenges kept at most.
pub(crate) const MAX_OPEN: usize = 10_000;

/// A challenge is kept under the agent id and the key it was opened for.
type Key = (String, String);

#[derive(Debug)]
struct Open {
    challenge: [u8; aa_identity::CHALLENGE_BYTES],
    expires: SystemTime,
    /// Its place in [`Challenges::by_age`].
    serial: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Challenges {
    open: HashMap<Key, Open>,
    /// Every open challenge by when it was opened; all live as long, so the first is also the
    /// first to expire.
    by_age: BTreeMap<u64, Key>,
    next_serial: u64,
}

impl Challenges {
    /// Opens `challenge` for `key`, replacing one already open for it, and forgets expired
    /// challenges, then the oldest past [`MAX_OPEN`].
    pub(crate) fn open(
        &mut self,
        key: Key,
        challenge: [u8; aa_identity::CHALLENGE_BYTES],
        now: SystemTime,
        expires: SystemTime,
    ) {
        while let Some(oldest) = self.by_age.first_entry() {
            let expired = self.open.get(oldest.get()).is_none_or(|o| o.expires <= now);
            let room = self.open.len() < MAX_OPEN || self.open.contains_key(&key);
            if !expired && room {
                break;
            }
            let key = oldest.remove();
            self.open.remove(&key);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.by_age.insert(serial, key.clone());
        let replaced = self.open.insert(
            key,
            Open {
                challenge,
                expires,
                serial,
            },
        );
        if let Some(replaced) = replaced {
            self.by_age.remove(&replaced.serial);
        }
    }

    /// The challenge open for `key`, taken: it answers once, right or wrong. None when there
    /// is none, or it expired.
    pub(crate) fn take(
        &mut self,
        key: &Key,
        now: SystemTime,
    ) -> Option<[u8; aa_identity::CHALLENGE_BYTES]> {
        let open = self.open.remove(key)?;
        self.by_age.remove(&open.serial);
        (open.expires > now).then_some(open.challenge)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.open.len(), self.by_age.len());
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn key(i: usize) -> Key {
        (format!("agent-{i}"), "did:key:z".to_owned())
    }

    #[test]
    fn a_flood_pushes_out_the_oldest_and_an_answer_in_time_still_finds_its_challenge() {
        let mut table = Challenges::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = now + Duration::from_secs(60);
        table.open(key(0), [7; aa_identity::CHALLENGE_BYTES], now, later);
        // An honest agent opens its challenge in the middle of a flood and answers before
        // MAX_OPEN more arrive.
        for i in 1..MAX_OPEN {
            table.open(key(i), [0; aa_identity::CHALLENGE_BYTES], now, later);
        }
        let honest = (String::from("honest"), String::from("did:key:h"));
        table.open(
            honest.clone(),
            [9; aa_identity::CHALLENGE_BYTES],
            now,
            later,
        );
        for i in MAX_OPEN..MAX_OPEN + 100 {
            table.open(key(i), [0; aa_identity::CHALLENGE_BYTES], now, later);
        }
        assert_eq!(table.len(), MAX_OPEN);
        assert_eq!(table.take(&key(0), now), None, "the oldest was forgotten");
        assert_eq!(
            table.take(&honest, now),
            Some([9; aa_identity::CHALLENGE_BYTES])
        );
        assert_eq!(table.take(&honest, now), None, "a challenge answers once");
    }

    #[test]
    fn expired_challenges_are_forgotten_and_never_answer() {
        let mut table = Challenges::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let soon = now + Duration::from_secs(1);
        table.open(key(1), [1; aa_identity::CHALLENGE_BYTES], now, soon);
        table.open(key(2), [2; aa_identity::CHALLENGE_BYTES], now, soon);
        assert_eq!(table.take(&key(1), soon), None);
        table.open(
            key(3),
            [3; aa_identity::CHALLENGE_BYTES],
            soon,
            soon + Duration::from_secs(1),
        );
        assert_eq!(
            table.len(),
            1,
            "the expired one went when the next was opened"
        );
    }

    #[test]
    fn opening_again_replaces_the_challenge_and_its_place() {
        let mut table = Challenges::default();
        let now = SystemTime::UNIX_EPOCH;
        let later = now + Duration::from_secs(60);
        table.open(key(1), [1; aa_identity::CHALLENGE_BYTES], now, later);
        table.open(key(1), [2; aa_identity::CHALLENGE_BYTES], now, later);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.take(&key(1), now),
            Some([2; aa_identity::CHALLENGE_BYTES])
        );
        assert_eq!(table.len(), 0);
    }
}
