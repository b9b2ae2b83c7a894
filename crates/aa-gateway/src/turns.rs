//! Appends of one stream stored in the order they arrived, while their checks overlap.
//!
//! A runtime draining a backlog sends its next batch before the last one is answered, so the
//! gateway can check the one while it stores the other. Each batch takes a ticket for every
//! stream it holds as it arrives; before storing a stream's run it waits until every earlier
//! ticket of that stream is done (stored, refused or abandoned). Tickets are taken for all of
//! a batch's streams at once, so their order is one order for every stream and no two
//! batches wait on each other.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

/// The lines of every stream with an append under way.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    lines: Mutex<Lines>,
    done: Notify,
}

#[derive(Debug, Default)]
struct Lines {
    /// The open tickets of each stream, oldest first.
    open: HashMap<String, VecDeque<u64>>,
    /// The last ticket handed out.
    last: u64,
}

/// A batch's place in line for each of its streams; dropping it leaves every line.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    turns: &'a Turns,
    number: u64,
    streams: Vec<String>,
}

impl Turns {
    /// Takes a place at the end of the line of each of `streams` (repeats are taken once).
    pub(crate) fn take<'s>(&self, streams: impl IntoIterator<Item = &'s str>) -> Ticket<'_> {
        let mut lines = self.lock();
        lines.last += 1;
        let number = lines.last;
        let mut held: Vec<String> = Vec::new();
        for stream in streams {
            if held.iter().any(|s| s == stream) {
                continue;
            }
            lines
                .open
                .entry(stream.to_owned())
                .or_default()
                .push_back(number);
            held.push(stream.to_owned());
        }
        Ticket {
            turns: self,
            number,
            streams: held,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        // The lines are consistent after every statement; a panic elsewhere leaves them usable.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn first(&self, stream: &str) -> Option<u64> {
        self.lock()
            .open
            .get(stream)
            .and_then(|line| line.front().copied())
    }
}

impl Ticket<'_> {
    /// Waits until no batch that arrived earlier still holds `stream`.
    pub(crate) async fn wait(&self, stream: &str) {
        loop {
            let done = self.turns.done.notified();
            tokio::pin!(done);
            // Registered before the test, so a ticket dropped in between still wakes us.
            done.as_mut().enable();
            match self.turns.first(stream) {
                Some(first) if first != self.number => done.await,
                _ => return,
            }
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lines = self.turns.lock();
        for stream in &self.streams {
            if let Some(line) = lines.open.get_mut(stream) {
                line.retain(|n| *n != self.number);
                if line.is_empty() {
                    lines.open.remove(stream);
                }
            }
        }
        drop(lines);
        self.turns.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    async fn waits(ticket: &Ticket<'_>, stream: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(50), ticket.wait(stream))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_later_batch_waits_only_for_earlier_ones_of_its_streams() {
        let turns = Turns::default();
        let first = turns.take(["a", "b"]);
        let second = turns.take(["b", "b"]);
        let third = turns.take(["c"]);
        assert!(!waits(&first, "a").await);
        assert!(!waits(&first, "b").await);
        assert!(waits(&second, "b").await, "b is the first batch's turn");
        assert!(!waits(&third, "c").await);
        drop(first);
        assert!(!waits(&second, "b").await);
        drop((second, third));
        assert!(turns.lock().open.is_empty(), "a finished line is forgotten");
    }

    #[tokio::test]
    async fn a_batch_that_finishes_out_of_order_leaves_the_line() {
        let turns = Turns::default();
        let first = turns.take(["a"]);
        let second = turns.take(["a"]);
        let third = turns.take(["a"]);
        drop(second);
        assert!(waits(&third, "a").await);
        drop(first);
        assert!(!waits(&third, "a").await);
    }

    #[tokio::test]
    async fn a_waiting_batch_wakes_when_its_turn_comes() {
        let turns = Arc::new(Turns::default());
        let first = turns.take(["a"]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = {
            let turns = Arc::clone(&turns);
            tokio::spawn(async move {
                let second = turns.take(["a"]);
                let _ = tx.send(());
                second.wait("a").await;
            })
        };
        rx.await.expect("the second batch took its ticket");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken once the first batch is done")
            .expect("no panic");
    }
}
