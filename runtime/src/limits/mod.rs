//! Limits on what clients may do: message rate per connection, connections per user, pending
//! handshakes per source address and in total.

pub mod handshakes;
pub mod rate;
pub mod users;
