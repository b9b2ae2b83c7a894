//! Socket frames: a 4-byte big-endian length, then an encoded [`pb::Frame`]. The decoder is
//! incremental (feed it bytes as they arrive) and refuses an oversized frame as soon as its
//! header is read, before buffering its body.

use prost::Message;

use crate::ProtoError;
use crate::pb;

/// The largest frame body accepted, from `FrameLimit.FRAME_LIMIT_MAX_BYTES` in the contract.
pub const MAX_FRAME_BYTES: usize = pb::FrameLimit::MaxBytes as usize;

const HEADER: usize = 4;

/// Encodes one frame with its length prefix.
pub fn encode(frame: &pb::Frame) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(HEADER + frame.encoded_len());
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Appends one frame with its length prefix to `out`, so several answers go out in one write.
/// On error `out` is left as it was.
pub fn encode_into(frame: &pb::Frame, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let size = frame.encoded_len();
    if size > MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooLarge {
            size,
            limit: MAX_FRAME_BYTES,
        });
    }
    out.reserve(HEADER + size);
    // size ≤ MAX_FRAME_BYTES < u32::MAX, so the cast is exact.
    let start = out.len();
    out.extend_from_slice(&(size as u32).to_be_bytes());
    frame.encode(out).map_err(|e| {
        out.truncate(start);
        ProtoError::InvalidField {
            field: "frame",
            message: e.to_string(),
        }
    })
}

/// Room a decoder keeps between frames; more is given back once a frame is taken.
const RETAINED_BYTES: usize = 64 * 1024;

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Appends received bytes. Once a frame's header is in, room for exactly that frame is
    /// made, so what the decoder holds follows what was announced, not doublings of it.
    pub fn extend(&mut self, bytes: &[u8]) {
        if let Some(header) = self.buffer.first_chunk::<HEADER>() {
            let size = u32::from_be_bytes(*header) as usize;
            if size <= MAX_FRAME_BYTES {
                let wanted = (HEADER + size).max(self.buffer.len() + bytes.len());
                self.buffer
                    .reserve_exact(wanted.saturating_sub(self.buffer.len()));
            }
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error after which
    /// the connection should be answered with an error frame and closed.
    pub fn next_frame(&mut self) -> Result<Option<pb::Frame>, ProtoError> {
        let Some(header) = self.buffer.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let size = u32::from_be_bytes(*header) as usize;
        if size > MAX_FRAME_BYTES {
            return Err(ProtoError::FrameTooLarge {
                size,
                limit: MAX_FRAME_BYTES,
            });
        }
        let Some(body) = self.buffer.get(HEADER..HEADER + size) else {
            return Ok(None);
        };
        let frame = pb::Frame::decode(body)?;
        self.buffer.drain(..HEADER + size);
        // A big frame's room goes with it, whatever of the next one came behind it: an idle
        // connection keeps little, and a frame is given room when its header is in.
        let keep = self.buffer.len().max(RETAINED_BYTES);
        if self.buffer.capacity() > keep {
            if self.buffer.is_empty() {
                self.buffer = Vec::new();
            } else {
                self.buffer.shrink_to(keep);
            }
        }
        Ok(Some(frame))
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// What the frame in progress will hold once complete, header included, as soon as its
    /// header is in (and within the frame limit); until then, the bytes received. Room taken
    /// for this up front is never outgrown, so frames waiting for room hold none meanwhile.
    pub fn announced_bytes(&self) -> usize {
        let announced = self
            .buffer
            .first_chunk::<HEADER>()
            .map(|header| u32::from_be_bytes(*header) as usize)
            .filter(|size| *size <= MAX_FRAME_BYTES)
            .map_or(0, |size| HEADER + size);
        announced.max(self.buffer.len())
    }
}

/// An error frame answering `request_id`.
pub fn error_frame(request_id: u64, code: pb::ErrorCode, message: impl Into<String>) -> pb::Frame {
    pb::Frame {
        request_id,
        body: Some(pb::frame::Body::Error(pb::ErrorFrame {
            code: code.into(),
            message: message.into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: u64) -> pb::Frame {
        pb::Frame {
            request_id: id,
            body: Some(pb::frame::Body::Check(pb::CheckRequest {
                agent_id: "bot".into(),
                credential_token: "t".into(),
                action: Some(pb::Action {
                    kind: Some(pb::action::Kind::ToolCall(pb::ToolCall {
                        tool: "shell".into(),
                        args_json: "{}".into(),
                    })),
                }),
                session_id: String::new(),
            })),
        }
    }

    #[test]
    fn frames_survive_arbitrary_chunking() {
        // Appended into one buffer, as a connection's answers to one read are.
        let mut stream = Vec::new();
        for id in 1..=3 {
            encode_into(&check(id), &mut stream).unwrap();
        }
        assert_eq!(
            &stream[..encode(&check(1)).unwrap().len()],
            &encode(&check(1)).unwrap()[..]
        );
        for chunk in [1, 2, 3, 7, stream.len()] {
            let mut decoder = FrameDecoder::new();
            let mut ids = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.extend(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    ids.push(frame.request_id);
                }
            }
            assert_eq!(ids, [1, 2, 3], "chunk size {chunk}");
            assert_eq!(decoder.pending_bytes(), 0);
        }
    }

    #[test]
    fn a_big_frame_gets_its_own_size_in_room_and_gives_it_back() {
        let frame = pb::Frame {
            request_id: 9,
            body: Some(pb::frame::Body::Error(pb::ErrorFrame {
                code: pb::ErrorCode::Internal as i32,
                message: "x".repeat(3 << 20),
            })),
        };
        let bytes = encode(&frame).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes[..2]);
        assert_eq!(decoder.announced_bytes(), 2, "no header yet");
        for chunk in bytes[2..bytes.len() - 1].chunks(64 * 1024) {
            decoder.extend(chunk);
            assert!(decoder.next_frame().unwrap().is_none());
            // The whole frame is announced from the first chunk on.
            assert_eq!(decoder.announced_bytes(), bytes.len());
        }
        // Exactly the frame's size, not the next doubling past it.
        let room = decoder.buffer.capacity();
        assert!(room < bytes.len() + 64 * 1024, "{room}");
        decoder.extend(&bytes[bytes.len() - 1..]);
        assert_eq!(decoder.next_frame().unwrap(), Some(frame.clone()));
        assert_eq!(decoder.buffer.capacity(), 0);

        // Part of the next frame come in the same read as the end of a big one does not keep
        // the big one's room.
        let mut two = bytes.clone();
        two.extend_from_slice(&encode(&check(1)).unwrap()[..5]);
        decoder.extend(&two);
        assert_eq!(decoder.next_frame().unwrap(), Some(frame));
        assert_eq!(decoder.pending_bytes(), 5);
        let room = decoder.buffer.capacity();
        assert!(room <= 64 * 1024, "{room}");
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes());
        let err = decoder.next_frame().unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err}");
        let huge = pb::Frame {
            request_id: 1,
            body: Some(pb::frame::Body::Error(pb::ErrorFrame {
                code: 0,
                message: "x".repeat(MAX_FRAME_BYTES),
            })),
        };
        assert!(matches!(
            encode(&huge),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_a_malformed_frame_not_a_panic() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn error_frames_carry_the_request_id() {
        let frame = error_frame(9, pb::ErrorCode::FrameTooLarge, "too big");
        assert_eq!(frame.request_id, 9);
        assert!(
            matches!(frame.body, Some(pb::frame::Body::Error(ref e)) if e.code == pb::ErrorCode::FrameTooLarge as i32)
        );
    }
}
