//! Topics and fan-out.

pub mod dedup;
pub mod fanout;
pub mod patterns;
pub mod presence;
pub mod presence_hooks;
pub mod topics;
