//! The embedded SQLite store: one file in WAL mode, schema migrations numbered by
//! `PRAGMA user_version`, and triggers that make the audit table append-only. Calls run on
//! tokio's blocking pool, one connection behind a mutex (SQLite has one writer anyway).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aa_core::{Approval, ApprovalStatus, EdgeKind, Suspension, TopologyEdge};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};

use crate::approvals::GATEWAY_STREAM;
use crate::audit::{Checkpoint, GENESIS, Head, Record, hex, link_hash_of_canonical, unhex};
use crate::error::GatewayError;
use crate::store::{
    AgentRecord, Appended, CapCheck, ModelSpend, NewEvent, NewReservation, ReserveOutcome,
    RevokedToken, Settled, Store, Usage,
};

/// Each entry moves the schema one version up; never edit a released one, add another.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE audit_records (
    stream_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    PRIMARY KEY (stream_id, sequence)
) WITHOUT ROWID;
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    heads TEXT NOT NULL,
    gateway_did TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    did TEXT NOT NULL,
    name TEXT NOT NULL,
    framework TEXT NOT NULL,
    team_id TEXT,
    parent_agent_id TEXT,
    delegation_reason TEXT,
    spawned_by_tool TEXT,
    depth INTEGER NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    token_id TEXT NOT NULL
);
CREATE TABLE agent_edges (
    parent_agent_id TEXT NOT NULL,
    child_agent_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (parent_agent_id, child_agent_id, kind)
);
"#,
    r#"
CREATE TABLE approvals (
    approval_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX approvals_by_created ON approvals (created_at_ms);
"#,
    r#"
CREATE TABLE suspensions (
    agent_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
ALTER TABLE agent_edges ADD COLUMN tool TEXT;
ALTER TABLE agent_edges ADD COLUMN metadata TEXT;
"#,
    r#"
CREATE TABLE spend (
    spend_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    estimate_micros INTEGER NOT NULL,
    actual_micros INTEGER,
    input_tokens INTEGER,
    output_tokens INTEGER,
    listed_price INTEGER NOT NULL,
    usage_event_id TEXT UNIQUE,
    settled_at_ms INTEGER
);
CREATE INDEX spend_open ON spend (agent_id, created_at_ms) WHERE actual_micros IS NULL;
CREATE TABLE spend_accounts (
    account TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    spend_id TEXT NOT NULL REFERENCES spend (spend_id),
    PRIMARY KEY (account, at_ms, spend_id)
) WITHOUT ROWID;
CREATE INDEX spend_accounts_by_spend ON spend_accounts (spend_id);
CREATE TABLE spend_windows (
    account TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    micros INTEGER NOT NULL,
    PRIMARY KEY (account, start_ms, end_ms)
) WITHOUT ROWID;
"#,
    // Records of a kilobyte make a poor WITHOUT ROWID table, and a unique index on random
    // event ids costs a scattered page write per append: an event's identity in the log is
    // its place in its stream, which the primary key already holds.
    r#"
CREATE TABLE audit_records_by_rowid (
    stream_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    PRIMARY KEY (stream_id, sequence)
);
INSERT INTO audit_records_by_rowid
    SELECT stream_id, sequence, event_id, event, prev_hash, hash, appended_at_ms
    FROM audit_records ORDER BY stream_id, sequence;
DROP TABLE audit_records;
ALTER TABLE audit_records_by_rowid RENAME TO audit_records;
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
-- The gateway numbers its own events as it makes them, so one made again (a spend settled
-- twice, an approval step retried) comes with a new number: its id, derived from what it
-- records, is what finds it. Kept for the gateway's stream alone.
CREATE INDEX audit_records_gateway_ids ON audit_records (event_id) WHERE stream_id = 'gateway';
"#,
    // Every checkpoint reads the heads; found by scanning the log, that took a second at two
    // million records, growing with the log and holding up appends. Kept by each append now.
    r#"
CREATE TABLE stream_heads (
    stream_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    hash TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO stream_heads (stream_id, sequence, hash)
    SELECT stream_id, MAX(sequence), hash FROM audit_records GROUP BY stream_id;
"#,
    // Tokens superseded or revoked before their expiry, for runtimes to refuse; kept until
    // they would have expired, so a gateway restart forgets none.
    r#"
CREATE TABLE revoked_tokens (
    token_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_at_ms);
"#,
    // Each agent keeps its few newest revoked tokens: an agent registering in a loop cannot
    // grow the set every runtime is sent.
    r#"
CREATE INDEX revoked_tokens_by_agent ON revoked_tokens (agent_id, expires_at_ms);
"#,
    // Checkpoints are append-only too: a removed one is how a rewritten log would hide.
    r#"
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
"#,
    // The expiry sweep reads the pending approvals alone, not every one ever made.
    r#"
CREATE INDEX approvals_by_status ON approvals (status, created_at_ms);
"#,
];

/// Revoked tokens kept per agent. Only a token some runtime still holds matters, and a
/// runtime holds one session an agent; an agent registering again and again through one
/// runtime only pushes out its own older tokens, which that runtime has replaced already.
const REVOKED_PER_AGENT: i64 = 4;

// Amounts add up saturating at i64::MAX (an account charged that much is as good as
// infinitely spent): SQLite's `SUM` fails on an integer overflow and `+` turns into a float,
// either of which left every later charge and report of the account failing. `TOTAL` sums
// as a float, exact below 2^53 micro-USD (about $9 billion).

/// Starts keeping a window's total the first time a cap asks for it, from the ledger (settled
/// costs, and open reservations at their estimate); from then on every charge updates it.
const OPEN_WINDOW: &str = "INSERT INTO spend_windows (account, start_ms, end_ms, micros)
     SELECT ?1, ?2, ?3,
            CAST(MIN(TOTAL(COALESCE(s.actual_micros, s.estimate_micros)), 9223372036854775807)
                 AS INTEGER)
     FROM spend_accounts a JOIN spend s ON s.spend_id = a.spend_id
     WHERE a.account = ?1 AND a.at_ms >= ?2 AND a.at_ms < ?3";

const DAY_MS: i64 = 86_400_000;

/// Adds a change in what `account` was charged at a moment to every window kept that holds it.
const CHARGE_WINDOWS: &str =
    "UPDATE spend_windows SET micros = CAST(MIN(micros + ?3, 9223372036854775807) AS INTEGER)
     WHERE account = ?1 AND start_ms <= ?2 AND ?2 < end_ms";

/// The SQLite store. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, GatewayError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an append the gateway answered survives a power cut. A runtime does not send
        // again what the gateway acknowledged, so a lost tail would be lost for good (and the
        // stream's next batch refused as out of sequence).
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints every 10,000 pages of log (about 40 MB) rather than 1,000: a page written
        // by every commit (a table's right edge) is copied back once a checkpoint (BENCHMARKS.md).
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        SqliteStore::init(conn)
    }

    /// Opens the database at `path` for reading alone, as an audit of it must: nothing in it
    /// changes, its schema included, which must therefore be the one this build writes.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, GatewayError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version = schema_version(&conn)?;
        if version != MIGRATIONS.len() {
            let remedy = if version < MIGRATIONS.len() {
                "a gateway of this build brings it up to date when it starts"
            } else {
                "it was written by a newer build; read it with that one"
            };
            return Err(GatewayError::Storage(format!(
                "database schema version {version}, where this build reads version {} ({remedy}; \
                 it is not changed here)",
                MIGRATIONS.len()
            )));
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// A private in-memory database, for tests and tools.
    pub fn open_in_memory() -> Result<SqliteStore, GatewayError> {
        SqliteStore::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, GatewayError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, GatewayError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, GatewayError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| GatewayError::Storage("connection lock poisoned".to_owned()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| GatewayError::Storage(format!("storage task failed: {e}")))?
    }

    async fn query_checkpoints(
        &self,
        order: &'static str,
    ) -> Result<Vec<Checkpoint>, GatewayError> {
        self.with(move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT id, created_at_ms, heads, gateway_did, signature FROM checkpoints {order}"
            ))?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, created_at_ms, heads, gateway_did, signature)| {
                    Ok(Checkpoint {
                        id: u64::try_from(id).map_err(|_| corrupt("checkpoint id"))?,
                        created_at_ms,
                        heads: serde_json::from_str(&heads)
                            .map_err(|_| corrupt("checkpoint heads"))?,
                        gateway_did,
                        signature,
                    })
                })
                .collect()
        })
        .await
    }
}

