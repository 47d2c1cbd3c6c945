//! Topics and fan-out.

pub mod topics;
