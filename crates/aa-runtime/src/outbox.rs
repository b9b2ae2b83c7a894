//! The runtime's local database (SQLite, WAL): the outbox of redacted events waiting for the
//! gateway, the sessions of registered agents, and the last policy bundle. Events are numbered
//! here, gaplessly, in the order they are committed; that number is their place in this
//! runtime's audit stream. Every method blocks: call them off the async workers.
//!
//! The events just committed are also kept in memory, in order, for the forwarder: while it
//! keeps up it takes them from there instead of reading back and parsing what was just
//! written. Whatever memory does not hold (after a restart, or a backlog longer than it keeps)
//! is read from the database, so memory is only ever a shortcut, never the record.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use aa_core::AuditEvent;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::RuntimeError;

/// Committed events kept in memory for the forwarder, at most: the newest are kept.
const TAIL_MAX: usize = 4096;

/// Delivered events kept so that an SDK retrying a batch after delivery is still recognised
/// as a duplicate instead of taking a second place in the stream.
const KEEP_DELIVERED: u64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    sequence INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (agent_id TEXT PRIMARY KEY, session TEXT NOT NULL);
";

/// The local database.
#[derive(Debug)]
pub struct Outbox {
    conn: Mutex<Connection>,
    /// The last sequence committed, as the database holds it; read and written only under
    /// `conn`'s lock, so that a commit does not read it back from the database.
    last_sequence: AtomicU64,
    stream_id: String,
    /// The newest committed events, numbered without a gap, oldest first.
    tail: Mutex<VecDeque<AuditEvent>>,
}

/// An event's place in the stream; 0 (no place) for one the outbox did not take.
fn sequence_of(event: &AuditEvent) -> u64 {
    event.origin.as_ref().map_or(0, |o| o.sequence)
}

fn outbox_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Outbox(e.to_string())
}

fn random_id() -> Result<String, RuntimeError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(outbox_err)?;
    Ok(aa_core::hex::encode(&bytes))
}

