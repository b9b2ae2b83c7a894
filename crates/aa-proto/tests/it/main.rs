//! Integration tests of aa-proto: the frame decoder and the conversions to aa-core under
//! arbitrary and mutated input (the fuzz targets of the socket protocol, run by proptest for a
//! bounded number of cases; `PROPTEST_CASES=100000 cargo test -p aa-proto` runs longer).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod props;
