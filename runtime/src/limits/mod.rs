//! Limits on what clients may do: message rate per connection, connections per user.

pub mod rate;
pub mod users;
