//! The engine's own thread: a tokio runtime created on demand (never at import, so a process
//! can fork first), serving one listener, or none when connections arrive from outside
//! (`external`), until stopped.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::background;
use crate::engine::Engine;
use crate::listener;

/// Where the engine listens.
#[derive(Debug, Clone)]
pub enum Address {
    Tcp(std::net::SocketAddr),
    /// A Unix domain socket's path.
    Unix(String),
}

pub struct Running {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    /// The listener's address; `None` without a listener.
    pub local_addr: Option<Address>,
    /// The engine's runtime, for tasks started from outside it (external connections).
    pub handle: Handle,
}

/// Binds on the calling thread, then serves on a new thread.
pub fn start(engine: Arc<Engine>) -> std::io::Result<Running> {
    let listener = listener::bind(&engine.cfg)?;
    run(engine, Some(listener))
}

/// Runs the engine's thread with no listener: its tasks (keepalive, fan-out, drain flusher)
/// serve connections whose bytes another server carries.
pub fn start_without_listener(engine: Arc<Engine>) -> std::io::Result<Running> {
    run(engine, None)
}

fn run(engine: Arc<Engine>, listener: Option<listener::Bound>) -> std::io::Result<Running> {
    let local_addr = match &listener {
        Some(listener::Bound::Tcp(l)) => Some(Address::Tcp(l.local_addr()?)),
        Some(listener::Bound::Unix(_, path)) => Some(Address::Unix(path.clone())),
        None => None,
    };
    let mesh_listener = match &engine.mesh {
        Some(m) => Some(crate::mesh::bind(m)?),
        None => None,
    };
    let threads = engine.cfg.io_threads;
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name("wse-io").enable_all().build()?
    };
    let handle = rt.handle().clone();
    let (tx, rx) = watch::channel(false);
    let thread = std::thread::Builder::new().name("wse-io".into()).spawn(move || {
        rt.block_on(async move {
            let drain_engine = engine.clone();
            let mut stop_rx = rx.clone();
            let _ = engine.this.set((Arc::downgrade(&engine), Handle::current()));
            if let Some(b) = engine.bridge.clone() {
                tokio::spawn(crate::bridge::run(b, engine.clone(), rx.clone()));
            }
            if let (Some(m), Some(l)) = (engine.mesh.clone(), mesh_listener) {
                tokio::spawn(crate::mesh::run(m, engine.clone(), l, rx.clone()));
            }
            if let Some(m) = engine.mesh.clone() {
                // In a cluster with recovery, a worker takes its peers' rings before its
                // first client (clients wait in the listen backlog meanwhile).
                tokio::select! {
                    _ = m.wait_ready() => {}
                    _ = stop_rx.changed() => {}
                }
            }
            match listener {
                Some(l) => listener::serve(engine, l, rx).await,
                None => {
                    let bg = background::spawn(&engine, rx);
                    let _ = stop_rx.changed().await;
                    bg.finish();
                }
            }
            // Stopped: close every connection and wait (bounded) for them to finish.
            let _ = stop_rx.borrow_and_update();
            let deadline = Instant::now() + Duration::from_millis(drain_engine.cfg.drain_timeout_ms);
            // Handshakes in progress count too: they finish, then get their close frame.
            while drain_engine.slot_count() > 0 && Instant::now() < deadline {
                drain_engine.close_all(1001, "server shutting down");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        rt.shutdown_timeout(Duration::from_millis(500));
    })?;
    Ok(Running { stop: tx, thread: Some(thread), local_addr, handle })
}

impl Running {
    /// Stops accepting, closes connections with 1001, and joins the thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
