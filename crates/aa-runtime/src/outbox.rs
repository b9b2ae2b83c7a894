//! The runtime's local database (SQLite, WAL): the outbox of redacted events waiting for the
//! gateway, the sessions of registered agents, and the last policy bundle. Events are numbered
//! here, gaplessly, in the order they are committed; that number is their place in this
//! runtime's audit stream. Every method blocks: call them off the async workers.
//!
//! An event is stored as its wire encoding (`pb::AuditEvent`), which the forwarder sends as it
//! is. The events just committed are also kept in memory, in order, for the forwarder: while
//! it keeps up it takes them from there instead of reading back what was just written.
//! Whatever memory does not hold (after a restart, or a backlog longer than it keeps) is read
//! from the database, so memory is only ever a shortcut, never the record.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use aa_core::AuditEvent;
use aa_proto::pb;
use prost::Message as _;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::RuntimeError;

/// Committed events kept in memory for the forwarder, at most, and their encoded bytes: the
/// newest are kept. While the gateway is away nothing takes them, so the bytes bound what an
/// agent's big events can hold there (a count alone let 4,096 events of megabytes stay).
const TAIL_MAX: usize = 4096;
const TAIL_MAX_BYTES: usize = 32 << 20;

/// Delivered events kept so that an SDK retrying a batch after delivery is still recognised
/// as a duplicate instead of taking a second place in the stream.
const KEEP_DELIVERED: u64 = 100_000;

/// Delivered rows past [`KEEP_DELIVERED`] are forgotten this many at a time: a delete per
/// small delivery rewrites the same pages each time, and a larger step holds the connection
/// (and so event commits) longer: about 3 ms for 1,000 rows here, 30 ms for 10,000.
const PRUNE_STEP: u64 = 1_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    sequence INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (agent_id TEXT PRIMARY KEY, session TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    sequence INTEGER PRIMARY KEY,
    event BLOB NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at_ms INTEGER NOT NULL
);
";

/// The most bytes of the reason a tombstone keeps.
const MAX_REASON_BYTES: usize = 1024;

/// The local database.
#[derive(Debug)]
pub struct Outbox {
    conn: Mutex<Connection>,
    /// The last sequence committed, as the database holds it; read and written only under
    /// `conn`'s lock, so that a commit does not read it back from the database.
    last_sequence: AtomicU64,
    stream_id: String,
    /// The newest committed events, numbered without a gap, oldest first.
    tail: Mutex<Tail>,
    /// Rows at or below this sequence are known to be gone; read and written under `conn`.
    pruned_through: AtomicU64,
    /// Set while the connection may commit without a sync (a delivery mark's setting not yet
    /// undone); an event commit restores `FULL` first. Read and written under `conn`.
    relaxed_sync: AtomicBool,
}

/// An event as the outbox holds it: its place in the stream and its wire encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its place in this runtime's stream.
    pub sequence: u64,
    /// The encoded `pb::AuditEvent`, origin included.
    pub wire: Vec<u8>,
}

/// The newest committed events, numbered without a gap, oldest first, and their bytes.
#[derive(Debug, Default)]
struct Tail {
    events: VecDeque<Stored>,
    bytes: usize,
}

impl Tail {
    /// Keeps `event`, the oldest making room; an event that does not follow the last kept
    /// one without a gap replaces what was kept.
    fn push(&mut self, event: Stored) {
        if self
            .events
            .back()
            .is_some_and(|last| last.sequence + 1 != event.sequence)
        {
            self.events.clear();
            self.bytes = 0;
        }
        while !self.events.is_empty()
            && (self.events.len() >= TAIL_MAX || self.bytes + event.wire.len() > TAIL_MAX_BYTES)
        {
            self.pop_front();
        }
        self.bytes += event.wire.len();
        self.events.push_back(event);
    }

    fn pop_front(&mut self) -> Option<Stored> {
        let event = self.events.pop_front()?;
        self.bytes -= event.wire.len();
        Some(event)
    }

    /// Up to `limit` events numbered right after `sequence`, taken out, if they start
    /// there; the kept ones at or before it are dropped.
    fn take_after(&mut self, sequence: u64, limit: usize) -> Option<Vec<Stored>> {
        while self.events.front().is_some_and(|e| e.sequence <= sequence) {
            self.pop_front();
        }
        if self
            .events
            .front()
            .is_none_or(|e| e.sequence != sequence + 1)
        {
            return None;
        }
        let n = limit.min(self.events.len());
        Some((0..n).filter_map(|_| self.pop_front()).collect())
    }

