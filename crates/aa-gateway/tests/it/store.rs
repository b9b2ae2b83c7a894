//! The SQLite store on a real database file: appends, idempotency, sequence rules, restarts,
//! the append-only guard, and tampering found by `audit::verify`.

use aa_gateway::audit::{self, Checkpoint};
use aa_gateway::{AgentRecord, Appended, GatewayError, NewEvent, SqliteStore, Store};
use aa_identity::Keypair;
use serde_json::json;

fn event(n: u64) -> NewEvent {
    let event = json!({"type": "tool_call", "tool": "shell", "n": n});
    NewEvent::new(format!("ev-{n}"), n, &event)
}

async fn all_records(store: &SqliteStore) -> Vec<audit::Record> {
    store.records(0, u64::MAX >> 1).await.unwrap()
}

#[tokio::test]
async fn appends_are_gapless_idempotent_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let store = SqliteStore::open(&path).unwrap();
    let first = store
        .append_events("rt-1", (1..=3).map(event).collect())
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            accepted: 3,
            duplicates: 0
        }
    );
    // A retried batch overlapping what is stored: the old ones are duplicates.
    let retry = store
        .append_events("rt-1", (2..=5).map(event).collect())
        .await
        .unwrap();
    assert_eq!(
        retry,
        Appended {
            accepted: 2,
            duplicates: 2
        }
    );
    // A gap fails the whole batch and appends nothing, so the place named is the one after the
    // head as stored, not after the events of the batch before the gap.
    let gap = store
        .append_events("rt-1", vec![event(6), event(8)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            gap,
            GatewayError::Sequence {
                expected: 6,
                got: 8,
                ..
            }
        ),
        "{gap}"
    );
    // Another event at a place the stream holds is no duplicate: it fails the batch.
    let mut intruder = event(5);
    intruder.event_id = "ev-intruder".into();
    let taken = store
        .append_events("rt-1", vec![intruder])
        .await
        .unwrap_err();
    assert!(
        matches!(
            taken,
            GatewayError::Sequence {
                expected: 6,
                got: 5,
                ..
            }
        ),
        "{taken}"
    );
    // A resend is held under its id as stored or as its digest; past the head it is no event
    // to store (the gateway took it for a resend from a head its store no longer has).
    let resent = store
        .append_events(
            "rt-1",
            vec![
                NewEvent::resent("ev-4", vec!["sha256:ffff".into()], 4),
                NewEvent::resent("ev-5", vec!["sha256:ffff".into()], 5),
            ],
        )
        .await
        .unwrap();
    assert_eq!((resent.accepted, resent.duplicates), (0, 2));
    let past_the_head = store
        .append_events(
            "rt-1",
            vec![NewEvent::resent("ev-6", vec!["sha256:ffff".into()], 6)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            past_the_head,
            GatewayError::Sequence {
                expected: 6,
                got: 6,
                ..
            }
        ),
        "{past_the_head}"
    );
    // Held as its digest (an id the scanner kept so), the event is known by it too.
    let mut digested = event(6);
    digested.event_id = "sha256:0123".into();
    store.append_events("rt-1", vec![digested]).await.unwrap();
    let resent = store
        .append_events(
            "rt-1",
            vec![NewEvent::resent("ev-6", vec!["sha256:0123".into()], 6)],
        )
        .await
        .unwrap();
    assert_eq!((resent.accepted, resent.duplicates), (0, 1));
    let other = store
        .append_events(
            "rt-1",
            vec![NewEvent::resent("ev-8", vec!["sha256:89ab".into()], 6)],
        )
        .await
        .unwrap_err();
    assert!(matches!(other, GatewayError::Sequence { .. }), "{other}");
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let heads = store.heads().await.unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        (heads[0].stream_id.as_str(), heads[0].sequence),
        ("rt-1", 6)
    );
    let records = all_records(&store).await;
    assert_eq!(
        records.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(heads[0].hash, records[5].hash);
    assert_eq!(audit::verify(records, &[], None).unwrap().records, 6);
}

