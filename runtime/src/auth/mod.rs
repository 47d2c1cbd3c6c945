//! Authentication in the handshake: where the token comes from, and its check.

pub mod acl;
pub mod jwt;
pub mod token;
