//! The Python surface: one class, `Server`. It converts arguments and results and nothing
//! more; all behaviour lives in `Engine`.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::config::Config;
use crate::drain::Event;
use crate::engine::Engine;
use crate::external::{Externals, Opened, Request, TakeEnd};
use crate::server::{self, Running};

pub const EV_CONNECT: u8 = 0;
pub const EV_DISCONNECT: u8 = 1;
pub const EV_MSG: u8 = 2;
pub const EV_RAW: u8 = 3;
pub const EV_BIN: u8 = 4;
pub const EV_SUB_REQUEST: u8 = 5;
pub const EV_PRESENCE: u8 = 6;

/// What `ext_take` returns: the messages, the state, and the close (code, reason) if it is one.
type Taken<'py> = (Bound<'py, PyList>, u8, Option<(u16, String)>);

/// `ext_take` states.
pub const EXT_MORE: u8 = 0;
pub const EXT_IDLE: u8 = 1;
pub const EXT_CLOSE: u8 = 2;
pub const EXT_DONE: u8 = 3;

#[pyclass(frozen, module = "wse._runtime")]
pub struct Server {
    engine: Arc<Engine>,
    running: Mutex<Option<Running>>,
    /// Connections whose WebSocket another server carries (router mode).
    external: Arc<Externals>,
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
        Event::Presence { conn, change, topic, user, data } => {
            let what = (change, topic, user).into_pyobject(py)?.into_any();
            (EV_PRESENCE, conn, what, PyBytes::new(py, &data).into_any())
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
        let external = Externals::new().map_err(|e| PyRuntimeError::new_err(format!("eventfd: {e}")))?;
        Ok(Self { engine: Arc::new(engine), running: Mutex::new(None), external: Arc::new(external) })
    }

    /// Starts the engine's thread; with `listen`, binds and returns the bound (host, port).
    /// Without, connections come only through the `ext_*` methods (router mode).
    #[pyo3(signature = (listen = true))]
    fn start(&self, listen: bool) -> PyResult<Option<(String, u16)>> {
        let mut r = self.running.lock();
        if r.is_some() {
            return Err(PyRuntimeError::new_err("server already started"));
        }
        let running = if listen {
            server::start(self.engine.clone())?
        } else {
            server::start_without_listener(self.engine.clone())?
        };
        let addr = running.local_addr.clone();
        *r = Some(running);
        // A Unix domain socket reports (path, 0).
        Ok(addr.map(|a| match a {
            server::Address::Tcp(a) => (a.ip().to_string(), a.port()),
            server::Address::Unix(path) => (path, 0),
        }))
    }

    /// Closes every connection (code 1001) and stops the engine's thread.
    fn stop(&self, py: Python<'_>) {
        let running = self.running.lock().take();
        if let Some(mut r) = running {
            py.detach(move || r.stop());
        }
    }

