//! Per-connection E2E encryption, batch keys for encrypted fan-out, and HMAC message signing.

pub mod batch;
pub mod session;
pub mod sign;
