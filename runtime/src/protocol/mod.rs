//! The wire: RFC 6455 framing, and the WSE v2 JSON envelope on top of it.

pub mod envelope;
pub mod frame;
pub mod message;
pub mod time;
