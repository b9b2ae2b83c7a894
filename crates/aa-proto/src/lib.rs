//! The `assembly.v1` wire contract: prost/tonic code generated from `proto/` at build time
//! (protox, no system `protoc`), conversions between it and `aa-core`, and the length-prefixed
//! framing of the SDK-to-runtime socket.
//!
//! - [`pb`]: the generated messages, enums, gRPC clients and servers.
//! - [`convert`]: `aa-core` ⇄ wire conversions; wire → core is fallible and says which field
//!   is wrong.
//! - [`encoded`]: wire twins of messages for senders that hold their events encoded.
//! - [`frame`]: encoding and incremental decoding of socket frames, with the size limit.
//! - [`error`]: the crate's error type, [`ProtoError`].
//!
//! This crate holds no policy or business logic and does no IO. Other crates keep generated
//! types out of their public APIs and convert at their edges through this crate.

pub mod convert;
pub mod encoded;
pub mod error;
pub mod frame;

pub use error::ProtoError;

/// gRPC metadata on an `AppendEvents` refusal of an event out of sequence: the sequence its
/// stream's head calls for, as decimal digits. A runtime told a sequence it has already sent
/// (the gateway's store was restored from a backup) sends its events again from there.
pub const EXPECTED_SEQUENCE_METADATA: &str = "aa-expected-sequence";

/// gRPC metadata on an `AppendEvents` refusal of one event that no resend can make acceptable
/// (it does not decode or does not pass the gateway's checks): its sequence in its stream, as
/// decimal digits. The runtime sets that event aside and sends a record of the refusal in its
/// place, so that the events after it are not held back for ever.
pub const REFUSED_SEQUENCE_METADATA: &str = "aa-refused-sequence";

/// gRPC metadata on a refusal of the caller itself, not of the agent it calls for: the
/// runtime token was missing or wrong. A runtime treats it as the gateway being out of reach
/// for it (its agents' credentials are not in question) and logs it.
pub const RUNTIME_REFUSED_METADATA: &str = "aa-runtime-refused";

/// The most bytes of encoded events a runtime puts in one `AppendEvents` call (one event
/// larger than this goes alone).
pub const MAX_APPEND_BYTES: usize = 16 << 20;

/// The largest message the gateway's services decode: room for an append of
/// [`MAX_APPEND_BYTES`] and for the largest event a runtime stores, which an SDK frame
/// ([`frame::MAX_FRAME_BYTES`]) bounds, grown by its enrichment and redaction labels.
pub const MAX_GATEWAY_MESSAGE_BYTES: usize = 64 << 20;

/// Generated code for package `assembly.v1`.
#[allow(
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod pb {
    tonic::include_proto!("assembly.v1");
}