impl Outbox {
    /// Opens (creating if needed) the database at `path`. A new database gets a new random
    /// stream id; an existing one keeps its own, so the stream continues across restarts.
    pub fn open(path: &Path) -> Result<Outbox, RuntimeError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an acknowledged event survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let stream_id = match get_meta(&conn, "stream_id")? {
            Some(id) => id,
            None => {
                let id = format!("rt-{}", random_id()?);
                set_meta(&conn, "stream_id", &id)?;
                id
            }
        };
        let last = last_sequence(&conn)?;
        Ok(Outbox {
            conn: Mutex::new(conn),
            last_sequence: AtomicU64::new(last),
            stream_id,
            tail: Mutex::new(VecDeque::new()),
        })
    }

    /// This runtime's audit stream.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, RuntimeError> {
        self.conn
            .lock()
            .map_err(|_| RuntimeError::Outbox("connection lock poisoned".into()))
    }

    /// Numbers and stores batches of events in one transaction. An event whose id is already
    /// in the outbox is a duplicate: it is skipped and takes no number (its sequence is left
    /// 0). Returns, per batch, how many were new.
    pub fn append(&self, batches: &mut [Vec<AuditEvent>]) -> Result<Vec<u64>, RuntimeError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let mut last = self.last_sequence.load(Ordering::Acquire);
        let mut accepted = Vec::with_capacity(batches.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (sequence, event_id, event) VALUES (?1, ?2, ?3)
                 ON CONFLICT(event_id) DO NOTHING",
            )?;
            for batch in batches.iter_mut() {
                let mut new = 0;
                for event in batch.iter_mut() {
                    if let Some(origin) = event.origin.as_mut() {
                        origin.sequence = last + 1;
                        origin.stream_id.clone_from(&self.stream_id);
                    }
                    let json = serde_json::to_string(event).map_err(outbox_err)?;
                    let changed =
                        insert.execute(params![to_i64(last + 1)?, event.event_id, json])?;
                    if changed == 1 {
                        last += 1;
                        new += 1;
                    } else if let Some(origin) = event.origin.as_mut() {
                        origin.sequence = 0;
                    }
                }
                accepted.push(new);
            }
        }
        set_meta(&tx, "last_sequence", &last.to_string())?;
        tx.commit()?;
        self.last_sequence.store(last, Ordering::Release);
        Ok(accepted)
    }

    /// Keeps events [`append`](Self::append) committed, in the order they were numbered, for
    /// the forwarder; duplicates (no number) are dropped. Events that do not follow the
    /// last kept one without a gap replace what was kept.
    pub fn hand_over(&self, batches: Vec<Vec<AuditEvent>>) {
        let Ok(mut tail) = self.tail.lock() else {
            return;
        };
        for event in batches.into_iter().flatten() {
            let sequence = sequence_of(&event);
            if sequence == 0 {
                continue;
            }
            if tail
                .back()
                .is_some_and(|last| sequence_of(last) + 1 != sequence)
            {
                tail.clear();
            }
            if tail.len() == TAIL_MAX {
                tail.pop_front();
            }
            tail.push_back(event);
        }
    }

    /// Takes up to `limit` events numbered right after `sequence` from those kept in memory,
    /// if they start there; drops the kept ones at or before it.
    fn take_kept(&self, sequence: u64, limit: usize) -> Option<Vec<AuditEvent>> {
        let mut tail = self.tail.lock().ok()?;
        while tail.front().is_some_and(|e| sequence_of(e) <= sequence) {
            tail.pop_front();
        }
        if tail.front().is_none_or(|e| sequence_of(e) != sequence + 1) {
            return None;
        }
        let n = limit.min(tail.len());
        Some(tail.drain(..n).collect())
    }

    /// Up to `limit` events not yet delivered, in stream order. Like
    /// [`pending_after`](Self::pending_after), it takes what it returns from memory, so the
    /// forwarder then reads those from the database.
    pub fn pending(&self, limit: usize) -> Result<Vec<AuditEvent>, RuntimeError> {
        let after = self.delivered()?;
        self.pending_after(after, limit)
    }

    /// Up to `limit` events numbered after `sequence`, in stream order: from memory when
    /// it holds the next one, else from the database.
    pub fn pending_after(
        &self,
        sequence: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, RuntimeError> {
        if let Some(kept) = self.take_kept(sequence, limit) {
            return Ok(kept);
        }
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT event FROM outbox WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![to_i64(sequence)?, to_i64(limit as u64)?], |row| {
                row.get::<_, String>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter()
            .map(|json| serde_json::from_str(json).map_err(outbox_err))
            .collect()
    }

    /// The last sequence the gateway is known to hold.
    pub fn delivered(&self) -> Result<u64, RuntimeError> {
        delivered(&*self.lock()?)
    }

    /// Records that the gateway holds every event up to `sequence`, and forgets the oldest
    /// delivered ones.
    pub fn mark_delivered(&self, sequence: u64) -> Result<(), RuntimeError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        set_meta(&tx, "delivered", &sequence.to_string())?;
        tx.execute(
            "DELETE FROM outbox WHERE sequence <= ?1",
            params![to_i64(sequence.saturating_sub(KEEP_DELIVERED))?],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Events waiting for the gateway.
    pub fn backlog(&self) -> Result<u64, RuntimeError> {
        let conn = self.lock()?;
        Ok(last_sequence(&conn)?.saturating_sub(delivered(&conn)?))
    }

    /// Stores a value under `key` (sessions, the last bundle).
    pub fn put(&self, key: &str, value: &str) -> Result<(), RuntimeError> {
        set_meta(&*self.lock()?, key, value)
    }

    /// Reads a value stored with [`Outbox::put`].
    pub fn get(&self, key: &str) -> Result<Option<String>, RuntimeError> {
        get_meta(&*self.lock()?, key)
    }

    /// Stores or replaces an agent's session.
    pub fn put_session(&self, agent_id: &str, session: &str) -> Result<(), RuntimeError> {
        self.lock()?.execute(
            "INSERT INTO sessions (agent_id, session) VALUES (?1, ?2)
             ON CONFLICT(agent_id) DO UPDATE SET session = excluded.session",
            params![agent_id, session],
        )?;
        Ok(())
    }

    /// Forgets an agent's session.
    pub fn remove_session(&self, agent_id: &str) -> Result<(), RuntimeError> {
        self.lock()?.execute(
            "DELETE FROM sessions WHERE agent_id = ?1",
            params![agent_id],
        )?;
        Ok(())
    }

    /// Every stored session.
    pub fn sessions(&self) -> Result<Vec<String>, RuntimeError> {
        let conn = self.lock()?;
        let mut statement = conn.prepare("SELECT session FROM sessions")?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

fn to_i64(n: u64) -> Result<i64, RuntimeError> {
    i64::try_from(n).map_err(|_| RuntimeError::Outbox(format!("{n} is out of range")))
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, RuntimeError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |row| row.get(0))
        .optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), RuntimeError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn number(conn: &Connection, key: &str) -> Result<u64, RuntimeError> {
    match get_meta(conn, key)? {
        Some(text) => text
            .parse()
            .map_err(|_| RuntimeError::Outbox(format!("unreadable {key} {text:?}"))),
        None => Ok(0),
    }
}

fn last_sequence(conn: &Connection) -> Result<u64, RuntimeError> {
    number(conn, "last_sequence")
}

fn delivered(conn: &Connection) -> Result<u64, RuntimeError> {
    number(conn, "delivered")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use aa_core::{Action, AgentContext, EventKind, Origin};

    use super::*;

    fn event(id: &str) -> AuditEvent {
        AuditEvent {
            event_id: id.into(),
            timestamp_ms: 0,
            agent: AgentContext::new("bot"),
            session_id: None,
            action: Action::LlmCall {
                model: "m".into(),
                token_estimate: None,
            },
            verdict: None,
            redactions: vec![],
            kind: EventKind::LlmUsage,
            detail: None,
            origin: Some(Origin {
                stream_id: String::new(),
                sequence: 0,
                received_at_ms: 0,
                peer_uid: 0,
                peer_pid: 0,
            }),
        }
    }

    #[test]
    fn numbers_gaplessly_skips_duplicates_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.db");
        let outbox = Outbox::open(&path).unwrap();
        let stream = outbox.stream_id().to_owned();
        let mut batches = vec![vec![event("a"), event("b")], vec![event("a"), event("c")]];
        assert_eq!(outbox.append(&mut batches).unwrap(), vec![2, 1]);
        let pending = outbox.pending(10).unwrap();
        let seqs: Vec<u64> = pending
            .iter()
            .map(|e| e.origin.as_ref().unwrap().sequence)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        outbox.mark_delivered(2).unwrap();
        drop(outbox);

        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.stream_id(), stream);
        assert_eq!(outbox.backlog().unwrap(), 1);
        let pending = outbox.pending(10).unwrap();
        assert_eq!(pending[0].event_id, "c");
        // "a" was delivered, yet a retry of it is still a duplicate.
        assert_eq!(
            outbox.append(&mut [vec![event("a"), event("d")]]).unwrap(),
            vec![1]
        );
        assert_eq!(
            outbox.pending(10).unwrap()[1]
                .origin
                .as_ref()
                .unwrap()
                .sequence,
            4
        );
    }

    fn sequences(events: &[AuditEvent]) -> Vec<u64> {
        events.iter().map(sequence_of).collect()
    }

    #[test]
    fn the_forwarder_takes_what_was_just_committed_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("runtime.db")).unwrap();
        let mut batches = vec![vec![event("a"), event("b"), event("a")], vec![event("c")]];
        assert_eq!(outbox.append(&mut batches).unwrap(), vec![2, 1]);
        // The duplicate took no place.
        assert_eq!(sequences(&batches[0]), [1, 2, 0]);
        // Marked, to tell the kept events from the stored ones.
        for event in batches.iter_mut().flatten() {
            event.session_id = Some("kept".into());
        }
        outbox.hand_over(batches);
        let first = outbox.pending_after(0, 2).unwrap();
        assert_eq!(sequences(&first), [1, 2]);
        assert!(
            first
                .iter()
                .all(|e| e.session_id.as_deref() == Some("kept"))
        );
        let rest = outbox.pending_after(2, 10).unwrap();
        assert_eq!(sequences(&rest), [3]);
        assert_eq!(rest[0].session_id.as_deref(), Some("kept"));
        // Taken once: what was sent and must be sent again comes from the database.
        let again = outbox.pending_after(0, 10).unwrap();
        assert_eq!(sequences(&again), [1, 2, 3]);
        assert!(again.iter().all(|e| e.session_id.is_none()));
    }

    #[test]
    fn memory_with_a_gap_before_it_is_read_around() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("runtime.db")).unwrap();
        // Committed but never handed over (as after a restart): 1 and 2.
        outbox.append(&mut [vec![event("a"), event("b")]]).unwrap();
        let mut later = vec![vec![event("c"), event("d")]];
        outbox.append(&mut later).unwrap();
        later[0][1].session_id = Some("kept".into());
        outbox.hand_over(later);
        // 1 and 2 from the database, then 3 and 4 from memory.
        assert_eq!(sequences(&outbox.pending_after(0, 2).unwrap()), [1, 2]);
        let kept = outbox.pending_after(2, 10).unwrap();
        assert_eq!(sequences(&kept), [3, 4]);
        assert_eq!(kept[1].session_id.as_deref(), Some("kept"));
        // Events that do not follow the kept ones replace them: 5 kept, 6 not handed over,
        // 7 handed over. Keeping 5 and 7 would skip 6.
        let mut fifth = vec![vec![event("e")]];
        outbox.append(&mut fifth).unwrap();
        outbox.hand_over(fifth);
        outbox.append(&mut [vec![event("f")]]).unwrap();
        let mut seventh = vec![vec![event("g")]];
        outbox.append(&mut seventh).unwrap();
        outbox.hand_over(seventh);
        assert_eq!(sequences(&outbox.pending_after(4, 10).unwrap()), [5, 6, 7]);
    }
}
