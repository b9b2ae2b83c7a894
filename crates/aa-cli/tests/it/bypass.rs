//! The SDK-bypass suite: a hostile client that skips every SDK and writes frames to the
//! runtime's socket itself. For each attack: no secret reaches the gateway's store or its
//! export, the attack is on record, and the runtime goes on serving an honest client.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use aa_core::{Action, AuditEvent, Decision, EventKind, Mode, Origin, Verdict};
use aa_proto::frame::encode;
use aa_proto::pb;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::governed::{AWS_KEY, decide, eventually, shell, start_bot, stored_events};
use crate::{aasm, stdout};

/// One way of hiding the key, and the texts that must not be stored.
struct Disguise {
    name: &'static str,
    detail: Value,
    hidden: Vec<String>,
}

fn disguises() -> Vec<Disguise> {
    let key = AWS_KEY;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("aws_key={key}"));
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("id={key}?>>~~"));
    let percent: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    let escaped: String = key
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let joined: String = key
        .chars()
        .flat_map(|c| [c, '\u{200d}'])
        .collect::<String>();
    let fullwidth: String = key
        .chars()
        .map(|c| char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c))
        .collect();
    let mut nested = json!({ "key": key });
    for _ in 0..50 {
        nested = json!({ "a": nested });
    }
    let plain = |name, text: String| Disguise {
        name,
        detail: json!({ "note": format!("use {text} for the bucket") }),
        hidden: vec![text],
    };
    let (head, tail) = key.split_at(key.len() / 2);
    let halves = vec![head.to_owned(), tail.to_owned()];
    vec![
        plain("raw", key.to_owned()),
        plain("base64", b64),
        plain("base64url", b64url),
        plain("percent", percent),
        plain("hex", hex),
        plain("json escapes", escaped),
        plain("zero-width joiners", joined),
        plain("fullwidth", fullwidth),
        Disguise {
            name: "nested 50 deep",
            detail: nested,
            hidden: vec![key.to_owned()],
        },
        Disguise {
            name: "split across two fields",
            detail: json!({ "bucket": format!("id {head}"), "region": format!("{tail} eu") }),
            hidden: halves.clone(),
        },
        Disguise {
            name: "split across a key and its value",
            detail: json!({ "env": { head: tail } }),
            hidden: halves,
        },
    ]
}

/// An event as a hostile client writes it: claims of its own about scanning, trust, the
/// decision, the receipts and where it came from.
fn forged_event(index: usize, detail: Value) -> pb::AuditEvent {
    let event = AuditEvent {
        event_id: format!("hostile-{index}"),
        timestamp_ms: 1,
        agent: aa_core::AgentContext::new("someone-else"),
        session_id: None,
        action: Action::ToolCall {
            tool: "notes".into(),
            args: json!({ "already_scanned": true, "trust": "verified", "sdk_version": "9.9.9-trusted" }),
        },
        verdict: Some(Verdict {
            decision: Decision::Allow,
            rule: "forged".into(),
            reason: "trust me".into(),
            policy: "nobody@1".into(),
            mode: Mode::Disabled,
        }),
        redactions: Vec::new(),
        kind: EventKind::ToolEnd,
        detail: Some(detail),
        origin: Some(Origin {
            stream_id: "gateway".into(),
            sequence: 1,
            received_at_ms: 1,
            peer_uid: 0,
            peer_pid: 1,
        }),
    };
    pb::AuditEvent::from(&event)
}

fn exported(state: &Path) -> String {
    let out = aasm(&[
        "audit",
        "export",
        "--state-dir",
        &state.display().to_string(),
    ]);
    assert!(out.status.success());
    stdout(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sent_raw_or_disguised_with_forged_claims_are_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, c, bot) = start_bot(dir.path(), &state).await;
    let disguises = disguises();
    let batch = pb::EventBatch {
        events: disguises
            .iter()
            .enumerate()
            .map(|(i, d)| forged_event(i, d.detail.clone()))
            .collect(),
        edges: Vec::new(),
        agent_id: bot.id().to_owned(),
        credential_token: bot.credential_token(),
    };
    let frame = pb::Frame {
        request_id: 1,
        body: Some(pb::frame::Body::Events(batch)),
    };
    let socket = up.runtime.socket.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(&encode(&frame).unwrap()).unwrap();
        crate::governed::raw_frame(&mut s)
    })
    .await
    .unwrap();
    let accepted = match answer.and_then(|f| f.body) {
        Some(pb::frame::Body::EventsAck(ack)) => ack.accepted,
        other => panic!("expected an ack, got {other:?}"),
    };
    assert_eq!(accepted, disguises.len() as u64);
    let gateway = &up.gateway;
    assert!(
        eventually(Duration::from_secs(10), async || {
            stored_events(gateway)
                .await
                .iter()
                .filter(|e| {
                    e["event_id"]
                        .as_str()
                        .is_some_and(|id| id.contains("hostile-"))
                })
                .count()
                == disguises.len()
        })
        .await
    );

    // An event of a kind only the gateway records is refused, the whole batch with it.
    let mut spend = forged_event(99, json!({ "cost_usd": 0 }));
    spend.kind = pb::EventKind::Spend as i32;
    let frame = pb::Frame {
        request_id: 2,
        body: Some(pb::frame::Body::Events(pb::EventBatch {
            events: vec![spend],
            edges: Vec::new(),
            agent_id: bot.id().to_owned(),
            credential_token: bot.credential_token(),
        })),
    };
    let socket = up.runtime.socket.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(&encode(&frame).unwrap()).unwrap();
        crate::governed::raw_frame(&mut s)
    })
    .await
    .unwrap();
    match refused.and_then(|f| f.body) {
        Some(pb::frame::Body::Error(e)) => {
            assert_eq!(e.code, pb::ErrorCode::InvalidRequest as i32);
            assert!(
                e.message
                    .contains("spend events are recorded by the gateway only"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The honest client was served throughout.
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let stored = stored_events(gateway).await;
    up.stop().await.unwrap();

    // Recorded as the registered agent's, with the runtime's own origin; every forged claim
    // about the decision and where it came from is gone.
    let hostile: Vec<&Value> = stored
        .iter()
        .filter(|e| {
            e["event_id"]
                .as_str()
                .is_some_and(|id| id.contains("hostile-"))
        })
        .collect();
    for event in &hostile {
        assert_eq!(event["agent"]["id"], "bot", "{event}");
        assert!(event["verdict"].is_null(), "{event}");
        assert_ne!(event["origin"]["stream_id"], "gateway", "{event}");
        assert!(event["origin"]["received_at_ms"].as_i64().unwrap() > 1);
    }
    // No disguise survives, in the database or in the export.
    let database = crate::governed::file_text(&state.join("gateway.db"));
    let export = exported(&state);
    let mut leaked = Vec::new();
    for (i, d) in disguises.iter().enumerate() {
        let event = hostile
            .iter()
            .find(|e| {
                e["event_id"]
                    .as_str()
                    .is_some_and(|id| id.ends_with(&format!("hostile-{i}")))
            })
            .unwrap();
        let redacted = event["redactions"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        eprintln!("{} {}", d.name, event);
        let stored = |h: &String| database.contains(h.as_str()) || export.contains(h.as_str());
        if !redacted || d.hidden.iter().any(stored) {
            leaked.push(d.name);
        }
    }
    assert!(leaked.is_empty(), "stored undisguised: {leaked:?}");
}