/// Appends `events` to `stream_id` inside `tx` (see [`Store::append_events`]).
fn append_in(
    tx: &rusqlite::Transaction<'_>,
    stream_id: &str,
    events: Vec<NewEvent>,
) -> Result<Appended, GatewayError> {
    let head: Option<(i64, String)> = tx
        .prepare_cached("SELECT sequence, hash FROM stream_heads WHERE stream_id = ?1")?
        .query_row(params![stream_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (mut sequence, mut prev) = match head {
        Some((sequence, hash)) => (
            u64::try_from(sequence).map_err(|_| corrupt("sequence"))?,
            unhex(&hash).ok_or_else(|| corrupt("hash"))?,
        ),
        None => (0, GENESIS),
    };
    // A refusal rolls back what this batch stored before it, so it names the place after the
    // head as stored, not as the batch had moved it.
    let stored_head = sequence;
    let mut appended = Appended::default();
    let appended_at = now_ms();
    // Statements are parsed once per connection, not once per event.
    let mut stored_at = tx.prepare_cached(
        "SELECT event_id FROM audit_records WHERE stream_id = ?1 AND sequence = ?2",
    )?;
    let own = stream_id == GATEWAY_STREAM;
    let mut own_holds = tx.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM audit_records
         WHERE stream_id = 'gateway' AND event_id = ?1)",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit_records
         (stream_id, sequence, event_id, event, prev_hash, hash, appended_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for event in events {
        // A batch sent again after a lost answer: the same event at the same place.
        let held = if event.sequence <= sequence {
            let at: Option<String> = stored_at
                .query_row(params![stream_id, to_i64(event.sequence)?], |row| {
                    row.get(0)
                })
                .optional()?;
            at.is_some_and(|at| event.is_held_as(&at))
        } else {
            own && own_holds.query_row(params![event.event_id], |row| row.get(0))?
        };
        if held {
            appended.duplicates += 1;
            continue;
        }
        // A resend this store does not hold is not stored unchecked: its runtime goes back to
        // the head named here and sends it again, to be checked then.
        let (true, Some(canonical)) = (event.sequence == sequence + 1, event.canonical()) else {
            return Err(GatewayError::Sequence {
                stream: stream_id.to_owned(),
                expected: stored_head + 1,
                got: event.sequence,
            });
        };
        // Stored in the form it is hashed in.
        let hash = link_hash_of_canonical(
            &prev,
            stream_id,
            event.sequence,
            &event.event_id,
            canonical.as_bytes(),
        );
        insert.execute(params![
            stream_id,
            to_i64(event.sequence)?,
            event.event_id,
            canonical,
            hex(&prev),
            hex(&hash),
            appended_at,
        ])?;
        sequence = event.sequence;
        prev = hash;
        appended.accepted += 1;
    }
    drop((stored_at, own_holds, insert));
    if appended.accepted > 0 {
        tx.prepare_cached(
            "INSERT INTO stream_heads (stream_id, sequence, hash) VALUES (?1, ?2, ?3)
             ON CONFLICT (stream_id) DO UPDATE
             SET sequence = excluded.sequence, hash = excluded.hash",
        )?
        .execute(params![stream_id, to_i64(sequence)?, hex(&prev)])?;
    }
    Ok(appended)
}

fn schema_version(conn: &Connection) -> Result<usize, GatewayError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    Ok(usize::try_from(version).unwrap_or(usize::MAX))
}

fn migrate(conn: &mut Connection) -> Result<(), GatewayError> {
    let version = schema_version(conn)?;
    if version > MIGRATIONS.len() {
        return Err(GatewayError::Storage(format!(
            "database schema version {version} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn corrupt(what: &str) -> GatewayError {
    GatewayError::Storage(format!("unreadable {what} in the database"))
}

fn to_i64(n: u64) -> Result<i64, GatewayError> {
    i64::try_from(n).map_err(|_| GatewayError::Storage(format!("{n} is out of range")))
}

/// The columns [`positioned_records`] reads; `rowid` is a record's place in the order of
/// appending (the table is a rowid table and records are never deleted).
const RECORD_COLUMNS: &str = "rowid, stream_id, sequence, event_id, event, prev_hash, hash";

/// The records `statement` (selecting [`RECORD_COLUMNS`]) finds, each with its rowid. A
/// column holding what the gateway never writes there (text in `sequence`, a blob, invalid
/// UTF-8) is tampering for `verify` to name by its record, not a read error: it is read as
/// the nearest record, whose chain or hash then fails.
fn positioned_records(
    statement: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<(u64, Record)>, GatewayError> {
    let rows = statement
        .query_map(params, |row| {
            let text = |i: usize| row.get_ref(i).map(text_of);
            let integer = |i: usize| {
                row.get_ref(i).map(|value| match value {
                    ValueRef::Integer(n) => u64::try_from(n).ok(),
                    _ => None,
                })
            };
            let event = text(4)?;
            Ok((
                integer(0)?.unwrap_or(0),
                Record {
                    stream_id: text(1)?,
                    // A negative or non-integer sequence maps to 0, which no chain holds.
                    sequence: integer(2)?.unwrap_or(0),
                    event_id: text(3)?,
                    // Likewise an event that is no longer its canonical JSON keeps its text.
                    event: crate::audit::stored_event(&event),
                    prev_hash: text(5)?,
                    hash: text(6)?,
                },
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A column's value as text, whatever SQLite holds in it.
fn text_of(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => String::new(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

impl Store for SqliteStore {
    async fn append_events(
        &self,
        stream_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<Appended, GatewayError> {
        let stream_id = stream_id.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let appended = append_in(&tx, &stream_id, events)?;
            tx.commit()?;
            Ok(appended)
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<Head>, GatewayError> {
        self.with(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT stream_id, sequence, hash FROM stream_heads ORDER BY stream_id",
            )?;
            let heads = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            heads
                .into_iter()
                .map(|(stream_id, sequence, hash)| {
                    Ok(Head {
                        stream_id,
                        sequence: u64::try_from(sequence).map_err(|_| corrupt("sequence"))?,
                        hash,
                    })
                })
                .collect()
        })
        .await
    }

    async fn records(&self, after: u64, limit: u64) -> Result<Vec<Record>, GatewayError> {
        let (after, limit) = (to_i64(after)?, to_i64(limit)?);
        self.with(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit_records
                 ORDER BY stream_id, sequence LIMIT ?1 OFFSET ?2"
            ))?;
            positioned_records(&mut statement, params![limit, after])
                .map(|rows| rows.into_iter().map(|(_, record)| record).collect())
        })
        .await
    }

    async fn records_after(
        &self,
        after: Option<(String, u64)>,
        limit: u64,
    ) -> Result<Vec<Record>, GatewayError> {
        let limit = to_i64(limit)?;
        let after = match after {
            Some((stream, sequence)) => Some((stream, to_i64(sequence)?)),
            None => None,
        };
        self.with(move |conn| {
            // The first page has no lower bound: a row no gateway writes (an empty stream id,
            // a sequence below 1) still sorts first, where `verify` reads and names it.
            let bound = if after.is_some() {
                "WHERE (stream_id, sequence) > (?2, ?3)"
            } else {
                ""
            };
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit_records {bound}
                 ORDER BY stream_id, sequence LIMIT ?1"
            ))?;
            match &after {
                Some((stream, sequence)) => {
                    positioned_records(&mut statement, params![limit, stream, sequence])
                }
                None => positioned_records(&mut statement, params![limit]),
            }
            .map(|rows| rows.into_iter().map(|(_, record)| record).collect())
        })
        .await
    }

    async fn appended_since(
        &self,
        position: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Record)>, GatewayError> {
        let (position, limit) = (to_i64(position)?, to_i64(limit)?);
        self.with(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit_records
                 WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ))?;
            positioned_records(&mut statement, params![position, limit])
        })
        .await
    }

    async fn last_appended(&self, count: u64) -> Result<Vec<(u64, Record)>, GatewayError> {
        let count = to_i64(count)?;
        self.with(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT * FROM (SELECT {RECORD_COLUMNS} FROM audit_records
                 ORDER BY rowid DESC LIMIT ?1) ORDER BY rowid"
            ))?;
            positioned_records(&mut statement, params![count])
        })
        .await
    }

    async fn add_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), GatewayError> {
        self.with(move |conn| {
            let heads = serde_json::to_string(&checkpoint.heads)
                .map_err(|e| GatewayError::Storage(e.to_string()))?;
            conn.execute(
                "INSERT INTO checkpoints (id, created_at_ms, heads, gateway_did, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    to_i64(checkpoint.id)?,
                    checkpoint.created_at_ms,
                    heads,
                    checkpoint.gateway_did,
                    checkpoint.signature
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, GatewayError> {
        Ok(self
            .query_checkpoints("ORDER BY id DESC LIMIT 1")
            .await?
            .pop())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, GatewayError> {
        self.query_checkpoints("ORDER BY id").await
    }

    async fn put_agent(&self, agent: AgentRecord) -> Result<(), GatewayError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO agents (agent_id, did, name, framework, team_id, parent_agent_id,
                     delegation_reason, spawned_by_tool, depth, registered_at_ms, last_seen_ms,
                     token_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (agent_id) DO UPDATE SET did = excluded.did,
                     name = excluded.name, framework = excluded.framework,
                     team_id = excluded.team_id, parent_agent_id = excluded.parent_agent_id,
                     delegation_reason = excluded.delegation_reason,
                     spawned_by_tool = excluded.spawned_by_tool, depth = excluded.depth,
                     last_seen_ms = excluded.last_seen_ms, token_id = excluded.token_id",
                params![
                    agent.agent_id,
                    agent.did,
                    agent.name,
                    agent.framework,
                    agent.team_id,
                    agent.parent_agent_id,
                    agent.delegation_reason,
                    agent.spawned_by_tool,
                    agent.depth,
                    agent.registered_at_ms,
                    agent.last_seen_ms,
                    agent.token_id,
                ],
            )?;
            if let Some(parent) = &agent.parent_agent_id {
                tx.execute(
                    "INSERT OR IGNORE INTO agent_edges
                     (parent_agent_id, child_agent_id, kind, created_at_ms)
                     VALUES (?1, ?2, 'spawned', ?3)",
                    params![parent, agent.agent_id, agent.registered_at_ms],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, GatewayError> {
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    &format!("{AGENT_COLUMNS} WHERE agent_id = ?1"),
                    params![agent_id],
                    agent_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn insert_approval(
        &self,
        approval: Approval,
        step: NewEvent,
    ) -> Result<bool, GatewayError> {
        let record = approval_json(&approval)?;
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO approvals (approval_id, agent_id, status, created_at_ms, used_at_ms,
                     record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (approval_id) DO NOTHING",
                params![
                    approval.approval_id,
                    approval.agent.id,
                    ApprovalStatus::as_str(approval.status),
                    approval.created_at_ms,
                    approval.used_at_ms,
                    record,
                ],
            )? == 1;
            if inserted {
                append_in(&tx, GATEWAY_STREAM, vec![step])?;
                tx.commit()?;
            }
            Ok(inserted)
        })
        .await
    }

    async fn approval(&self, approval_id: &str) -> Result<Option<Approval>, GatewayError> {
        let approval_id = approval_id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT record FROM approvals WHERE approval_id = ?1",
                params![approval_id],
                |row| row.get::<_, String>(0),
            )
            .optional()?
            .map(|text| approval_from_json(&text))
            .transpose()
        })
        .await
    }

    async fn approvals(&self) -> Result<Vec<Approval>, GatewayError> {
        self.with(|conn| {
            let mut statement = conn
                .prepare("SELECT record FROM approvals ORDER BY created_at_ms DESC, approval_id")?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter().map(|text| approval_from_json(text)).collect()
        })
        .await
    }

    async fn pending_approvals(&self) -> Result<Vec<Approval>, GatewayError> {
        self.with(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT record FROM approvals WHERE status = ?1
                 ORDER BY created_at_ms, approval_id",
            )?;
            let rows = statement
                .query_map([ApprovalStatus::Pending.as_str()], |row| {
                    row.get::<_, String>(0)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter().map(|text| approval_from_json(text)).collect()
        })
        .await
    }

    async fn update_approval(
        &self,
        approval: Approval,
        from: ApprovalStatus,
        step: NewEvent,
    ) -> Result<bool, GatewayError> {
        let record = approval_json(&approval)?;
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE approvals SET status = ?2, used_at_ms = ?3, record = ?4
                 WHERE approval_id = ?1 AND status = ?5 AND used_at_ms IS NULL",
                params![
                    approval.approval_id,
                    ApprovalStatus::as_str(approval.status),
                    approval.used_at_ms,
                    record,
                    ApprovalStatus::as_str(from),
                ],
            )? == 1;
            if changed {
                append_in(&tx, GATEWAY_STREAM, vec![step])?;
                tx.commit()?;
            }
            Ok(changed)
        })
        .await
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, GatewayError> {
        self.with(|conn| {
            let mut statement = conn.prepare(&format!("{AGENT_COLUMNS} ORDER BY agent_id"))?;
            let agents = statement
                .query_map([], agent_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(agents)
        })
        .await
    }

    async fn agent_count(&self) -> Result<u64, GatewayError> {
        self.with(|conn| {
            let count: i64 = conn.query_row("SELECT COUNT(*) FROM agents", [], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn put_suspension(
        &self,
        suspension: Suspension,
        step: NewEvent,
    ) -> Result<(), GatewayError> {
        let record =
            serde_json::to_string(&suspension).map_err(|e| GatewayError::Storage(e.to_string()))?;
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO suspensions (agent_id, record) VALUES (?1, ?2)
                 ON CONFLICT (agent_id) DO UPDATE SET record = excluded.record",
                params![suspension.agent_id, record],
            )?;
            append_in(&tx, GATEWAY_STREAM, vec![step])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_suspensions(
        &self,
        agent_ids: Vec<String>,
        step: NewEvent,
    ) -> Result<(), GatewayError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for id in agent_ids {
                if tx.execute("DELETE FROM suspensions WHERE agent_id = ?1", params![id])? != 1 {
                    // Dropping the transaction undoes the rest.
                    return Err(GatewayError::Conflict(format!(
                        "agent {id:?} is not suspended"
                    )));
                }
            }
            append_in(&tx, GATEWAY_STREAM, vec![step])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, GatewayError> {
        self.with(|conn| {
            let mut statement = conn.prepare("SELECT record FROM suspensions ORDER BY agent_id")?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|text| serde_json::from_str(text).map_err(|_| corrupt("suspension record")))
                .collect()
        })
        .await
    }

    async fn put_revoked(&self, token: RevokedToken, now_ms: i64) -> Result<(), GatewayError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM revoked_tokens WHERE expires_at_ms <= ?1",
                params![now_ms],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO revoked_tokens (token_id, agent_id, expires_at_ms)
                 VALUES (?1, ?2, ?3)",
                params![token.token_id, token.agent_id, token.expires_at_ms],
            )?;
            tx.execute(
                "DELETE FROM revoked_tokens WHERE agent_id = ?1 AND token_id NOT IN (
                     SELECT token_id FROM revoked_tokens WHERE agent_id = ?1
                     ORDER BY expires_at_ms DESC LIMIT ?2)",
                params![token.agent_id, REVOKED_PER_AGENT],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn revoked(&self, now_ms: i64) -> Result<Vec<RevokedToken>, GatewayError> {
        self.with(move |conn| {
            let mut statement = conn.prepare(
                "SELECT agent_id, token_id, expires_at_ms FROM revoked_tokens
                 WHERE expires_at_ms > ?1 ORDER BY agent_id, expires_at_ms",
            )?;
            let tokens = statement
                .query_map(params![now_ms], |row| {
                    Ok(RevokedToken {
                        agent_id: row.get(0)?,
                        token_id: row.get(1)?,
                        expires_at_ms: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(tokens)
        })
        .await
    }

    async fn put_edges(&self, edges: Vec<TopologyEdge>) -> Result<(), GatewayError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            for edge in edges {
                let metadata = edge.metadata.as_ref().map(ToString::to_string);
                tx.execute(
                    "INSERT OR IGNORE INTO agent_edges
                     (parent_agent_id, child_agent_id, kind, created_at_ms, tool, metadata)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        edge.from_agent_id,
                        edge.to_agent_id,
                        edge.kind.as_str(),
                        edge.created_at_ms,
                        edge.tool,
                        metadata
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn reserve(
        &self,
        reservation: NewReservation,
        caps: Vec<CapCheck>,
    ) -> Result<ReserveOutcome, GatewayError> {
        self.with(move |conn| {
            // Immediate: the sums and the insert are one step no other writer can split.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut spent_micros = Vec::with_capacity(caps.len());
            let mut reserved = true;
            for cap in &caps {
                let window = params![cap.account, cap.since_ms, cap.until_ms];
                let kept = |tx: &rusqlite::Transaction<'_>| {
                    tx.query_row(
                        "SELECT micros FROM spend_windows
                         WHERE account = ?1 AND start_ms = ?2 AND end_ms = ?3",
                        window,
                        |row| row.get::<_, i64>(0),
                    )
                    .optional()
                };
                let spent = match kept(&tx)? {
                    Some(spent) => spent,
                    None => {
                        // A window over for a day takes no more charges worth keeping.
                        tx.execute(
                            "DELETE FROM spend_windows WHERE account = ?1 AND end_ms < ?2",
                            params![cap.account, cap.since_ms.saturating_sub(DAY_MS)],
                        )?;
                        tx.execute(OPEN_WINDOW, window)?;
                        kept(&tx)?.ok_or_else(|| corrupt("budget window"))?
                    }
                };
                let spent = micros(spent)?;
                if cap.enforced
                    && spent.saturating_add(reservation.estimate_micros) > cap.cap_micros
                {
                    reserved = false;
                }
                spent_micros.push(spent);
            }
            if reserved {
                insert_spend(&tx, &reservation, None)?;
            }
            tx.commit()?;
            Ok(ReserveOutcome {
                reserved,
                spent_micros,
            })
        })
        .await
    }

    async fn settle(&self, usage: Usage) -> Result<Settled, GatewayError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let known: Option<(String, i64)> = tx
                .query_row(
                    "SELECT spend_id, estimate_micros FROM spend WHERE usage_event_id = ?1",
                    params![usage.event_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            if let Some((spend_id, estimate)) = known {
                // A usage charged by itself had no reservation to replace.
                let reserved = !spend_id.starts_with("usage:");
                return Ok(Settled {
                    spend_id,
                    estimate_micros: reserved.then(|| micros(estimate)).transpose()?,
                    fresh: false,
                });
            }
            let open: Option<(String, i64)> = tx
                .query_row(
                    "SELECT spend_id, estimate_micros FROM spend
                     WHERE agent_id = ?1 AND actual_micros IS NULL AND created_at_ms >= ?3
                     ORDER BY model = ?2 DESC, created_at_ms, spend_id LIMIT 1",
                    params![usage.agent_id, usage.model, usage.open_since_ms],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let now = now_ms();
            let settled = match open {
                Some((spend_id, estimate)) => {
                    // The settled cost replaces the estimate in every window that counted it.
                    let delta = to_i64(usage.cost_micros)? - estimate;
                    let charged: Vec<(String, i64)> = tx
                        .prepare("SELECT account, at_ms FROM spend_accounts WHERE spend_id = ?1")?
                        .query_map(params![spend_id], |row| Ok((row.get(0)?, row.get(1)?)))?
                        .collect::<Result<_, _>>()?;
                    for (account, at_ms) in charged {
                        tx.execute(CHARGE_WINDOWS, params![account, at_ms, delta])?;
                    }
                    tx.execute(
                        "UPDATE spend SET actual_micros = ?2, input_tokens = ?3,
                         output_tokens = ?4, listed_price = listed_price AND ?5,
                         usage_event_id = ?6, settled_at_ms = ?7
                         WHERE spend_id = ?1",
                        params![
                            spend_id,
                            to_i64(usage.cost_micros)?,
                            to_i64(usage.input_tokens)?,
                            to_i64(usage.output_tokens)?,
                            usage.listed_price,
                            usage.event_id,
                            now
                        ],
                    )?;
                    Settled {
                        spend_id,
                        estimate_micros: Some(micros(estimate)?),
                        fresh: true,
                    }
                }
                None => {
                    let spend = NewReservation {
                        spend_id: format!("usage:{}", usage.event_id),
                        agent_id: usage.agent_id.clone(),
                        model: usage.model.clone(),
                        at_ms: usage.at_ms,
                        estimate_micros: usage.cost_micros,
                        listed_price: usage.listed_price,
                        accounts: usage.accounts.clone(),
                    };
                    insert_spend(&tx, &spend, Some((&usage, now)))?;
                    Settled {
                        spend_id: spend.spend_id,
                        estimate_micros: None,
                        fresh: true,
                    }
                }
            };
            tx.commit()?;
            Ok(settled)
        })
        .await
    }

    async fn spend(
        &self,
        account: String,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<ModelSpend>, GatewayError> {
        self.with(move |conn| {
            let mut statement = conn.prepare(
                "SELECT s.model, COUNT(*),
                        CAST(MIN(TOTAL(s.actual_micros), 9223372036854775807) AS INTEGER),
                        CAST(MIN(TOTAL(CASE WHEN s.actual_micros IS NULL
                                       THEN s.estimate_micros ELSE 0 END),
                                 9223372036854775807) AS INTEGER),
                        MIN(s.listed_price)
                 FROM spend_accounts a JOIN spend s ON s.spend_id = a.spend_id
                 WHERE a.account = ?1 AND a.at_ms >= ?2 AND a.at_ms < ?3
                 GROUP BY s.model ORDER BY s.model",
            )?;
            let rows = statement
                .query_map(params![account, since_ms, until_ms], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, bool>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(model, calls, settled, held, listed_price)| {
                    Ok(ModelSpend {
                        model,
                        calls: micros(calls)?,
                        settled_micros: micros(settled)?,
                        held_micros: micros(held)?,
                        listed_price,
                    })
                })
                .collect()
        })
        .await
    }

    async fn edges(&self) -> Result<Vec<TopologyEdge>, GatewayError> {
        self.with(|conn| {
            let mut statement = conn.prepare(
                "SELECT parent_agent_id, child_agent_id, kind, created_at_ms, tool, metadata
                 FROM agent_edges ORDER BY created_at_ms, parent_agent_id, child_agent_id, kind",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<String>>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(from, to, kind, created_at_ms, tool, metadata)| {
                    let kind: EdgeKind = serde_json::from_value(serde_json::Value::String(kind))
                        .map_err(|_| corrupt("edge kind"))?;
                    let metadata = metadata
                        .map(|m| serde_json::from_str(&m))
                        .transpose()
                        .map_err(|_| corrupt("edge metadata"))?;
                    Ok(TopologyEdge {
                        from_agent_id: from,
                        to_agent_id: to,
                        kind,
                        tool,
                        created_at_ms,
                        metadata,
                    })
                })
                .collect()
        })
        .await
    }
}

fn insert_spend(
    tx: &rusqlite::Transaction<'_>,
    spend: &NewReservation,
    actual: Option<(&Usage, i64)>,
) -> Result<(), GatewayError> {
    tx.execute(
        "INSERT INTO spend (spend_id, agent_id, model, created_at_ms, estimate_micros,
         actual_micros, input_tokens, output_tokens, listed_price, usage_event_id, settled_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            spend.spend_id,
            spend.agent_id,
            spend.model,
            spend.at_ms,
            to_i64(spend.estimate_micros)?,
            actual.map(|(u, _)| to_i64(u.cost_micros)).transpose()?,
            actual.map(|(u, _)| to_i64(u.input_tokens)).transpose()?,
            actual.map(|(u, _)| to_i64(u.output_tokens)).transpose()?,
            spend.listed_price,
            actual.map(|(u, _)| u.event_id.as_str()),
            actual.map(|(_, at)| at),
        ],
    )?;
    let charged = to_i64(actual.map_or(spend.estimate_micros, |(u, _)| u.cost_micros))?;
    for account in &spend.accounts {
        let added = tx.execute(
            "INSERT OR IGNORE INTO spend_accounts (account, at_ms, spend_id) VALUES (?1, ?2, ?3)",
            params![account, spend.at_ms, spend.spend_id],
        )?;
        if added > 0 {
            tx.execute(CHARGE_WINDOWS, params![account, spend.at_ms, charged])?;
        }
    }
    Ok(())
}

fn micros(n: i64) -> Result<u64, GatewayError> {
    u64::try_from(n).map_err(|_| corrupt("amount"))
}

fn approval_json(approval: &Approval) -> Result<String, GatewayError> {
    serde_json::to_string(approval).map_err(|e| GatewayError::Storage(e.to_string()))
}

fn approval_from_json(text: &str) -> Result<Approval, GatewayError> {
    serde_json::from_str(text).map_err(|_| corrupt("approval record"))
}

const AGENT_COLUMNS: &str = "SELECT agent_id, did, name, framework, team_id, parent_agent_id,
    delegation_reason, spawned_by_tool, depth, registered_at_ms, last_seen_ms, token_id
    FROM agents";

fn agent_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        agent_id: row.get(0)?,
        did: row.get(1)?,
        name: row.get(2)?,
        framework: row.get(3)?,
        team_id: row.get(4)?,
        parent_agent_id: row.get(5)?,
        delegation_reason: row.get(6)?,
        spawned_by_tool: row.get(7)?,
        depth: row.get(8)?,
        registered_at_ms: row.get(9)?,
        last_seen_ms: row.get(10)?,
        token_id: row.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit;

    #[tokio::test]
    async fn a_store_on_disk_syncs_every_commit_and_checkpoints_in_large_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("gateway.db")).unwrap();
        let settings = store
            .with(|conn| {
                let read = |name: &str| -> Result<String, GatewayError> {
                    Ok(conn
                        .pragma_query_value(None, name, |row| {
                            row.get::<_, rusqlite::types::Value>(0)
                        })
                        .map(|v| format!("{v:?}"))?)
                };
                Ok([
                    read("journal_mode")?,
                    read("synchronous")?,
                    read("wal_autocheckpoint")?,
                ])
            })
            .await
            .unwrap();
        // synchronous 2 is FULL.
        assert_eq!(settings, [r#"Text("wal")"#, "Integer(2)", "Integer(10000)"]);
    }

    #[tokio::test]
    async fn a_change_and_the_step_recording_it_are_written_together_or_not_at_all() {
        let store = SqliteStore::open_in_memory().unwrap();
        let step = |n: u64, name: &str| {
            NewEvent::new(
                format!("{GATEWAY_STREAM}/{name}"),
                n,
                &serde_json::json!({ "step": name }),
            )
        };
        let approval = Approval {
            approval_id: "approval-0123456789".into(),
            agent: aa_core::AgentContext::new("a"),
            action: aa_core::Action::ToolCall {
                tool: "shell".into(),
                args: serde_json::json!({}),
            },
            action_digest: "0".repeat(64),
            rule: "r".into(),
            reason: String::new(),
            status: ApprovalStatus::Pending,
            created_at_ms: 1,
            expires_at_ms: 2,
            decided_by: None,
            comment: None,
            decided_at_ms: None,
            used_at_ms: None,
            policy: String::new(),
        };
        let suspension = Suspension {
            agent_id: "a".into(),
            subtree: false,
            suspended_by: "op".into(),
            reason: String::new(),
            suspended_at_ms: 1,
        };
        // A step that cannot be appended (out of sequence) undoes the change it records.
        let refused = store.insert_approval(approval.clone(), step(5, "requested"));
        assert!(matches!(refused.await, Err(GatewayError::Sequence { .. })));
        assert_eq!(store.approval(&approval.approval_id).await.unwrap(), None);
        let refused = store.put_suspension(suspension.clone(), step(5, "suspended"));
        assert!(refused.await.is_err());
        assert!(store.suspensions().await.unwrap().is_empty());
        assert!(store.heads().await.unwrap().is_empty());

        // Written together: each change and its step.
        assert!(
            store
                .insert_approval(approval.clone(), step(1, "requested"))
                .await
                .unwrap()
        );
        let pending = store.pending_approvals().await.unwrap();
        assert_eq!(pending, std::slice::from_ref(&approval));
        let decided = Approval {
            status: ApprovalStatus::Approved,
            ..approval.clone()
        };
        let refused = store.update_approval(decided.clone(), ApprovalStatus::Pending, step(9, "x"));
        assert!(refused.await.is_err());
        assert_eq!(
            store.approval(&approval.approval_id).await.unwrap(),
            Some(approval.clone())
        );
        assert!(
            store
                .update_approval(
                    decided.clone(),
                    ApprovalStatus::Pending,
                    step(2, "approved")
                )
                .await
                .unwrap()
        );
        // Decided, it is no longer read by the expiry sweep; listing still has it.
        assert!(store.pending_approvals().await.unwrap().is_empty());
        assert_eq!(
            store.approvals().await.unwrap(),
            std::slice::from_ref(&decided)
        );
        // Lost the compare and set: neither the change nor its step.
        assert!(
            !store
                .update_approval(decided, ApprovalStatus::Pending, step(3, "approved-again"))
                .await
                .unwrap()
        );
        store
            .put_suspension(suspension, step(3, "suspended"))
            .await
            .unwrap();
        // A resume naming an agent without a suspension lifts none of them.
        let refused = store.remove_suspensions(vec!["a".into(), "b".into()], step(4, "resumed"));
        assert!(matches!(refused.await, Err(GatewayError::Conflict(_))));
        assert_eq!(store.suspensions().await.unwrap().len(), 1);
        store
            .remove_suspensions(vec!["a".into()], step(4, "resumed"))
            .await
            .unwrap();
        assert!(store.suspensions().await.unwrap().is_empty());
        let steps: Vec<String> = store
            .records(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(
            steps,
            ["requested", "approved", "suspended", "resumed"]
                .map(|s| format!("{GATEWAY_STREAM}/{s}"))
        );
    }

    #[tokio::test]
    async fn a_chain_kept_before_the_rowid_table_and_the_heads_table_survives_their_migrations() {
        let mut conn = Connection::open_in_memory().unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("audit_records_by_rowid"))
            .unwrap();
        for migration in &MIGRATIONS[..before] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        let mut prev = GENESIS;
        for (stream, n) in [("rt-1", 1), ("rt-1", 2), ("gateway", 1), ("rt-1", 3)] {
            let record = Record::new(
                stream,
                n,
                &format!("{stream}/ev-{n}"),
                serde_json::json!({"n": n}),
                if n == 1 { &GENESIS } else { &prev },
            );
            conn.execute(
                "INSERT INTO audit_records VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![
                    record.stream_id,
                    n as i64,
                    record.event_id,
                    record.event.to_string(),
                    record.prev_hash,
                    record.hash
                ],
            )
            .unwrap();
            if stream == "rt-1" {
                prev = unhex(&record.hash).unwrap();
            }
        }

        migrate(&mut conn).unwrap();
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        };
        let records = store.records(0, 100).await.unwrap();
        assert_eq!(
            audit::verify(records.clone(), &[], None).unwrap().records,
            4
        );
        let heads = store.heads().await.unwrap();
        let head_of = |stream: &str| {
            let last = records.iter().rfind(|r| r.stream_id == stream).unwrap();
            (stream.to_owned(), last.sequence, last.hash.clone())
        };
        assert_eq!(
            heads
                .into_iter()
                .map(|h| (h.stream_id, h.sequence, h.hash))
                .collect::<Vec<_>>(),
            [head_of("gateway"), head_of("rt-1")]
        );
        // The chain goes on from its head, a retried event is a duplicate, and the guard holds.
        let next = |n: u64| NewEvent::new(format!("rt-1/ev-{n}"), n, &serde_json::json!({"n": n}));
        let appended = store
            .append_events("rt-1", vec![next(3), next(4)])
            .await
            .unwrap();
        assert_eq!((appended.accepted, appended.duplicates), (1, 1));
        let records = store.records(0, 100).await.unwrap();
        assert_eq!(audit::verify(records, &[], None).unwrap().records, 5);
        let refused = store
            .with(|conn| Ok(conn.execute("DELETE FROM audit_records", [])))
            .await
            .unwrap();
        assert!(refused.unwrap_err().to_string().contains("append-only"));
    }

    #[tokio::test]
    async fn the_log_reads_by_stream_from_a_record_and_in_append_order_from_a_position() {
        let store = SqliteStore::open_in_memory().unwrap();
        // Appended alternately to two streams, the later-named first.
        let event = |stream: &str, n: u64| {
            NewEvent::new(format!("{stream}/{n}"), n, &serde_json::json!({"n": n}))
        };
        let mut appended = Vec::new();
        for n in 1..=3 {
            for stream in ["rt-b", "rt-a"] {
                store
                    .append_events(stream, vec![event(stream, n)])
                    .await
                    .unwrap();
                appended.push(format!("{stream}/{n}"));
            }
        }
        let ids = |records: &[Record]| -> Vec<String> {
            records.iter().map(|r| r.event_id.clone()).collect()
        };
        let by_stream = store.records(0, 100).await.unwrap();
        let mut paged = Vec::new();
        loop {
            let after = paged
                .last()
                .map(|r: &Record| (r.stream_id.clone(), r.sequence));
            let page = store.records_after(after, 4).await.unwrap();
            if page.is_empty() {
                break;
            }
            paged.extend(page);
        }
        assert_eq!(ids(&paged), ids(&by_stream));
        assert_eq!(ids(&paged)[..2], ["rt-a/1", "rt-a/2"]);

        let in_order = store.appended_since(0, 100).await.unwrap();
        let records: Vec<Record> = in_order.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(ids(&records), appended);
        let positions: Vec<u64> = in_order.iter().map(|(at, _)| *at).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        let rest = store.appended_since(positions[3], 100).await.unwrap();
        let rest: Vec<Record> = rest.into_iter().map(|(_, r)| r).collect();
        assert_eq!(ids(&rest), appended[4..]);
        let last = store.last_appended(2).await.unwrap();
        let last: Vec<Record> = last.into_iter().map(|(_, r)| r).collect();
        assert_eq!(ids(&last), appended[4..]);
    }
}
