//! Cross-crate end-to-end tests live in `tests/` of this crate; they reuse
//! the operator's fake API server and the gateway's test harness by path.