    /// Connects and disconnects may reach Python a little late (at most 2 ms), batched: for an
    /// application without connect or disconnect hooks. Any other event still wakes it at once.
    fn set_lazy_lifecycle(&self, lazy: bool) {
        self.engine.inbound.set_lazy_lifecycle(lazy);
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
    /// With `idempotency_key`, a key already used within the dedup window publishes nothing (0).
    #[pyo3(signature = (topic, payload, msg_type = "message", category = "U", idempotency_key = None))]
    fn publish(&self, topic: &str, payload: &[u8], msg_type: &str, category: &str, idempotency_key: Option<&str>) -> usize {
        self.engine.publish_keyed(idempotency_key, topic, category, msg_type, payload)
    }

    /// Sends one envelope to one connection (with `cid`, as a reply); False if it is gone.
    #[pyo3(signature = (conn_id, payload, msg_type = "message", category = "U", cid = None))]
    fn send(&self, conn_id: u64, payload: &[u8], msg_type: &str, category: &str, cid: Option<&str>) -> bool {
        self.engine.send(conn_id, category, msg_type, payload, cid)
    }

    /// Sends bytes unchanged as one text or binary message.
    #[pyo3(signature = (conn_id, data, text = false))]
    fn send_raw(&self, conn_id: u64, data: &[u8], text: bool) -> bool {
        self.engine.send_raw(conn_id, data, text)
    }

    /// Subscribes a connection (no ACL); with `group`, to that queue group of each topic.
    #[pyo3(signature = (conn_id, topics, group = None))]
    fn subscribe(&self, conn_id: u64, topics: Vec<String>, group: Option<&str>) -> Vec<String> {
        self.engine.subscribe(conn_id, &topics, group)
    }

    /// Queue groups of a topic and their sizes.
    fn queue_groups(&self, topic: &str) -> Vec<(String, usize)> {
        self.engine.topics.get(topic).map(|t| t.groups()).unwrap_or_default()
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

    /// Users present in `topic`: `(user_id, data as JSON bytes, connections)`.
    fn presence<'py>(&self, py: Python<'py>, topic: &str) -> PyResult<Vec<(String, Bound<'py, PyBytes>, u32)>> {
        let members = self.engine.presence.members(topic);
        members
            .into_iter()
            .map(|(u, d, n)| {
                let data = serde_json::to_vec(&*d).map_err(|e| PyValueError::new_err(e.to_string()))?;
                Ok((u.to_string(), PyBytes::new(py, &data), n))
            })
            .collect()
    }

    /// `(users, connections)` present in `topic`.
    fn presence_count(&self, topic: &str) -> (usize, usize) {
        self.engine.presence.count(topic)
    }

    /// Sets `user_id`'s presence data (JSON bytes); returns the number of topics told.
    fn update_presence(&self, user_id: &str, data: &[u8]) -> PyResult<usize> {
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| PyValueError::new_err(format!("presence data: {e}")))?;
        self.engine.update_presence(user_id, v, 0).map_err(PyValueError::new_err)
    }

    /// Open connections of `user_id`.
    fn user_connection_count(&self, user_id: &str) -> usize {
        self.engine.user_slots.count(user_id)
    }

    /// The Redis bridge's counters as JSON, or None without one.
    fn bridge_stats(&self) -> Option<String> {
        self.engine.bridge.as_ref().map(|b| b.stats_json())
    }

    /// The cluster mesh's counters as JSON, or None outside a cluster.
    fn mesh_stats(&self) -> Option<String> {
        self.engine.mesh.as_ref().map(|m| m.stats_json())
    }

    /// Cuts every mesh link of this worker (they re-link by themselves); how many were cut.
    fn mesh_cut(&self) -> usize {
        self.engine.mesh.as_ref().map_or(0, |m| m.cut_links())
    }

