//! Whatever arrives on the socket, in whatever pieces: the decoder returns frames or a typed
//! error, never a panic, and every decoded body converts to aa-core types or fails with an
//! error naming the field.

use aa_core::{Action, AuditEvent};
use aa_proto::frame::{FrameDecoder, encode};
use aa_proto::pb;
use proptest::prelude::*;

/// Feeds `bytes` to a decoder in pieces of the given sizes, converting every frame it yields
/// as the runtime would; stops at the first error, as the runtime closes the connection.
fn feed(bytes: &[u8], pieces: &[usize]) -> Vec<pb::Frame> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(size);
        rest = tail;
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    convert(&frame);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => {
                    assert!(!error.to_string().is_empty());
                    return frames;
                }
            }
        }
    }
    frames
}

/// Converts what a request carries; errors are fine, panics are not.
fn convert(frame: &pb::Frame) {
    match &frame.body {
        Some(pb::frame::Body::Check(check)) => {
            if let Some(action) = check.action.clone() {
                let _ = Action::try_from(action);
            }
        }
        Some(pb::frame::Body::Events(batch)) => {
            for event in &batch.events {
                let _ = AuditEvent::try_from(event.clone());
            }
            for edge in &batch.edges {
                let _ = aa_core::TopologyEdge::try_from(edge.clone());
            }
        }
        Some(pb::frame::Body::Register(register)) => {
            let _ = aa_core::AgentRegistration::try_from(register.clone());
        }
        _ => {}
    }
}

/// Well-formed requests of each kind the runtime serves.
fn requests() -> Vec<pb::Frame> {
    let action = pb::Action::from(&Action::ToolCall {
        tool: "shell".into(),
        args: serde_json::json!({"command": "ls -la", "env": {"HOME": "/root"}}),
    });
    let event = AuditEvent {
        event_id: "e1".into(),
        timestamp_ms: 1,
        agent: aa_core::AgentContext::new("bot"),
        session_id: Some("s".into()),
        action: Action::LlmCall {
            model: "gpt-4o".into(),
            token_estimate: Some(12),
        },
        verdict: None,
        redactions: Vec::new(),
        kind: aa_core::EventKind::LlmUsage,
        detail: Some(serde_json::json!({"input_tokens": 10, "output_tokens": [1, 2, {"x": null}]})),
        origin: None,
    };
    vec![
        pb::Frame {
            request_id: 1,
            body: Some(pb::frame::Body::Check(pb::CheckRequest {
                agent_id: "bot".into(),
                credential_token: "aat1.x.y".into(),
                action: Some(action),
                session_id: "s".into(),
            })),
        },
        pb::Frame {
            request_id: 2,
            body: Some(pb::frame::Body::Events(pb::EventBatch {
                events: vec![pb::AuditEvent::from(&event)],
                edges: Vec::new(),
                agent_id: "bot".into(),
                credential_token: "aat1.x.y".into(),
            })),
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_bytes_in_arbitrary_pieces_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        pieces in prop::collection::vec(1usize..64, 1..8),
    ) {
        feed(&bytes, &pieces);
    }

    #[test]
    fn a_header_then_noise_never_panics(
        size in 0u32..=u32::MAX,
        noise in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = size.to_be_bytes().to_vec();
        bytes.extend(noise);
        feed(&bytes, &[3]);
    }

    #[test]
    fn mutated_requests_never_panic_and_whole_ones_arrive_intact(
        which in 0usize..2,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
        pieces in prop::collection::vec(1usize..32, 1..4),
    ) {
        let frame = requests().swap_remove(which);
        let whole = encode(&frame).unwrap();
        if edits.is_empty() {
            let frames = feed(&whole, &pieces);
            prop_assert_eq!(frames, vec![frame]);
        } else {
            let mut bytes = whole;
            for (at, byte, how) in edits {
                let i = at.index(bytes.len().max(1));
                match how {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i.min(bytes.len()), byte),
                    _ if i < bytes.len() => { bytes.remove(i); }
                    _ => {}
                }
            }
            feed(&bytes, &pieces);
        }
    }
}
