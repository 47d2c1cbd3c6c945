//! Per-connection E2E encryption, and HMAC message signing.

pub mod session;
pub mod sign;
