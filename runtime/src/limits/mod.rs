//! Limits on what clients may do: message rate per connection, connections per user, open
//! connections per source address, pending handshakes per source address and in total.

pub mod addresses;
pub mod handshakes;
pub mod rate;
pub mod users;