    /// Every counter and gauge, by name.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.engine.metrics.snapshot() {
            d.set_item(k, v)?;
        }
        d.set_item("topics", self.engine.topics.topic_count())?;
        d.set_item("inbound_queue_len", self.engine.inbound.len())?;
        d.set_item("recovery_bytes", self.engine.topics.ring_bytes())?;
        let (ptopics, pusers) = self.engine.presence.totals();
        d.set_item("presence_topics", ptopics)?;
        d.set_item("presence_users", pusers)?;
        d.set_item("dedup_publish_keys", self.engine.dedup_publish.len())?;
        d.set_item("dedup_inbound_keys", self.engine.dedup_inbound.len())?;
        Ok(d)
    }

    // ---- external connections (router mode) ----------------------------------------------------

    /// The eventfd that becomes readable when external connections have messages to send.
    #[getter]
    fn ext_fd(&self) -> i32 {
        self.external.fd()
    }

    /// Checks and registers a connection another server carries. Returns `(conn_id, status,
    /// message, reason)`: status 0 accepted; 403 or 503 refuse the upgrade; 4401 or 4429
    /// accept, send `message`, close with that code and `reason`.
    #[pyo3(signature = (addr, origin = None, cookie = None, authorization = None, query = None))]
    fn ext_open(
        &self,
        py: Python<'_>,
        addr: String,
        origin: Option<&str>,
        cookie: Option<&str>,
        authorization: Option<&str>,
        query: Option<&str>,
    ) -> PyResult<(u64, u16, Option<Py<PyBytes>>, &'static str)> {
        let handle = match self.running.lock().as_ref() {
            Some(r) => r.handle.clone(),
            None => return Err(PyRuntimeError::new_err("the engine is not running")),
        };
        let req = Request { origin, cookie, authorization, query };
        Ok(match self.external.open(&self.engine, &handle, &req, addr) {
            Opened::Conn(id) => (id, 0, None, ""),
            Opened::Refused(status) => (0, status, None, ""),
            Opened::Closed { message, code, reason } => (0, code, Some(PyBytes::new(py, &message).unbind()), reason),
        })
    }

    /// One client message; returns 0 handled, 1 busy (call `ext_retry` after a drain), 2 closed.
    fn ext_feed(&self, conn_id: u64, data: &[u8], text: bool) -> PyResult<u8> {
        let data = bytes::Bytes::copy_from_slice(data);
        match self.external.feed(&self.engine, conn_id, data, text) {
            Ok(f) => Ok(f as u8),
            Err(e) => Err(PyRuntimeError::new_err(e)),
        }
    }

    /// Tries again to queue the message a busy `ext_feed` held; same results as `ext_feed`.
    fn ext_retry(&self, conn_id: u64) -> u8 {
        self.external.retry(&self.engine, conn_id) as u8
    }

    /// Up to `max` messages to send (`str` for text, `bytes` for binary), then the state:
    /// `EXT_MORE`, `EXT_IDLE`, `EXT_CLOSE` (with `(code, reason)`) or `EXT_DONE`.
    #[pyo3(signature = (conn_id, max = 64))]
    fn ext_take<'py>(
        &self,
        py: Python<'py>,
        conn_id: u64,
        max: usize,
    ) -> PyResult<Taken<'py>> {
        let mut out = Vec::new();
        let end = self.external.take(&self.engine, conn_id, max, &mut out);
        let list = PyList::empty(py);
        for (text, payload) in out {
            if text {
                list.append(PyString::new(py, &String::from_utf8_lossy(&payload)))?;
            } else {
                list.append(PyBytes::new(py, &payload))?;
            }
        }
        Ok(match end {
            TakeEnd::More => (list, EXT_MORE, None),
            TakeEnd::Idle => (list, EXT_IDLE, None),
            TakeEnd::Close(code, reason) => (list, EXT_CLOSE, Some((code, reason))),
            TakeEnd::Done => (list, EXT_DONE, None),
        })
    }

    /// The external connections with messages to send since the last call.
    fn ext_ready(&self) -> Vec<u64> {
        self.external.ready()
    }

    /// Ends an external connection; the application gets its disconnect event with `code`.
    fn ext_end(&self, conn_id: u64, code: u16) -> bool {
        self.external.end(&self.engine, conn_id, code)
    }
}

/// Enables the engine's log records at Python level `level` and above (see `wse._logs`).
#[pyfunction]
fn log_level(level: i32) {
    crate::logging::install();
    crate::logging::set_level(level);
}

/// Waits (without the GIL) up to `timeout_ms` for engine log records: `([(level, logger,
/// message)], dropped)`; empty once `log_close` was called.
#[pyfunction]
fn log_take(py: Python<'_>, timeout_ms: u64) -> (Vec<(u8, &'static str, String)>, u64) {
    py.detach(move || crate::logging::take(std::time::Duration::from_millis(timeout_ms)))
}

/// Stops recording engine log records and wakes `log_take` (interpreter exit).
#[pyfunction]
fn log_close() {
    crate::logging::close();
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Server>()?;
    m.add_function(wrap_pyfunction!(log_level, m)?)?;
    m.add_function(wrap_pyfunction!(log_take, m)?)?;
    m.add_function(wrap_pyfunction!(log_close, m)?)?;
    m.add("EV_CONNECT", EV_CONNECT)?;
    m.add("EV_DISCONNECT", EV_DISCONNECT)?;
    m.add("EV_MSG", EV_MSG)?;
    m.add("EV_RAW", EV_RAW)?;
    m.add("EV_BIN", EV_BIN)?;
    m.add("EV_SUB_REQUEST", EV_SUB_REQUEST)?;
    m.add("EV_PRESENCE", EV_PRESENCE)?;
    m.add("EXT_MORE", EXT_MORE)?;
    m.add("EXT_IDLE", EXT_IDLE)?;
    m.add("EXT_CLOSE", EXT_CLOSE)?;
    m.add("EXT_DONE", EXT_DONE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
