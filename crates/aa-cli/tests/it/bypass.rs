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

use aa_bench::stack::Stack;
use aa_cli::up::{GatewayHandle, RuntimeHandle, RuntimeSettings, Up};

use crate::governed::{
    AWS_KEY, check_frame, client, data, decide, decision_of, eventually, options, register, shell,
    start_bot, stored_events,
};
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

/// A process that dials the gateway's gRPC port itself, past its runtime, is refused every
/// call before its request is read: it cannot append to the audit log, register an agent or
/// read the policy. The runtime's calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_a_process_that_dials_it_past_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, c, bot) = start_bot(dir.path(), &state).await;
    let url = up.gateway.url();
    let refused = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("runtime token"), "{status:?}");
    };
    let mut audit = pb::audit_service_client::AuditServiceClient::connect(url.clone())
        .await
        .unwrap();
    let events = vec![forged_event(
        0,
        json!({ "mark": "dialled past the runtime" }),
    )];
    refused(
        audit
            .append_events(pb::AppendEventsRequest { events })
            .await
            .unwrap_err(),
    );
    let mut agents = pb::agent_service_client::AgentServiceClient::connect(url.clone())
        .await
        .unwrap();
    refused(
        agents
            .register(pb::RegisterRequest::default())
            .await
            .unwrap_err(),
    );
    let mut policies = pb::policy_service_client::PolicyServiceClient::connect(url)
        .await
        .unwrap();
    refused(
        policies
            .watch_bundle(pb::WatchBundleRequest::default())
            .await
            .unwrap_err(),
    );

    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    up.stop().await.unwrap();
    let log = exported(&state);
    assert!(
        log.contains("\"command\":\"ls\""),
        "the bot's check is stored"
    );
    assert!(!log.contains("dialled past the runtime"));
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
    let answer = exchange(&up.runtime.socket, encode(&frame).unwrap()).await;
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

    // An event of a kind only the gateway or the runtime records is refused, the whole batch
    // with it: an SDK cannot forge a spend, a refusal or a decision that never happened, nor
    // an edge from another agent by passing it as an event rather than in `edges`.
    for (kind, recorder) in [
        (
            pb::EventKind::Spend,
            "spend events are recorded by the gateway only",
        ),
        (
            pb::EventKind::Refusal,
            "refusal events are recorded by the runtime only",
        ),
        (
            pb::EventKind::Decision,
            "decision events are recorded by the runtime only",
        ),
        (
            pb::EventKind::Edge,
            "edge events are recorded by the runtime only (report an edge in `edges`)",
        ),
        (
            pb::EventKind::Unspecified,
            "decision events are recorded by the runtime only",
        ),
    ] {
        let mut forged = forged_event(99, json!({ "cost_usd": 0 }));
        forged.kind = kind as i32;
        let frame = events_frame(2, forged, bot.id(), bot.credential_token());
        let refused = exchange(&up.runtime.socket, encode(&frame).unwrap()).await;
        match refused.and_then(|f| f.body) {
            Some(pb::frame::Body::Error(e)) => {
                assert_eq!(e.code, pb::ErrorCode::InvalidRequest as i32);
                assert!(e.message.contains(recorder), "{}", e.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
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

/// An event id is the one thing of an event that is not redacted in place, since it must
/// stay unique: an id holding a secret is stored as its digest, with a receipt, and a batch
/// sent again with it is still recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_an_event_id_is_stored_as_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, _c, bot) = start_bot(dir.path(), &state).await;
    let mut event = forged_event(0, json!({}));
    event.event_id = format!("order-{AWS_KEY}");
    let frame = events_frame(1, event, bot.id(), bot.credential_token());
    let bytes = encode(&frame).unwrap();
    let mut accepted = Vec::new();
    for _ in 0..2 {
        match exchange(&up.runtime.socket, bytes.clone())
            .await
            .and_then(|f| f.body)
        {
            Some(pb::frame::Body::EventsAck(ack)) => accepted.push(ack.accepted),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert_eq!(accepted, [1, 0], "the second is the same event");
    let gateway = &up.gateway;
    let tool_ends = async || {
        stored_events(gateway)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "tool_end")
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), async || tool_ends().await.len()
            == 1)
        .await
    );
    let stored = tool_ends().await.remove(0);
    up.stop().await.unwrap();

    let id = stored["event_id"].as_str().unwrap();
    assert!(id.contains("/bot/sha256:"), "{id}");
    let receipt = &stored["redactions"][0];
    assert_eq!(
        (receipt["field"].as_str(), receipt["kind"].as_str()),
        (Some("event_id"), Some("aws_access_key")),
        "{stored}"
    );
    for db in ["gateway.db", "runtime.db"] {
        let text = crate::governed::file_text(&state.join(db));
        assert!(!text.contains(AWS_KEY), "{db} holds the key");
    }
}

/// An allowed call's decision is on record whatever an agent's own strings glue into: a
/// session id short of a Stripe key by the five letters of the verdict's `allow`, its
/// neighbour in the stored event, once made the runtime redact the decision into something
/// that no longer read as an event, and drop the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_recorded_whatever_an_agents_strings_glue_into() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, c, bot) = start_bot(dir.path(), &state).await;
    let session = "sk_live_abcdefghij012345678";
    let outcome = c
        .check(&bot, shell("ls"), Some(session.into()))
        .await
        .unwrap();
    assert_eq!(outcome.verdict.decision, Decision::Allow);
    let gateway = &up.gateway;
    let decisions = async || {
        stored_events(gateway)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "decision" && e["session_id"] == session)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), async || decisions().await.len()
            == 1)
        .await
    );
    let stored = decisions().await.remove(0);
    up.stop().await.unwrap();
    assert_eq!(stored["verdict"]["decision"], "allow", "{stored}");
    assert_eq!(stored["redactions"], json!([]), "{stored}");
}

