//! WSE's transport: TCP accept, HTTP upgrade with JWT, RFC 6455 framing, topic fan-out and the
//! drain queue that feeds Python. `py` is the only module that knows about Python.

pub mod auth;
pub mod background;
pub mod bridge;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod deliver;
pub mod drain;
pub mod engine;
pub mod gate;
pub mod external;
pub mod handshake;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod outbound;
pub mod protocol;
pub mod pubsub;
pub mod server;
pub mod subscriptions;
pub mod tls;
pub mod token_life;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _runtime(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    py::register(m)
}
