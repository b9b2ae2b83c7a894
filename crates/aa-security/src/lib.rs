//! The credential and PII scanner: finds secrets and personal data in text, JSON events and raw
//! bytes, and redacts them with receipts for the audit log.
//!
//! - [`rules`]: the built-in rules (credentials of the providers agents touch; email, phone,
//!   SSN, payment cards, IBAN), each with keywords, a confirming regex and decoy gates.
//! - [`scanner`]: [`Scanner`] — compile once; prefilter with keywords and digit runs,
//!   confirm in windows, normalise (NFKC, invisible characters) and peel encoded layers
//!   (base64, hex, percent, JSON escapes; two deep).
//! - [`redact`]: replacing spans with `[REDACTED:<kind>]`, receipts, the JSON and event APIs
//!   with size caps.
//! - `document`: a JSON document's strings in reading order, each scanned alone and with its
//!   neighbours across each seam (a credential split across two fields, or a key and its value).
//! - `keywords`: the keyword search, on Vectorscan with the `vectorscan` feature, else on an
//!   Aho-Corasick automaton.
//! - `normalize`, `runs`, `decode`, `gates`: the pieces the scanner uses.
//! - [`error`]: the crate's error type, [`SecurityError`].
//!
//! This crate does no IO. Scanning never panics and never fails, whatever the input; only
//! building a scanner with a bad custom pattern returns an error. A receipt never carries the
//! secret, only a truncated SHA-256 of it.

mod decode;
mod document;
pub mod error;
mod gates;
mod keywords;
mod normalize;
pub mod redact;
pub mod rules;
mod runs;
pub mod scanner;

pub use aa_core::CustomPattern;
pub use decode::Encoding;
pub use error::SecurityError;
pub use redact::{Limits, OVERSIZED, Oversize, ReceiptKey, Redacted, RedactedBytes};
pub use rules::Severity;
pub use scanner::{Finding, Scanner};
