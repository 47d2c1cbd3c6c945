//! WSE's transport: TCP accept, HTTP upgrade with JWT, RFC 6455 framing, topic fan-out and the
//! drain queue that feeds Python. `py` is the only module that knows about Python.

pub mod auth;
pub mod config;
pub mod connection;
pub mod drain;
pub mod engine;
pub mod handshake;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod outbound;
pub mod protocol;
pub mod pubsub;
pub mod server;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _runtime(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    py::register(m)
}
