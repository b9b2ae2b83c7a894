//! Integration tests of aa-security: per-rule fixtures, obfuscation, redaction and property
//! tests.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fixtures;
mod obfuscation;
mod props;
mod redaction;
mod seams;

use std::sync::LazyLock;

use aa_security::Scanner;

pub(crate) static SCANNER: LazyLock<Scanner> = LazyLock::new(|| Scanner::new().unwrap());