    /// Puts `wire` in place of the kept event `sequence`, if it is kept.
    fn replace(&mut self, sequence: u64, wire: Vec<u8>) {
        if let Some(kept) = self.events.iter_mut().find(|e| e.sequence == sequence) {
            self.bytes = self.bytes - kept.wire.len() + wire.len();
            kept.wire = wire;
        }
    }
}

impl Stored {
    /// A row as the database holds it: the encoded event, or the JSON that outboxes written
    /// before events were stored encoded hold, so an upgrade sends what an older runtime left.
    fn from_row(sequence: i64, event: ValueRef<'_>) -> Result<Stored, RuntimeError> {
        let sequence = u64::try_from(sequence).map_err(outbox_err)?;
        let wire = match event {
            ValueRef::Blob(bytes) => bytes.to_vec(),
            ValueRef::Text(json) => {
                let event: AuditEvent =
                    serde_json::from_slice(json).map_err(|e| RuntimeError::UnreadableEvent {
                        sequence,
                        reason: format!("stored as JSON that is not an event: {e}"),
                    })?;
                pb::AuditEvent::from(&event).encode_to_vec()
            }
            other => {
                return Err(RuntimeError::UnreadableEvent {
                    sequence,
                    reason: format!("stored as {:?}, not an encoded event", other.data_type()),
                });
            }
        };
        Ok(Stored { sequence, wire })
    }
}

/// An event set aside in the quarantine: what it was, when and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SetAside {
    /// Its place in the runtime's stream, which a tombstone now holds.
    pub sequence: u64,
    /// Why it can never be delivered: the gateway's refusal, or what the row held instead.
    pub reason: String,
    /// When it was set aside, milliseconds since the Unix epoch.
    pub quarantined_at_ms: i64,
    /// The event, or why it does not read as one.
    pub event: Result<AuditEvent, String>,
}

