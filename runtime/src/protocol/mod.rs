//! The wire: RFC 6455 framing, the WSE v2 envelope on top of it, and its encodings
//! (`C:` zlib, `M:` msgpack; `E:` encryption lives in `crate::crypto`).

pub mod compress;
pub mod deflate;
pub mod envelope;
pub mod frame;
pub mod message;
pub mod msgpack;
pub mod outgoing;
pub mod time;
