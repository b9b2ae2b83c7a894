//! Registration challenges waiting for their answer, at most [`MAX_OPEN`] of them. Past that
//! the oldest is forgotten: a flood of registrations that never answer (anything that can
//! reach the runtime's socket can send one) pushes out its own challenges, not the few an
//! honest agent answers within milliseconds, and never blocks registering as refusing new
//! challenges while the table was full did.
//!
//! Each challenge is kept under its own bytes, so every registration step gets one of its own
//! and an agent may have several open: an agent's id and key are public (the registry shows
//! them, its tokens name them), and a challenge kept per agent and key could be replaced, or
//! spent by a wrong answer, by anyone who knows them, between the agent's request and its
//! answer. A challenge is taken only by the right answer, naming it.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use aa_identity::CHALLENGE_BYTES;

/// Open challenges kept at most.
pub(crate) const MAX_OPEN: usize = 10_000;

type Challenge = [u8; CHALLENGE_BYTES];

#[derive(Debug)]
struct Open {
    /// The agent id and key it was opened for.
    agent_id: String,
    did: String,
    expires: SystemTime,
    /// Its place in [`Challenges::by_age`].
    serial: u64,
}

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// It was right: the challenge is taken.
    Taken,
    /// The challenge is open for the agent and key, and the answer is wrong: it stays open.
    Wrong,
    /// No such challenge is open for the agent and key (never given, for another agent or
    /// key, taken already, or expired).
    NotOpen,
}

#[derive(Debug, Default)]
pub(crate) struct Challenges {
    open: HashMap<Challenge, Open>,
    /// Every open challenge by when it was opened; all live as long, so the first is also the
    /// first to expire.
    by_age: BTreeMap<u64, Challenge>,
    next_serial: u64,
}

impl Challenges {
    /// Opens `challenge` for `agent_id` and `did`, and forgets expired challenges, then the
    /// oldest past [`MAX_OPEN`].
    pub(crate) fn open(
        &mut self,
        agent_id: &str,
        did: &str,
        challenge: Challenge,
        now: SystemTime,
        expires: SystemTime,
    ) {
        while let Some(oldest) = self.by_age.first_entry() {
            let expired = self.open.get(oldest.get()).is_none_or(|o| o.expires <= now);
            if !expired && self.open.len() < MAX_OPEN {
                break;
            }
            let challenge = oldest.remove();
            self.open.remove(&challenge);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.by_age.insert(serial, challenge);
        let replaced = self.open.insert(
            challenge,
            Open {
                agent_id: agent_id.to_owned(),
                did: did.to_owned(),
                expires,
                serial,
            },
        );
        // Random bytes drawn twice; kept straight all the same.
        if let Some(replaced) = replaced {
            self.by_age.remove(&replaced.serial);
        }
    }

    /// Answers `challenge`, open for `agent_id` and `did`: `right` says whether the answer
    /// is right for the challenge. Only a right answer takes it; an expired one is forgotten.
    pub(crate) fn answer(
        &mut self,
        challenge: &[u8],
        agent_id: &str,
        did: &str,
        now: SystemTime,
        right: impl FnOnce(&Challenge) -> bool,
    ) -> Answered {
        let Ok(challenge) = Challenge::try_from(challenge) else {
            return Answered::NotOpen;
        };
        let Some(open) = self.open.get(&challenge) else {
            return Answered::NotOpen;
        };
        if open.agent_id != agent_id || open.did != did {
            return Answered::NotOpen;
        }
        let answered = if open.expires <= now {
            Answered::NotOpen
        } else if right(&challenge) {
            Answered::Taken
        } else {
            return Answered::Wrong;
        };
        if let Some(open) = self.open.remove(&challenge) {
            self.by_age.remove(&open.serial);
        }
        answered
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

    const DID: &str = "did:key:z";

    fn agent(i: usize) -> String {
        format!("agent-{i}")
    }

    /// A distinct challenge for each `i`.
    fn challenge(i: usize) -> Challenge {
        let mut bytes = [0; CHALLENGE_BYTES];
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        bytes
    }

    fn right(_: &Challenge) -> bool {
        true
    }

    fn wrong(_: &Challenge) -> bool {
        false
    }

    #[test]
    fn a_flood_pushes_out_the_oldest_and_an_answer_in_time_still_finds_its_challenge() {
        let mut table = Challenges::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = now + Duration::from_secs(60);
        table.open(&agent(0), DID, challenge(0), now, later);
        // An honest agent opens its challenge in the middle of a flood and answers before
        // MAX_OPEN more arrive.
        for i in 1..MAX_OPEN {
            table.open(&agent(i), DID, challenge(i), now, later);
        }
        let honest = [9; CHALLENGE_BYTES];
        table.open("honest", "did:key:h", honest, now, later);
        for i in MAX_OPEN..MAX_OPEN + 100 {
            table.open(&agent(i), DID, challenge(i), now, later);
        }
        assert_eq!(table.len(), MAX_OPEN);
        assert_eq!(
            table.answer(&challenge(0), &agent(0), DID, now, right),
            Answered::NotOpen,
            "the oldest was forgotten"
        );
        assert_eq!(
            table.answer(&honest, "honest", "did:key:h", now, right),
            Answered::Taken
        );
        assert_eq!(
            table.answer(&honest, "honest", "did:key:h", now, right),
            Answered::NotOpen,
            "a challenge answers once"
        );
    }

    #[test]
    fn expired_challenges_are_forgotten_and_never_answer() {
        let mut table = Challenges::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let soon = now + Duration::from_secs(1);
        table.open(&agent(1), DID, challenge(1), now, soon);
        table.open(&agent(2), DID, challenge(2), now, soon);
        assert_eq!(
            table.answer(&challenge(1), &agent(1), DID, soon, right),
            Answered::NotOpen
        );
        assert_eq!(table.len(), 1, "the expired one answered is forgotten");
        table.open(
            &agent(3),
            DID,
            challenge(3),
            soon,
            soon + Duration::from_secs(1),
        );
        assert_eq!(
            table.len(),
            1,
            "the expired one went when the next was opened"
        );
    }

    /// The agent's id and key are public: asking again for them, or answering wrongly, takes
    /// nothing from the agent's own challenge.
    #[test]
    fn each_request_gets_its_own_challenge_and_only_the_right_answer_takes_it() {
        let mut table = Challenges::default();
        let now = SystemTime::UNIX_EPOCH;
        let later = now + Duration::from_secs(60);
        table.open(&agent(1), DID, challenge(1), now, later);
        table.open(&agent(1), DID, challenge(2), now, later);
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.answer(&challenge(1), &agent(1), DID, now, wrong),
            Answered::Wrong
        );
        // Named for another agent or key, or not a challenge at all: not open for it.
        assert_eq!(
            table.answer(&challenge(1), &agent(2), DID, now, right),
            Answered::NotOpen
        );
        assert_eq!(
            table.answer(&challenge(1), &agent(1), "did:key:y", now, right),
            Answered::NotOpen
        );
        assert_eq!(
            table.answer(&[1, 2, 3], &agent(1), DID, now, right),
            Answered::NotOpen
        );
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.answer(&challenge(1), &agent(1), DID, now, right),
            Answered::Taken
        );
        assert_eq!(
            table.answer(&challenge(2), &agent(1), DID, now, right),
            Answered::Taken
        );
        assert_eq!(table.len(), 0);
    }
}