/// Every event set aside in the runtime database at `path`, in stream order. The database is
/// opened read-only: a runtime may be using it, and reading it changes nothing.
pub fn read_quarantine(path: &Path) -> Result<Vec<SetAside>, RuntimeError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let has_quarantine = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_quarantine {
        return Ok(Vec::new());
    }
    let mut statement = conn.prepare(
        "SELECT sequence, reason, quarantined_at_ms, event FROM quarantine ORDER BY sequence",
    )?;
    let mut rows = statement.query([])?;
    let mut set_aside = Vec::new();
    while let Some(row) = rows.next()? {
        let sequence: i64 = row.get(0)?;
        // Read the way the forwarder reads an outbox row.
        let event = Stored::from_row(sequence, row.get_ref(3)?)
            .map_err(|e| e.to_string())
            .and_then(|stored| {
                let wire = pb::AuditEvent::decode(&*stored.wire).map_err(|e| e.to_string())?;
                AuditEvent::try_from(wire).map_err(|e| e.to_string())
            });
        set_aside.push(SetAside {
            sequence: u64::try_from(sequence).map_err(outbox_err)?,
            reason: row.get(1)?,
            quarantined_at_ms: row.get(2)?,
            event,
        });
    }
    Ok(set_aside)
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
        // Checkpoints every 10,000 pages of log (about 40 MB) rather than 1,000: a page written
        // by every commit (a table's right edge) is copied back once a checkpoint (BENCHMARKS.md).
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
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
            tail: Mutex::new(Tail::default()),
            pruned_through: AtomicU64::new(0),
            relaxed_sync: AtomicBool::new(false),
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

    /// Numbers and stores batches of events in one transaction, and keeps them for the
    /// forwarder. An event whose id, or alias in `aliases` (by batch, then by event: another
    /// id it may have been stored under), the outbox holds already is a duplicate: it is
    /// skipped and takes no number (its sequence is left 0). Returns, per batch, how many were
    /// new.
    pub fn append(
        &self,
        batches: &mut [Vec<AuditEvent>],
        aliases: &[Vec<Option<String>>],
    ) -> Result<Vec<u64>, RuntimeError> {
        let mut conn = self.lock()?;
        self.sync_fully(&conn)?;
        let tx = conn.transaction()?;
        let mut last = self.last_sequence.load(Ordering::Acquire);
        let mut accepted = Vec::with_capacity(batches.len());
        let mut stored = Vec::with_capacity(batches.iter().map(Vec::len).sum());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (sequence, event_id, event) VALUES (?1, ?2, ?3)
                 ON CONFLICT(event_id) DO NOTHING",
            )?;
            let mut holds =
                tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM outbox WHERE event_id = ?1)")?;
            for (b, batch) in batches.iter_mut().enumerate() {
                let mut new = 0;
                for (e, event) in batch.iter_mut().enumerate() {
                    if let Some(origin) = event.origin.as_mut() {
                        origin.sequence = last + 1;
                        origin.stream_id.clone_from(&self.stream_id);
                    }
                    let alias = aliases
                        .get(b)
                        .and_then(|a| a.get(e))
                        .and_then(Option::as_ref);
                    let held = match alias {
                        Some(alias) => holds.query_row(params![alias], |row| row.get(0))?,
                        None => false,
                    };
                    let wire = pb::AuditEvent::from(&*event).encode_to_vec();
                    let changed = if held {
                        0
                    } else {
                        insert.execute(params![to_i64(last + 1)?, event.event_id, wire])?
                    };
                    if changed == 1 {
                        last += 1;
                        new += 1;
                        stored.push(Stored {
                            sequence: last,
                            wire,
                        });
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
        drop(conn);
        self.keep(stored);
        Ok(accepted)
    }

    /// Keeps events just committed, in the order they were numbered, for the forwarder.
    /// Events that do not follow the last kept one without a gap replace what was kept.
    fn keep(&self, committed: Vec<Stored>) {
        let Ok(mut tail) = self.tail.lock() else {
            return;
        };
        for event in committed {
            tail.push(event);
        }
    }

    /// Takes up to `limit` events numbered right after `sequence` from those kept in memory,
    /// if they start there; drops the kept ones at or before it.
    fn take_kept(&self, sequence: u64, limit: usize) -> Option<Vec<Stored>> {
        self.tail.lock().ok()?.take_after(sequence, limit)
    }

    /// Up to `limit` events not yet delivered, in stream order. Like
    /// [`pending_after`](Self::pending_after), it takes what it returns from memory, so the
    /// forwarder then reads those from the database.
    pub fn pending(&self, limit: usize) -> Result<Vec<Stored>, RuntimeError> {
        let after = self.delivered()?;
        self.pending_after(after, limit)
    }

    /// Up to `limit` events numbered after `sequence`, in stream order: from memory when
    /// it holds the next one, else from the database, where the read stops at the first event
    /// past an append's bytes ([`aa_proto::MAX_APPEND_BYTES`]): a backlog of big events read
    /// `limit` at a time would hold gigabytes.
    pub fn pending_after(&self, sequence: u64, limit: usize) -> Result<Vec<Stored>, RuntimeError> {
        if let Some(kept) = self.take_kept(sequence, limit) {
            return Ok(kept);
        }
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT sequence, event FROM outbox WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
        )?;
        let mut rows = statement.query(params![to_i64(sequence)?, to_i64(limit as u64)?])?;
        let (mut events, mut bytes) = (Vec::new(), 0usize);
        while let Some(row) = rows.next()? {
            let event = Stored::from_row(row.get(0)?, row.get_ref(1)?)?;
            bytes = bytes.saturating_add(event.wire.len());
            events.push(event);
            if bytes > aa_proto::MAX_APPEND_BYTES {
                break;
            }
        }
        Ok(events)
    }

    /// The last sequence the gateway is known to hold.
    pub fn delivered(&self) -> Result<u64, RuntimeError> {
        delivered(&*self.lock()?)
    }

    /// Records that the gateway holds every event up to `sequence`, and forgets the oldest
    /// delivered ones, [`PRUNE_STEP`] at a time.
    ///
    /// The mark is committed without a sync of its own: the next event's commit syncs the log
    /// it sits in. A mark lost to a power cut only sends a batch again, which the gateway
    /// recognises as duplicates.
    pub fn mark_delivered(&self, sequence: u64) -> Result<(), RuntimeError> {
        let mut conn = self.lock()?;
        self.relaxed_sync.store(true, Ordering::Release);
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let marked = self.record_delivery(&mut conn, sequence);
        // Every other commit must sync again, whatever became of this one; should this fail,
        // the next event commit tries again before it writes.
        let restored = self.sync_fully(&conn);
        marked.and(restored)
    }

    /// Puts the connection back to syncing every commit, if a delivery mark left it otherwise.
    fn sync_fully(&self, conn: &Connection) -> Result<(), RuntimeError> {
        if self.relaxed_sync.load(Ordering::Acquire) {
            conn.pragma_update(None, "synchronous", "FULL")?;
            self.relaxed_sync.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn record_delivery(&self, conn: &mut Connection, sequence: u64) -> Result<(), RuntimeError> {
        let tx = conn.transaction()?;
        set_meta(&tx, "delivered", &sequence.to_string())?;
        let forget_through = sequence.saturating_sub(KEEP_DELIVERED);
        let pruned_through = self.pruned_through.load(Ordering::Acquire);
        let prune = forget_through >= pruned_through + PRUNE_STEP;
        if prune {
            tx.execute(
                "DELETE FROM outbox WHERE sequence <= ?1",
                params![to_i64(forget_through)?],
            )?;
        }
        tx.commit()?;
        if prune {
            self.pruned_through.store(forget_through, Ordering::Release);
        }
        Ok(())
    }

    /// Sets aside the event at `sequence`, which can never be delivered (`reason`: the
    /// gateway refused it for good, or this outbox cannot read it back): it moves to the
    /// `quarantine` table, where an operator can read it (`aasm audit quarantine`), and a
    /// tombstone takes its place in the stream, a record that it was set aside, why, and the
    /// SHA-256 of what the row held. The events after it can then be delivered; the hash
    /// chain has no gap. The row keeps the event's id, so an SDK sending the event again is
    /// still told it is a duplicate. Returns false when there is no such event or it is
    /// already a tombstone (a tombstone refused in turn is not set aside again).
    pub fn quarantine(&self, sequence: u64, reason: &str) -> Result<bool, RuntimeError> {
        let mut conn = self.lock()?;
        self.sync_fully(&conn)?;
        let tx = conn.transaction()?;
        let at = to_i64(sequence)?;
        let already = tx
            .query_row(
                "SELECT 1 FROM quarantine WHERE sequence = ?1",
                params![at],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        // Whatever the row holds, kept as it is (an event it cannot read is set aside too), and
        // its bytes for the tombstone's digest.
        let original = tx
            .query_row(
                "SELECT event FROM outbox WHERE sequence = ?1",
                params![at],
                |row| row.get::<_, rusqlite::types::Value>(0),
            )
            .optional()?;
        let Some(original) = original.filter(|_| !already) else {
            return Ok(false);
        };
        let bytes = match &original {
            rusqlite::types::Value::Blob(bytes) => bytes.clone(),
            rusqlite::types::Value::Text(text) => text.clone().into_bytes(),
            rusqlite::types::Value::Integer(n) => n.to_string().into_bytes(),
            rusqlite::types::Value::Real(x) => x.to_string().into_bytes(),
            rusqlite::types::Value::Null => Vec::new(),
        };
        let tombstone = tombstone(&self.stream_id, sequence, &bytes, reason);
        tx.execute(
            "INSERT INTO quarantine (sequence, event, reason, quarantined_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![at, original, reason, crate::runtime::now_ms()],
        )?;
        tx.execute(
            "UPDATE outbox SET event = ?2 WHERE sequence = ?1",
            params![at, tombstone],
        )?;
        tx.commit()?;
        drop(conn);
        // The forwarder may yet take the event from memory.
        if let Ok(mut tail) = self.tail.lock() {
            tail.replace(sequence, tombstone);
        }
        Ok(true)
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

    /// Forgets an agent's session if it is still `session` (as stored): one stored since,
    /// with a new token, stays.
    pub fn remove_session_if(&self, agent_id: &str, session: &str) -> Result<(), RuntimeError> {
        self.lock()?.execute(
            "DELETE FROM sessions WHERE agent_id = ?1 AND session = ?2",
            params![agent_id, session],
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

/// The encoded event that takes the place of the event at `sequence` (`original`, as stored)
/// once it is set aside: a refusal recorded by the runtime, built only of what
/// any gateway takes (none of the original's fields, which may be what was refused), with the
/// peer that reported it when the original decodes.
fn tombstone(stream_id: &str, sequence: u64, original: &[u8], reason: &str) -> Vec<u8> {
    use aa_core::{Action, AgentContext, Decision, EventKind, Mode, Origin, Verdict};
    use sha2::{Digest as _, Sha256};
    let (peer_uid, peer_pid) = pb::AuditEvent::decode(original)
        .ok()
        .and_then(|event| event.origin)
        .map_or((0, 0), |origin| (origin.peer_uid, origin.peer_pid));
    let mut cut = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let now = crate::runtime::now_ms();
    let event = AuditEvent {
        event_id: format!("{stream_id}/~quarantined-{sequence}"),
        timestamp_ms: now,
        agent: AgentContext::new(format!("uid:{peer_uid}")),
        session_id: None,
        // The runtime's append of the event, as the action the gateway refused.
        action: Action::ToolCall {
            tool: "audit.append".into(),
            args: serde_json::json!({ "sequence": sequence }),
        },
        verdict: Some(Verdict {
            decision: Decision::Deny,
            rule: "quarantine".into(),
            reason: reason.get(..cut).unwrap_or_default().to_owned(),
            policy: String::new(),
            mode: Mode::Enforce,
        }),
        redactions: Vec::new(),
        kind: EventKind::Refusal,
        detail: Some(serde_json::json!({
            "quarantined": {
                "event_sha256": aa_core::hex::encode(&Sha256::digest(original)),
                "event_bytes": original.len(),
            }
        })),
        origin: Some(Origin {
            stream_id: stream_id.to_owned(),
            sequence,
            received_at_ms: now,
            peer_uid,
            peer_pid,
        }),
    };
    pb::AuditEvent::from(&event).encode_to_vec()
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

    /// The events kept for the forwarder are bounded by their bytes as well as their number:
    /// the newest are kept, in order, and what they hold is counted as they come and go.
    #[test]
    fn the_kept_tail_is_bounded_by_its_bytes() {
        let mut tail = Tail::default();
        let event = |sequence: u64, bytes: usize| Stored {
            sequence,
            wire: vec![0; bytes],
        };
        let big = TAIL_MAX_BYTES / 4;
        for sequence in 1..=10 {
            tail.push(event(sequence, big));
        }
        assert_eq!(tail.events.len(), 4);
        assert_eq!(tail.bytes, 4 * big);
        assert_eq!(tail.events.front().map(|e| e.sequence), Some(7));
        // Taken from where the forwarder is, which drops what came before.
        let taken = tail.take_after(7, 2).unwrap();
        assert_eq!(taken.iter().map(|e| e.sequence).collect::<Vec<_>>(), [8, 9]);
        assert_eq!(tail.bytes, big);
        tail.replace(10, vec![0; 7]);
        assert_eq!(tail.bytes, 7);
        assert!(
            tail.take_after(3, 10).is_none(),
            "a gap before what is kept"
        );
        // Small events are bounded by their number.
        for sequence in 11..=(10 + TAIL_MAX as u64 + 5) {
            tail.push(event(sequence, 1));
        }
        assert_eq!(tail.events.len(), TAIL_MAX);
        assert_eq!(tail.bytes, TAIL_MAX);
        // An event out of sequence replaces what was kept.
        tail.push(event(1, 3));
        assert_eq!((tail.events.len(), tail.bytes), (1, 3));
    }

    #[test]
    fn the_outbox_syncs_every_commit_and_checkpoints_in_large_steps() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.db")).unwrap();
        let conn = outbox.lock().unwrap();
        let read = |name: &str| {
            conn.pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        // synchronous 2 is FULL.
        assert_eq!(
            [
                read("journal_mode"),
                read("synchronous"),
                read("wal_autocheckpoint")
            ],
            [r#"Text("wal")"#, "Integer(2)", "Integer(10000)"]
        );
    }

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

    /// What the forwarder sends, read back as events.
    fn events(stored: &[Stored]) -> Vec<AuditEvent> {
        stored
            .iter()
            .map(|s| {
                let wire = pb::AuditEvent::decode(&*s.wire).unwrap();
                AuditEvent::try_from(wire).unwrap()
            })
            .collect()
    }

    fn sequences(stored: &[Stored]) -> Vec<u64> {
        stored.iter().map(|s| s.sequence).collect()
    }

    /// Forgets the database's copy of events from `from` on, so that only memory holds them.
    fn forget_stored(outbox: &Outbox, from: u64) {
        let conn = outbox.lock().unwrap();
        conn.execute(
            "DELETE FROM outbox WHERE sequence >= ?1",
            params![to_i64(from).unwrap()],
        )
        .unwrap();
    }

    /// The forwarder cuts what it reads to an append's bytes, and reads the rest again: read
    /// from the database, a backlog of big events stops there too, not at the batch's count.
    #[test]
    fn a_backlog_is_read_an_appends_bytes_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let big = |i: usize| AuditEvent {
            detail: Some(serde_json::Value::String("x".repeat(2 << 20))),
            ..event(&i.to_string())
        };
        let mut batches = vec![(0..20).map(big).collect()];
        Outbox::open(&path)
            .unwrap()
            .append(&mut batches, &[])
            .unwrap();
        // Opened again, it holds nothing in memory: the backlog is read from the database.
        let read = Outbox::open(&path).unwrap().pending(1000).unwrap();
        // Seven events of a little over 2 MiB fit in 16 MiB; the eighth passes it, for the
        // forwarder to cut off.
        assert_eq!(sequences(&read), (1..=8).collect::<Vec<_>>());
    }

    #[test]
    fn an_event_refused_for_good_is_set_aside_and_a_tombstone_takes_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.db")).unwrap();
        let mut batches = vec![vec![event("a"), event("b"), event("c")]];
        batches[0][1].origin.as_mut().unwrap().peer_uid = 1234;
        outbox.append(&mut batches, &[]).unwrap();
        let original = outbox.pending_after(1, 1).unwrap().remove(0).wire;

        // "b" was taken from memory above: the database is read for it again.
        assert!(outbox.quarantine(2, "event \"b\": unknown kind").unwrap());
        let sent = outbox.pending_after(0, 10).unwrap();
        assert_eq!(sequences(&sent), [1, 2, 3]);
        let sent = events(&sent);
        let tombstone = &sent[1];
        assert_eq!(tombstone.kind, EventKind::Refusal);
        assert_eq!(
            tombstone.event_id,
            format!("{}/~quarantined-2", outbox.stream_id())
        );
        assert_eq!(tombstone.agent.id, "uid:1234");
        let verdict = tombstone.verdict.as_ref().unwrap();
        assert_eq!(
            (verdict.rule.as_str(), verdict.reason.as_str()),
            ("quarantine", "event \"b\": unknown kind")
        );
        let origin = tombstone.origin.as_ref().unwrap();
        assert_eq!(
            (origin.stream_id.as_str(), origin.sequence),
            (outbox.stream_id(), 2)
        );
        {
            use sha2::{Digest as _, Sha256};
            let digest = aa_core::hex::encode(&Sha256::digest(&original));
            assert_eq!(
                tombstone.detail.as_ref().unwrap()["quarantined"],
                serde_json::json!({ "event_sha256": digest, "event_bytes": original.len() })
            );
        }
        assert_eq!(sent[2].event_id, "c");

        // The original is kept, and its id still makes a resend a duplicate.
        let (kept, reason): (Vec<u8>, String) = outbox
            .lock()
            .unwrap()
            .query_row(
                "SELECT event, reason FROM quarantine WHERE sequence = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (kept, reason.as_str()),
            (original, "event \"b\": unknown kind")
        );
        assert_eq!(outbox.append(&mut [vec![event("b")]], &[]).unwrap(), [0]);
        let listed = read_quarantine(&dir.path().join("outbox.db")).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].event.as_ref().unwrap().event_id, "b");

        // A tombstone refused in turn, or an event the outbox does not hold, is not set aside.
        assert!(!outbox.quarantine(2, "again").unwrap());
        assert!(!outbox.quarantine(9, "none").unwrap());

        // An event the forwarder takes from memory is replaced there too.
        outbox.append(&mut [vec![event("d")]], &[]).unwrap();
        assert!(outbox.quarantine(4, "too deep").unwrap());
        forget_stored(&outbox, 4);
        let kept = events(&outbox.pending_after(3, 10).unwrap());
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].kind, EventKind::Refusal);
    }

    #[test]
    fn delivered_rows_are_forgotten_in_steps_and_marks_leave_commits_synced() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.db")).unwrap();
        let rows = KEEP_DELIVERED + 2 * PRUNE_STEP;
        outbox
            .lock()
            .unwrap()
            .execute(
                "WITH RECURSIVE n(s) AS (SELECT 1 UNION ALL SELECT s + 1 FROM n WHERE s < ?1)
                 INSERT INTO outbox (sequence, event_id, event) SELECT s, 'e' || s, x'00' FROM n",
                params![to_i64(rows).unwrap()],
            )
            .unwrap();
        let oldest = || -> i64 {
            let conn = outbox.lock().unwrap();
            conn.query_row("SELECT min(sequence) FROM outbox", [], |r| r.get(0))
                .unwrap()
        };
        outbox
            .mark_delivered(KEEP_DELIVERED + PRUNE_STEP - 1)
            .unwrap();
        assert_eq!(oldest(), 1, "fewer than a step past the kept ones");
        outbox.mark_delivered(KEEP_DELIVERED + PRUNE_STEP).unwrap();
        assert_eq!(oldest(), to_i64(PRUNE_STEP + 1).unwrap());
        outbox.mark_delivered(rows - 1).unwrap();
        assert_eq!(oldest(), to_i64(PRUNE_STEP + 1).unwrap());
        outbox.mark_delivered(rows).unwrap();
        assert_eq!(oldest(), to_i64(2 * PRUNE_STEP + 1).unwrap());
        assert_eq!(outbox.delivered().unwrap(), rows);
        let synchronous = || -> i64 {
            let conn = outbox.lock().unwrap();
            conn.pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(), 2, "FULL");
        // A mark that fails (a sequence past what the database can number) leaves it FULL.
        assert!(outbox.mark_delivered(u64::MAX).is_err());
        assert_eq!(synchronous(), 2, "FULL");
        // A connection a mark could not set back is set back before an event is committed.
        outbox
            .lock()
            .unwrap()
            .pragma_update(None, "synchronous", "NORMAL")
            .unwrap();
        outbox.relaxed_sync.store(true, Ordering::Release);
        outbox.append(&mut [vec![event("after")]], &[]).unwrap();
        assert_eq!(synchronous(), 2, "FULL");
    }

    #[test]
    fn numbers_gaplessly_skips_duplicates_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.db");
        let outbox = Outbox::open(&path).unwrap();
        let stream = outbox.stream_id().to_owned();
        let mut batches = vec![vec![event("a"), event("b")], vec![event("a"), event("c")]];
        assert_eq!(outbox.append(&mut batches, &[]).unwrap(), vec![2, 1]);
        let pending = outbox.pending(10).unwrap();
        assert_eq!(sequences(&pending), vec![1, 2, 3]);
        // The stored event carries its place in the stream.
        let read = events(&pending);
        assert_eq!(read[2].event_id, "c");
        let origin = read[2].origin.as_ref().unwrap();
        assert_eq!(
            (origin.sequence, origin.stream_id.as_str()),
            (3, stream.as_str())
        );
        outbox.mark_delivered(2).unwrap();
        drop(outbox);

        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.stream_id(), stream);
        assert_eq!(outbox.backlog().unwrap(), 1);
        let pending = outbox.pending(10).unwrap();
        assert_eq!(events(&pending)[0].event_id, "c");
        // "a" was delivered, yet a retry of it is still a duplicate.
        assert_eq!(
            outbox
                .append(&mut [vec![event("a"), event("d")]], &[])
                .unwrap(),
            vec![1]
        );
        assert_eq!(sequences(&outbox.pending(10).unwrap()), [3, 4]);
    }

    #[test]
    fn the_forwarder_takes_what_was_just_committed_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("runtime.db")).unwrap();
        let mut batches = vec![vec![event("a"), event("b"), event("a")], vec![event("c")]];
        assert_eq!(outbox.append(&mut batches, &[]).unwrap(), vec![2, 1]);
        // The duplicate took no place.
        let numbered = |e: &AuditEvent| e.origin.as_ref().unwrap().sequence;
        assert_eq!(
            batches[0].iter().map(numbered).collect::<Vec<_>>(),
            [1, 2, 0]
        );
        // Only memory holds them now.
        forget_stored(&outbox, 1);
        let stored = outbox.pending_after(0, 10).unwrap();
        assert_eq!(sequences(&stored), [1, 2, 3]);
        assert_eq!(events(&stored)[2].event_id, "c");
        outbox.keep(stored.clone());
        let first = outbox.pending_after(0, 2).unwrap();
        assert_eq!(sequences(&first), [1, 2]);
        let rest = outbox.pending_after(2, 10).unwrap();
        assert_eq!(rest, stored[2..]);
        // Taken once: what was sent and must be sent again comes from the database, which
        // no longer holds it here.
        assert!(outbox.pending_after(0, 10).unwrap().is_empty());
    }

    #[test]
    fn memory_with_a_gap_before_it_is_read_around() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.db");
        // Committed before a restart, so not in memory: 1 and 2.
        Outbox::open(&path)
            .unwrap()
            .append(&mut [vec![event("a"), event("b")]], &[])
            .unwrap();
        let outbox = Outbox::open(&path).unwrap();
        outbox
            .append(&mut [vec![event("c"), event("d")]], &[])
            .unwrap();
        forget_stored(&outbox, 3);
        // 1 and 2 from the database, then 3 and 4 from memory.
        assert_eq!(sequences(&outbox.pending_after(0, 2).unwrap()), [1, 2]);
        let kept = outbox.pending_after(2, 10).unwrap();
        assert_eq!(events(&kept)[1].event_id, "d");
        // Events that do not follow the kept ones replace them: 5 kept, 6 in the database
        // alone, 7 kept. Keeping 5 and 7 would skip 6.
        outbox
            .append(&mut [vec![event("e"), event("f"), event("g")]], &[])
            .unwrap();
        let [fifth, _, seventh] =
            <[Stored; 3]>::try_from(outbox.pending_after(4, 3).unwrap()).unwrap();
        outbox.keep(vec![fifth]);
        outbox.keep(vec![seventh]);
        assert_eq!(sequences(&outbox.pending_after(4, 10).unwrap()), [5, 6, 7]);
    }

    #[test]
    fn an_event_stored_as_json_by_an_older_runtime_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.db");
        let mut old = event("old");
        old.origin.as_mut().unwrap().sequence = 1;
        // The table as an older runtime made it, holding one event.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE outbox (sequence INTEGER PRIMARY KEY,
                 event_id TEXT NOT NULL UNIQUE, event TEXT NOT NULL);
             INSERT INTO meta (key, value) VALUES ('last_sequence', '1');",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO outbox (sequence, event_id, event) VALUES (1, 'old', ?1)",
            params![serde_json::to_string(&old).unwrap()],
        )
        .unwrap();
        drop(conn);
        let outbox = Outbox::open(&path).unwrap();
        // A new event goes in beside it, encoded, and both are read in order.
        outbox.append(&mut [vec![event("new")]], &[]).unwrap();
        let read = events(&outbox.pending_after(0, 10).unwrap());
        assert_eq!(read[0], old);
        assert_eq!(read[1].event_id, "new");
        outbox
            .lock()
            .unwrap()
            .execute("UPDATE outbox SET event = '{' WHERE sequence = 1", [])
            .unwrap();
        let error = outbox.pending_after(0, 10).unwrap_err().to_string();
        assert!(
            error.contains("event 1: stored as JSON that is not an event"),
            "{error}"
        );
    }

    #[test]
    fn a_row_that_holds_no_event_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("runtime.db")).unwrap();
        outbox.append(&mut [vec![event("a")]], &[]).unwrap();
        outbox
            .lock()
            .unwrap()
            .execute("UPDATE outbox SET event = 12 WHERE sequence = 1", [])
            .unwrap();
        // The first read takes the event from memory, the second from the database.
        let _ = outbox.pending_after(0, 10).unwrap();
        let error = outbox.pending_after(0, 10).unwrap_err().to_string();
        assert!(
            error.contains("event 1: stored as Integer, not an encoded event"),
            "{error}"
        );
        // Set aside, it no longer stops a read, and is listed for what it is.
        assert!(outbox.quarantine(1, "unreadable").unwrap());
        let listed = read_quarantine(&dir.path().join("runtime.db")).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].sequence, listed[0].reason.as_str()),
            (1, "unreadable")
        );
        let why = listed[0].event.as_ref().unwrap_err();
        assert!(why.contains("stored as Integer"), "{why}");
        let sent = events(&outbox.pending_after(0, 10).unwrap());
        assert_eq!(sent[0].kind, EventKind::Refusal);
        let kept: i64 = outbox
            .lock()
            .unwrap()
            .query_row("SELECT event FROM quarantine WHERE sequence = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, 12);
    }
}
