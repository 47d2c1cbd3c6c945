//! The Python surface: one class, `Server`. It converts arguments and results and nothing
//! more; all behaviour lives in `Engine`.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::config::Config;
use crate::drain::Event;
use crate::engine::Engine;
use crate::server::{self, Running};

pub const EV_CONNECT: u8 = 0;
pub const EV_DISCONNECT: u8 = 1;
pub const EV_MSG: u8 = 2;
pub const EV_RAW: u8 = 3;
pub const EV_BIN: u8 = 4;
pub const EV_SUB_REQUEST: u8 = 5;

#[pyclass(frozen, module = "wse._runtime")]
pub struct Server {
    engine: Arc<Engine>,
    running: Mutex<Option<Running>>,
}

fn event_tuple<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyTuple>> {
    let none = py.None().into_bound(py);
    let (kind, conn, a, b): (u8, u64, Bound<'py, PyAny>, Bound<'py, PyAny>) = match ev {
        Event::Connect { conn, user, claims, addr } => {
            let claims = match claims {
                Some(c) => PyBytes::new(py, &c).into_any(),
                None => none.clone(),
            };
            let extra = (claims, addr).into_pyobject(py)?.into_any();
            (EV_CONNECT, conn, user.into_pyobject(py)?.into_any(), extra)
        }
        Event::Disconnect { conn, code } => (EV_DISCONNECT, conn, code.into_pyobject(py)?.into_any(), none),
        Event::Msg { conn, data } => (EV_MSG, conn, PyBytes::new(py, &data).into_any(), none),
        Event::Raw { conn, data } => (EV_RAW, conn, PyBytes::new(py, &data).into_any(), none),
        Event::Bin { conn, data } => (EV_BIN, conn, PyBytes::new(py, &data).into_any(), none),
        Event::SubRequest { conn, req, topics } => {
            (EV_SUB_REQUEST, conn, req.into_pyobject(py)?.into_any(), topics.into_pyobject(py)?.into_any())
        }
    };
    PyTuple::new(py, [kind.into_pyobject(py)?.into_any(), conn.into_pyobject(py)?.into_any(), a, b])
}

#[pymethods]
impl Server {
    /// Builds the engine from a JSON object of settings (see `wse.WSEConfig`).
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        let cfg: Config =
            serde_json::from_str(config_json).map_err(|e| PyValueError::new_err(format!("invalid config: {e}")))?;
        let engine = Engine::new(cfg).map_err(PyValueError::new_err)?;
        Ok(Self { engine: Arc::new(engine), running: Mutex::new(None) })
    }

    /// Binds and starts serving on the engine's own thread; returns the bound (host, port).
    fn start(&self) -> PyResult<(String, u16)> {
        let mut r = self.running.lock();
        if r.is_some() {
            return Err(PyRuntimeError::new_err("server already started"));
        }
        let running = server::start(self.engine.clone())?;
        let addr = running.local_addr;
        *r = Some(running);
        Ok((addr.ip().to_string(), addr.port()))
    }

    /// Closes every connection (code 1001) and stops the engine's thread.
    fn stop(&self, py: Python<'_>) {
        let running = self.running.lock().take();
        if let Some(mut r) = running {
            py.detach(move || r.stop());
        }
    }

    /// The eventfd that becomes readable when events wait in the drain queue.
    #[getter]
    fn fd(&self) -> i32 {
        self.engine.inbound.fd()
    }

    /// Takes up to `max` queued events as `(kind, conn_id, a, b)` tuples, in one GIL hold.
    #[pyo3(signature = (max = 1024))]
    fn drain<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let events = self.engine.inbound.take(max);
        let list = PyList::empty(py);
        for ev in events {
            list.append(event_tuple(py, ev)?)?;
        }
        Ok(list)
    }

    /// Frames `payload` (JSON bytes) once for every subscriber of `topic`; returns their number.
    #[pyo3(signature = (topic, payload, msg_type = "message", category = "U"))]
    fn publish(&self, topic: &str, payload: &[u8], msg_type: &str, category: &str) -> usize {
        self.engine.publish(topic, category, msg_type, payload)
    }

    /// Sends one envelope to one connection; False if it is gone or over its budget.
    #[pyo3(signature = (conn_id, payload, msg_type = "message", category = "U"))]
    fn send(&self, conn_id: u64, payload: &[u8], msg_type: &str, category: &str) -> bool {
        self.engine.send(conn_id, category, msg_type, payload)
    }

    /// Sends bytes unchanged as one text or binary message.
    #[pyo3(signature = (conn_id, data, text = false))]
    fn send_raw(&self, conn_id: u64, data: &[u8], text: bool) -> bool {
        self.engine.send_raw(conn_id, data, text)
    }

    fn subscribe(&self, conn_id: u64, topics: Vec<String>) -> Vec<String> {
        self.engine.subscribe(conn_id, &topics)
    }

    fn unsubscribe(&self, conn_id: u64, topics: Vec<String>) -> Vec<String> {
        self.engine.unsubscribe(conn_id, &topics)
    }

    /// Answers a subscription request held for the Python hook.
    fn complete_subscription(&self, req: u64, allowed: Vec<String>, denied: Vec<(String, String)>) -> bool {
        self.engine.complete_subscription(req, &allowed, denied)
    }

    #[pyo3(signature = (conn_id, code = 1000, reason = ""))]
    fn disconnect(&self, conn_id: u64, code: u16, reason: &str) -> bool {
        self.engine.disconnect(conn_id, code, reason)
    }

    fn topics_of(&self, conn_id: u64) -> Vec<String> {
        self.engine.topics_of(conn_id)
    }

    fn subscriber_count(&self, topic: &str) -> usize {
        self.engine.topics.subscriber_count(topic)
    }

    fn connection_count(&self) -> usize {
        self.engine.conn_count()
    }

    /// The cluster mesh's counters as JSON, or None outside a cluster.
    fn mesh_stats(&self) -> Option<String> {
        self.engine.mesh.as_ref().map(|m| m.stats_json())
    }

    /// Every counter and gauge, by name.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.engine.metrics.snapshot() {
            d.set_item(k, v)?;
        }
        d.set_item("topics", self.engine.topics.topic_count())?;
        d.set_item("inbound_queue_len", self.engine.inbound.len())?;
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Server>()?;
    m.add("EV_CONNECT", EV_CONNECT)?;
    m.add("EV_DISCONNECT", EV_DISCONNECT)?;
    m.add("EV_MSG", EV_MSG)?;
    m.add("EV_RAW", EV_RAW)?;
    m.add("EV_BIN", EV_BIN)?;
    m.add("EV_SUB_REQUEST", EV_SUB_REQUEST)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
