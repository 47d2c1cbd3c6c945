//! Per-connection E2E encryption (and, later, message signing).

pub mod session;