/// A refusal's reason quotes the id it was given as it came, not escaped: `{:?}` once wrote
/// an invisible character as `\u{200b}`, which no scan reads as one, so a token split by it
/// was stored whole in the reason while the id beside it was redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_an_unknown_agents_id_is_redacted_in_the_reason_too() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, _c, bot) = start_bot(dir.path(), &state).await;
    let token = "ghp_0123456789abcdefghijABCDEFGHIJKLMNOP";
    let id = format!("bot-{}\u{200B}{}", &token[..12], &token[12..]);
    let d = decision_of(
        exchange(
            &up.runtime.socket,
            encode(&check_frame(&id, &bot.credential_token(), "{}".into())).unwrap(),
        )
        .await,
    );
    assert_eq!(d.decision, pb::Decision::Deny as i32, "{d:?}");
    let gateway = &up.gateway;
    let refusals = async || {
        stored_events(gateway)
            .await
            .into_iter()
            .filter(|e| e["verdict"]["rule"] == "credential")
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), async || refusals().await.len()
            == 1)
        .await
    );
    let stored = refusals().await.remove(0);
    up.stop().await.unwrap();
    let reason = stored["verdict"]["reason"].as_str().unwrap();
    assert!(reason.contains("[REDACTED:github_token]"), "{stored}");
    assert!(!stored.to_string().contains(&token[12..]), "{stored}");
}

/// Writes `bytes` on a fresh connection and reads one answer (`None` when the runtime just
/// closes it).
/// JSON nested as deep as a parser takes, but deeper than a stored event may hold, is refused
/// where it comes in: a check's arguments denied, an event's detail refused. Before, a check
/// whose arguments nested 127 levels was decided and its decision stored 129 levels deep,
/// which `aasm audit verify` then read as an edited record, and stopped there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_too_deep_to_store_is_refused_and_the_log_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (up, c, bot) = start_bot(dir.path(), &state).await;
    let (socket, token) = (up.runtime.socket.clone(), bot.credential_token());
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let check = async |args: String| {
        decision_of(exchange(&socket, encode(&check_frame("bot", &token, args)).unwrap()).await)
    };
    let d = check(format!("{{\"command\":{}}}", deep(126))).await;
    assert_eq!(d.decision, pb::Decision::Deny as i32, "{d:?}");
    assert!(
        d.reason.contains("nests deeper than 64 levels"),
        "{}",
        d.reason
    );
    let mut event = forged_event(1, json!({}));
    event.detail_json = deep(120);
    let report = events_frame(5, event, "bot", token.clone());
    let e = error_of(exchange(&socket, encode(&report).unwrap()).await);
    assert_eq!(e.code, pb::ErrorCode::InvalidRequest as i32, "{e:?}");
    assert!(e.message.contains("nests deeper than 64 levels"), "{e:?}");
    // Within the bound, a check is decided as any other.
    let d = check(format!("{{\"command\":\"ls\",\"n\":{}}}", deep(60))).await;
    assert_eq!(d.decision, pb::Decision::Allow as i32, "{d:?}");
    drop(c);
    up.stop().await.unwrap();
    let out = aasm(&[
        "audit",
        "verify",
        "--state-dir",
        &state.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
}

/// A frame reporting one event, as `agent` with `token`.
fn events_frame(request_id: u64, event: pb::AuditEvent, agent: &str, token: String) -> pb::Frame {
    pb::Frame {
        request_id,
        body: Some(pb::frame::Body::Events(pb::EventBatch {
            events: vec![event],
            edges: Vec::new(),
            agent_id: agent.to_owned(),
            credential_token: token,
        })),
    }
}

async fn exchange(socket: &Path, bytes: Vec<u8>) -> Option<pb::Frame> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A runtime that turns the connection away may close it before all is written.
        let _ = s.write_all(&bytes);
        crate::governed::raw_frame(&mut s)
    })
    .await
    .unwrap()
}