#[tokio::test]
async fn the_audit_and_checkpoint_tables_refuse_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let store = SqliteStore::open(&path).unwrap();
    store.append_events("rt-1", vec![event(1)]).await.unwrap();
    let heads = store.heads().await.unwrap();
    let gateway = Keypair::generate().unwrap();
    store
        .add_checkpoint(Checkpoint::sign(&gateway, 1, 1_000, heads))
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    for sql in [
        "UPDATE audit_records SET event = '{}'",
        "DELETE FROM audit_records",
        "UPDATE checkpoints SET signature = ''",
        "DELETE FROM checkpoints",
    ] {
        let err = raw.execute(sql, []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

/// Opens the database as an attacker with file access would: the guard triggers dropped.
fn tamper(path: &std::path::Path, sql: &str) {
    let raw = rusqlite::Connection::open(path).unwrap();
    raw.execute_batch(
        "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete;",
    )
    .unwrap();
    raw.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn edited_deleted_and_reordered_rows_are_named() {
    let cases = [
        (
            "UPDATE audit_records SET event = '{\"tool\":\"rm\"}' WHERE sequence = 3",
            "stream \"rt-1\" sequence 3 (event \"ev-3\"): hash does not match its contents (edited)",
        ),
        (
            // The same value written another way: the tool given twice, the last one kept
            // by this parser, the first by others.
            "UPDATE audit_records SET event = replace(event, '{', '{\"tool\":\"rm\",') WHERE sequence = 3",
            "stream \"rt-1\" sequence 3 (event \"ev-3\"): hash does not match its contents (edited)",
        ),
        (
            "UPDATE audit_records SET event = event || ' ' WHERE sequence = 3",
            "stream \"rt-1\" sequence 3 (event \"ev-3\"): hash does not match its contents (edited)",
        ),
        (
            "DELETE FROM audit_records WHERE sequence = 2",
            "stream \"rt-1\" sequence 3 (event \"ev-3\"): expected sequence 2: records before it are missing or out of order",
        ),
        (
            // Two rows swap places (sequence numbers exchanged).
            "UPDATE audit_records SET sequence = -1 WHERE sequence = 2;
             UPDATE audit_records SET sequence = 2 WHERE sequence = 3;
             UPDATE audit_records SET sequence = 3 WHERE sequence = -1;",
            "stream \"rt-1\" sequence 2 (event \"ev-3\"): does not link to the previous record (deleted, reordered or rewritten)",
        ),
        (
            "DELETE FROM audit_records WHERE sequence >= 4",
            "stream \"rt-1\" sequence 4: named by checkpoint 1 but missing (truncated or deleted)",
        ),
    ];
    for (sql, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let gateway = Keypair::generate().unwrap();
        let store = SqliteStore::open(&path).unwrap();
        store
            .append_events("rt-1", (1..=5).map(event).collect())
            .await
            .unwrap();
        let mut heads = store.heads().await.unwrap();
        heads[0].sequence = 4;
        heads[0].hash = all_records(&store).await[3].hash.clone();
        store
            .add_checkpoint(Checkpoint::sign(&gateway, 1, 1_000, heads))
            .await
            .unwrap();
        let checkpoints = store.checkpoints().await.unwrap();
        assert!(
            audit::verify(
                all_records(&store).await,
                &checkpoints,
                Some(&gateway.public())
            )
            .is_ok()
        );

        tamper(&path, sql);
        let err = audit::verify(
            all_records(&store).await,
            &checkpoints,
            Some(&gateway.public()),
        )
        .unwrap_err();
        assert_eq!(err.0, expected, "{sql}");
    }
}

/// Numbers read back as the values they were written from: the chain hashes an event's
/// canonical text, which must read back as itself, or an untouched log would fail to verify.
#[tokio::test]
async fn events_holding_any_number_verify_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gateway.db")).unwrap();
    // A float the default parser reads one unit in the last place off, then a spread of
    // others, from tiny to huge, and integers at the edges.
    let mut numbers = vec![
        json!(8.247_475_118_225_734e-10),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.1),
        json!(-0.0),
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if f.is_finite() {
            numbers.push(json!(f));
        }
    }
    let events = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let n_u64 = i as u64 + 1;
            NewEvent::new(
                format!("ev-{n_u64}"),
                n_u64,
                &json!({ "detail": { "x": n } }),
            )
        })
        .collect();
    store.append_events("rt-1", events).await.unwrap();
    let records = all_records(&store).await;
    assert_eq!(records.len(), numbers.len());
    for (record, n) in records.iter().zip(&numbers) {
        assert_eq!(&record.event["detail"]["x"], n, "{}", record.event_id);
    }
    let verified = audit::verify(records, &[], None).unwrap();
    assert_eq!(verified.records as usize, numbers.len());
}

#[tokio::test]
async fn agents_keep_their_lineage() {
    let store = SqliteStore::open_in_memory().unwrap();
    let agent = |id: &str, parent: Option<&str>, depth| AgentRecord {
        agent_id: id.to_owned(),
        did: Keypair::generate().unwrap().public().did(),
        name: id.to_owned(),
        framework: "custom".to_owned(),
        team_id: Some("support".to_owned()),
        parent_agent_id: parent.map(str::to_owned),
        delegation_reason: parent.map(|_| "triage".to_owned()),
        spawned_by_tool: None,
        depth,
        registered_at_ms: 1,
        last_seen_ms: 1,
        token_id: "t".to_owned(),
    };
    store.put_agent(agent("root", None, 0)).await.unwrap();
    store
        .put_agent(agent("child", Some("root"), 1))
        .await
        .unwrap();
    let mut again = agent("child", Some("root"), 1);
    again.last_seen_ms = 9;
    store.put_agent(again).await.unwrap();
    let agents = store.agents().await.unwrap();
    assert_eq!(agents.len(), 2);
    let child = store.agent("child").await.unwrap().unwrap();
    assert_eq!(child.parent_agent_id.as_deref(), Some("root"));
    assert_eq!((child.depth, child.last_seen_ms), (1, 9));
    assert!(store.agent("nobody").await.unwrap().is_none());
}
