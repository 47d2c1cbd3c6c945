//! Topics and fan-out.

pub mod fanout;
pub mod topics;