fn error_of(frame: Option<pb::Frame>) -> pb::ErrorFrame {
    match frame.and_then(|f| f.body) {
        Some(pb::frame::Body::Error(e)) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_with_foreign_expired_or_another_gateways_token_is_refused_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = options(&dir.path().join("a"), vec![data()]);
    short.config.token_ttl = Duration::from_secs(2);
    let up = Up::start(short, RuntimeSettings::default()).await.unwrap();
    let other_up = crate::governed::start_up(&dir.path().join("b")).await;
    let socket = up.runtime.socket.clone();
    let c = client(dir.path(), &socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let victim = register(&c, "victim", None).await;
    // The same agent id, registered with another gateway: a genuine token, but not this one's.
    let elsewhere = client(
        &dir.path().join("b"),
        &other_up.runtime.socket,
        Mode::Enforce,
    );
    let bot_elsewhere = register(&elsewhere, "bot", None).await;

    let refusal = |frame| {
        let d = decision_of(frame);
        assert_eq!(
            (d.decision, d.matched_rule.as_str()),
            (pb::Decision::Deny as i32, "credential"),
            "{d:?}"
        );
        d.reason
    };
    let ok = || r#"{"command":"ls"}"#.to_owned();
    // Another agent's id with one's own token.
    let foreign = refusal(
        exchange(
            &socket,
            encode(&check_frame("victim", &bot.credential_token(), ok())).unwrap(),
        )
        .await,
    );
    assert!(foreign.contains("not the agent's current one"), "{foreign}");
    // A token another gateway issued for the same id.
    let other = refusal(
        exchange(
            &socket,
            encode(&check_frame("bot", &bot_elsewhere.credential_token(), ok())).unwrap(),
        )
        .await,
    );
    assert!(other.contains("not the agent's current one"), "{other}");
    // Events under another agent's id are refused whole.
    let batch = events_frame(
        4,
        forged_event(0, json!({ "note": "as the victim" })),
        "victim",
        bot.credential_token(),
    );
    let e = error_of(exchange(&socket, encode(&batch).unwrap()).await);
    assert_eq!(e.code, pb::ErrorCode::Unauthenticated as i32, "{e:?}");
    // An expired token: the client that would renew it is gone.
    let stale = victim.credential_token();
    drop(c);
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let expired = refusal(
        exchange(
            &socket,
            encode(&check_frame("victim", &stale, ok())).unwrap(),
        )
        .await,
    );
    assert!(expired.contains("expired"), "{expired}");

    // Each refused check is on record as a denied decision, under the id it claimed.
    let gateway = &up.gateway;
    let recorded = eventually(Duration::from_secs(10), async || {
        stored_events(gateway)
            .await
            .iter()
            .filter(|e| e["kind"] == "decision" && e["verdict"]["rule"] == "credential")
            .count()
            >= 3
    })
    .await;
    assert!(recorded, "the refusals were not recorded");
    // A fresh client is served.
    let fresh = client(&dir.path().join("fresh"), &socket, Mode::Enforce);
    let newcomer = register(&fresh, "newcomer", None).await;
    assert_eq!(
        decide(&fresh, &newcomer, shell("ls"))
            .await
            .verdict
            .decision,
        Decision::Allow
    );
    other_up.stop().await.unwrap();
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_attacks_cost_the_attacker_their_connection_and_nobody_else_anything() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayHandle::start(options(&dir.path().join("gateway"), vec![data()]))
        .await
        .unwrap();
    let mut config = gateway.runtime_config(dir.path().join("runtime"));
    config.frame_timeout = Duration::from_secs(1);
    config.max_connections = 40;
    let runtime = RuntimeHandle::start(config).unwrap();
    let socket = runtime.socket.clone();
    let c = client(dir.path(), &socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let token = bot.credential_token();

    // Slowloris: a frame begun and never finished is cut off after the frame timeout, while
    // the honest client is answered meanwhile.
    let started = std::time::Instant::now();
    let slow = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
            let answer = crate::governed::raw_frame(&mut s);
            let mut rest = Vec::new();
            let closed = std::io::Read::read_to_end(&mut s, &mut rest).is_ok() && rest.is_empty();
            (answer, closed)
        })
    };
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let (answer, closed) = slow.await.unwrap();
    let e = error_of(answer);
    assert_eq!(e.code, pb::ErrorCode::MalformedFrame as i32);
    assert!(
        e.message.contains("not completed within 1 s"),
        "{}",
        e.message
    );
    assert!(closed, "the connection was closed");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A peer that asks and never reads: once its answers fill its socket and stay unread past
    // the frame timeout, its connection is shut down (the runtime's writer would otherwise
    // wait on it, and hold what it answers, for ever).
    let deaf = {
        let socket = socket.clone();
        let bodiless = encode(&pb::Frame {
            request_id: 1,
            body: None,
        })
        .unwrap()
        .repeat(1_000);
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            // Whole frames only, until the runtime stops taking them: a frame left half sent
            // would have the connection closed for that instead.
            s.set_nonblocking(true).unwrap();
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < until {
                match std::io::Write::write(&mut s, &bodiless) {
                    Ok(n) => assert_eq!(n, bodiless.len(), "a batch of frames half sent"),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    // Shut down already: what it did answer is still there to read.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    Err(e) => panic!("{e}"),
                }
            }
            std::thread::sleep(Duration::from_secs(2));
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut answers = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut answers).map_err(|e| e.kind())
        })
    };
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let read = deaf.await.unwrap();
    // Closed: the end of the stream, or a reset for the requests it left unread; a connection
    // still open would time the read out.
    assert!(
        matches!(read, Ok(_) | Err(std::io::ErrorKind::ConnectionReset)),
        "{read:?}"
    );

    // Idle connections up to the limit are held; one more is turned away, not queued; once
    // they go, connections are accepted again.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..39)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let turned = error_of(
        exchange(
            &socket,
            encode(&check_frame("bot", &token, "{}".into())).unwrap(),
        )
        .await,
    );
    assert_eq!(turned.code, pb::ErrorCode::Unavailable as i32, "{turned:?}");
    assert!(
        turned.message.contains("40 connections at most"),
        "{}",
        turned.message
    );
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    drop(idle);
    let accepted = eventually(Duration::from_secs(5), async || {
        let answer = exchange(
            &socket,
            encode(&check_frame("bot", &token, "{}".into())).unwrap(),
        )
        .await;
        matches!(
            answer.and_then(|f| f.body),
            Some(pb::frame::Body::Decision(_))
        )
    })
    .await;
    assert!(accepted, "connections were not accepted again");

    // JSON bombs: nesting far past any parser's depth, and a wide array near the frame limit.
    // Each is answered and fails closed (unreadable arguments deny; conditions that cannot be
    // evaluated on them count as met, here asking for approval, which a runtime will not hold
    // for arguments of some 100 MB in memory); nothing crashes.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let d =
        decision_of(exchange(&socket, encode(&check_frame("bot", &token, deep)).unwrap()).await);
    assert_eq!(d.decision, pb::Decision::Deny as i32, "{d:?}");
    let wide = format!("{{\"command\":[{}0]}}", "0,".repeat(1_500_000));
    let d =
        decision_of(exchange(&socket, encode(&check_frame("bot", &token, wide)).unwrap()).await);
    assert_eq!(d.decision, pb::Decision::Deny as i32, "{d:?}");
    assert!(
        d.reason.contains("approval needed but not possible")
            && d.reason.contains("more than 64 MiB"),
        "{}",
        d.reason
    );
    let pending = decide(&c, &bot, shell("rm -r x")).await;
    assert_eq!(pending.verdict.decision, Decision::Pending, "{pending:?}");
    let mut event = forged_event(1, json!({}));
    event.detail_json = format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let bomb = events_frame(5, event, "bot", token.clone());
    let e = error_of(exchange(&socket, encode(&bomb).unwrap()).await);
    assert_eq!(e.code, pb::ErrorCode::InvalidRequest as i32, "{e:?}");

    // Invalid UTF-8 where protobuf wants a string: the frame cannot be decoded.
    let mut bytes = encode(&check_frame(
        "bot",
        &token,
        r#"{"command":"MARKER"}"#.into(),
    ))
    .unwrap();
    let at = bytes.windows(6).position(|w| w == b"MARKER").unwrap();
    bytes[at..at + 6].copy_from_slice(b"\xff\xfe\xc3\x28\xa0\xa1");
    let e = error_of(exchange(&socket, bytes).await);
    assert_eq!(e.code, pb::ErrorCode::MalformedFrame as i32, "{e:?}");

    // Through all of it the honest client was served.
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );

    // And each refusal at the socket is in the audit log, under the peer's uid, saying why.
    // The temp directory this process made is ours: its owner is our uid.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap());
    let refusals = async || -> Vec<(String, String)> {
        stored_events(&gateway)
            .await
            .into_iter()
            .filter(|e| e["kind"] == "refusal")
            .map(|e| {
                assert_eq!(e["agent"]["id"], format!("uid:{uid}"));
                assert_eq!(e["verdict"]["rule"], "protocol");
                (
                    e["detail"]["code"].as_str().unwrap_or_default().to_owned(),
                    e["verdict"]["reason"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    };
    let expected = [
        ("MALFORMED_FRAME", "not completed within 1 s"),
        ("UNAVAILABLE", "40 connections at most"),
        ("MALFORMED_FRAME", "not UTF-8"),
    ];
    let recorded = eventually(Duration::from_secs(10), async || {
        let found = refusals().await;
        expected
            .iter()
            .all(|(code, why)| found.iter().any(|(c, r)| c == code && r.contains(why)))
    })
    .await;
    assert!(recorded, "{:?}", refusals().await);
    runtime.stop().await.unwrap();
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_held_and_the_runtime_serves_on() {
    let stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let (fds, memory) = (
        stack.runtime_fds().unwrap(),
        stack.runtime_memory().unwrap(),
    );
    let idle: Vec<std::os::unix::net::UnixStream> = (0..1000)
        .map(|_| std::os::unix::net::UnixStream::connect(&stack.socket).unwrap())
        .collect();
    let held = eventually(Duration::from_secs(10), async || {
        stack.runtime_fds().unwrap() >= fds + 1000
    })
    .await;
    assert!(
        held,
        "the runtime holds {} descriptors",
        stack.runtime_fds().unwrap()
    );
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let loaded = stack.runtime_memory().unwrap();
    let per_connection = loaded.rss.saturating_sub(memory.rss) / 1000;
    eprintln!(
        "1,000 idle connections: RSS {} KiB -> {} KiB ({per_connection} bytes each), fds {fds} -> {}",
        memory.rss / 1024,
        loaded.rss / 1024,
        stack.runtime_fds().unwrap()
    );
    assert!(
        per_connection < 96 * 1024,
        "{per_connection} bytes a connection"
    );
    drop(idle);
    let released = eventually(Duration::from_secs(10), async || {
        stack.runtime_fds().unwrap() <= fds + 5
    })
    .await;
    assert!(
        released,
        "descriptors were not released: {}",
        stack.runtime_fds().unwrap()
    );
    drop(c);
    stack.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_big_frames_share_the_request_budget_and_small_checks_never_wait() {
    let stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let before = stack.runtime_memory().unwrap().rss;

    // Forty connections each announce a frame of 4,000,000 bytes, send 3,900,000 of it and
    // stop. Held in full that is 156 MB, and what it parses into 32 times that; the
    // runtime's request budget is 256 MiB, a frame over 64 KiB takes 32 times what its header
    // announces at once (122 MiB), and past the budget a connection is not read until others
    // finish: at most 2 of the forty get their bytes taken before the first frame times out
    // (10 s) and gives its room up. (Room taken a read at a time let all forty hold part of
    // it and wait on each other.)
    let started = std::time::Instant::now();
    let attackers: Vec<_> = (0..40)
        .map(|_| {
            let socket = stack.socket.clone();
            std::thread::spawn(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let _ = s.write_all(&4_000_000u32.to_be_bytes());
                // Blocks while the runtime does not read; fails once it closes the connection.
                let taken = s.write_all(&vec![0x0a; 3_900_000]).is_ok();
                let early = taken && started.elapsed() < Duration::from_secs(8);
                (early, crate::governed::raw_frame(&mut s))
            })
        })
        .collect();
    // A small frame never waits on the budget.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let grown = stack.runtime_memory().unwrap().rss.saturating_sub(before);
    eprintln!(
        "40 unfinished 3.9 MB frames: the runtime's RSS grew {} MiB",
        grown >> 20
    );

    // Every attacker is answered and closed once its frame time (10 s) is out, whether it was
    // holding room ("not completed") or still waiting for some ("as much for requests in
    // progress as it will").
    let mut taken = 0;
    for attacker in attackers {
        let (early, answer) = tokio::task::spawn_blocking(move || attacker.join().unwrap())
            .await
            .unwrap();
        taken += usize::from(early);
        let e = error_of(answer);
        assert!(
            [pb::ErrorCode::MalformedFrame, pb::ErrorCode::Unavailable]
                .map(|c| c as i32)
                .contains(&e.code),
            "{e:?}"
        );
        assert!(
            e.message.starts_with("frame not completed within 10 s"),
            "{}",
            e.message
        );
    }
    assert!(
        (1..=2).contains(&taken),
        "{taken} of 40 frames taken whole in the first 8 s"
    );
    drop(c);
    stack.stop().unwrap();
}

/// A report is answered off the connection's reader, and its JSON takes tens of times its
/// size once parsed: clients that send wide reports and hang up at once, again and again,
/// hold no more of the runtime's memory than its request budget (256 MiB), whose part a call
/// keeps until it is answered, whether or not its connection is still there. Reports too
/// small to be charged as they arrive (under 64 KiB) are charged before they are parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_reports_from_clients_that_hang_up_hold_memory_to_the_request_budget() {
    let stack = Stack::start(Path::new(env!("CARGO_BIN_EXE_aasm"))).unwrap();
    let c = client(&stack.client_state_dir(), &stack.socket, Mode::Enforce);
    let bot = register(&c, "bot", None).await;
    let before = stack.runtime_memory().unwrap().peak;

    // Zeros: 2 bytes each as text, 32 to 64 parsed. Four reports of 3.8 MB a connection, or
    // 64 of 60 KB.
    let report = |zeros| {
        let wide = forged_event(0, json!(vec![0; zeros]));
        encode(&events_frame(1, wide, bot.id(), bot.credential_token())).unwrap()
    };
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let attackers: Vec<_> = [report(1_900_000).repeat(4), report(30_000).repeat(64)]
        .into_iter()
        .map(|reports| {
            let socket = stack.socket.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                while std::time::Instant::now() < until {
                    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                    if s.write_all(&reports).is_ok() {
                        sent += reports.len() >> 20;
                    }
                }
                sent
            })
        })
        .collect();
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    let mut sent = 0;
    for attacker in attackers {
        sent += tokio::task::spawn_blocking(move || attacker.join().unwrap())
            .await
            .unwrap();
    }
    // What was taken is answered (or its connection found gone) within a few seconds more.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let grown = stack.runtime_memory().unwrap().peak.saturating_sub(before);
    eprintln!(
        "{sent} MiB of reports sent by clients that hung up: the runtime's peak RSS grew {} MiB",
        grown >> 20
    );
    assert!(sent >= 30, "only {sent} MiB of reports were taken");
    assert!(grown < 512 << 20, "peak RSS grew {} MiB", grown >> 20);
    assert_eq!(
        decide(&c, &bot, shell("ls")).await.verdict.decision,
        Decision::Allow
    );
    drop(c);
    stack.stop().unwrap();
}
